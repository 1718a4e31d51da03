//! An environment on another machine, reached only over SSH (`ssh =` in
//! ops.toml): a server made here (a network namespace with its own Docker
//! engine and sshd, `tests/common/{netns,ssh}.rs`) that listens on nothing
//! but SSH. Against it: `deploy`, `health`, `status`, `backup create` and
//! `verify`, Ctrl-C during a deploy (the connection and the lock gone),
//! `down`, and a changed host key refused.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::NsEngine;
use common::release::{copy_image, registry, remove_release_images, tls_registry};
use common::ssh::SshHost;
use common::*;

/// The ops.toml of environment `remote` on `engine`, through `host`. Its
/// published ports are bound to the server's loopback only.
fn remote_ops(
    dir: &TempDir,
    engine: &NsEngine,
    host: &SshHost,
    project: &str,
) -> std::path::PathBuf {
    let compose = workspace_root().join("demo/docker-compose.yml");
    dir.write(
        "ops.toml",
        &format!(
            r#"
[environments.remote]
ssh = "{target}"
ssh_config = "{config}"
docker_host = "{docker}"
env_file = ".env.remote"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.remote.compose]
files = ["{compose}"]
project = "{project}"
# Holds the lock a few seconds before the build (the two-operator check).
pre_build = [["sleep", "4"]]
env = {{ MRE_CONTAINER_PREFIX = "{project}", MRE_APP_PORT = "127.0.0.1:3001", MRE_INGESTION_PORT = "127.0.0.1:8000", MRE_POSTGRES_PORT = "127.0.0.1:5432" }}
[environments.remote.services.mre-app]
container = "{project}-app"
url = "http://localhost:3001"
health = {{ url = "http://127.0.0.1:3001/api/health", expect = "runbook-json" }}
[environments.remote.services.mre-liverc-ingestion-service]
container = "{project}-liverc-ingestion-service"
health = {{ url = "http://127.0.0.1:8000/health" }}
[environments.remote.database]
container = "{project}-postgres"
host = "127.0.0.1"
port = 5432
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.remote.migrations]
dir = "{migrations}"
[environments.remote.backups]
dir = "backups"
method = "container"
server_dir = "/backups"
"#,
            target = host.target(),
            config = host.config_path().display(),
            docker = engine.docker_host(),
            compose = compose.display(),
            migrations = workspace_root().join("prisma/migrations").display(),
        ),
    )
}

/// The SSH connections mre-ops left running to `host` (its control sockets
/// live in /tmp/mre-ops-PID/; the other test's server has its own config).
fn masters_left(host: &SshHost) -> Vec<String> {
    let config = host.config_path().display().to_string();
    let o = Command::new("pgrep")
        .args(["-af", "ControlPath=/tmp/mre-ops-"])
        .output()
        .expect("pgrep (procps)");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains(&config))
        .map(str::to_string)
        .collect()
}

/// What listens in the server's namespace, loopback excepted.
fn listening_outside_loopback(engine: &NsEngine) -> Vec<String> {
    let o = Command::new("nsenter")
        .arg(format!("--net={}", engine.netns()))
        .args(["ss", "-Hltn"])
        .output()
        .expect("nsenter ss");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .filter(|a| !a.starts_with("127.") && !a.starts_with("[::1]"))
        .collect()
}

#[track_caller]
fn run(host: &SshHost, config: &Path, args: &[&str]) -> Run {
    let r = xtask(config, args);
    let left = masters_left(host);
    assert!(
        left.is_empty(),
        "`{}` left its SSH connection: {left:?}\n{r:?}",
        args.join(" ")
    );
    r
}

#[test]
fn a_server_reached_only_over_ssh() {
    ensure_demo_images();
    let mut engine = NsEngine::start("rm");
    let port = registry()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the registry is 127.0.0.1:PORT");
    engine.forward_loopback(port);
    let mut host = SshHost::start(&engine);
    let project = format!("mre-rm-{}", std::process::id());
    // The server has only what the stack needs; the app is built there.
    for image in ["mre-demo-base:bookworm-3", "mre-demo-postgres:15"] {
        copy_image(&registry(), &project, image, &engine.docker_host());
    }
    let dir = TempDir::new("remote");
    let config = remote_ops(&dir, &engine, &host, &project);

    // A first deploy: build and start on the server, migrate and check
    // through the connection.
    let r = run(&host, &config, &["deploy", "remote"]);
    assert_eq!(r.code, 0, "deploy over SSH: {r:?}");
    let ps = engine.docker(&["ps", "--format", "{{.Names}}"]);
    assert!(ps.contains(&format!("{project}-app")), "{ps}");
    let open = listening_outside_loopback(&engine);
    assert!(
        open.iter().all(|a| a.ends_with(":22")),
        "the server must publish nothing but SSH: {open:?}"
    );

    let r = run(&host, &config, &["health", "remote"]);
    assert_eq!(r.code, 0, "health over SSH: {r:?}");
    // One round of monitoring: probes through the forwards, container stats
    // and database connections through the connection.
    let r = run(&host, &config, &["monitor", "remote"]);
    assert_eq!(r.code, 0, "monitor over SSH: {r:?}");
    assert!(r.stdout.contains("p95"), "{r:?}");
    let r = run(&host, &config, &["status", "remote"]);
    assert_eq!(r.code, 0, "status over SSH: {r:?}");
    assert!(r.stdout.contains(&format!("{project}-postgres")), "{r:?}");

    // A backup taken on the server (pg_dump in the database container),
    // streamed back into this machine's backup folder, checksummed on both
    // ends, and verified.
    let r = run(&host, &config, &["-v", "backup", "create", "remote"]);
    assert_eq!(r.code, 0, "backup over SSH: {r:?}");
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("the same in the container and here"),
        "{r:?}"
    );
    let r = run(&host, &config, &["backup", "verify", "remote", "latest"]);
    assert_eq!(r.code, 0, "verify over SSH: {r:?}");
    // A backup kept on the server (a large database): the dump stays in
    // the database container's /backups volume, only its manifest comes
    // here; verify and the restore below read it there.
    let local_dumps = || {
        std::fs::read_dir(dir.path().join("backups/remote"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "dump"))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = local_dumps();
    let r = run(
        &host,
        &config,
        &["backup", "create", "remote", "--keep-on-server"],
    );
    assert_eq!(r.code, 0, "backup kept on the server: {r:?}");
    assert!(
        r.stdout.contains("kept on the server at /backups/"),
        "{r:?}"
    );
    assert_eq!(local_dumps(), before, "no dump copied here: {r:?}");
    let r = run(&host, &config, &["backup", "list", "remote"]);
    assert!(r.stdout.contains("kept on the server"), "{r:?}");
    let r = run(&host, &config, &["backup", "verify", "remote", "latest"]);
    assert_eq!(r.code, 0, "verify of a backup kept on the server: {r:?}");
    // And back: the verified backup restored into the server's database
    // (a safety backup first, the swap guarded as on this machine).
    let r = run(&host, &config, &["restore", "remote", "latest", "--yes"]);
    assert_eq!(r.code, 0, "restore over SSH: {r:?}");
    let r = run(&host, &config, &["health", "remote", "--wait", "60"]);
    assert_eq!(r.code, 0, "after the restore: {r:?}");
    // The app's logs, read through the connection.
    let r = run(
        &host,
        &config,
        &["logs", "mre-app", "--env", "remote", "--tail", "5"],
    );
    assert_eq!(r.code, 0, "logs over SSH: {r:?}");
    assert!(
        !r.stdout.trim().is_empty() || !r.stderr.trim().is_empty(),
        "{r:?}"
    );

    // `logs -f` streams through the connection until Ctrl-C, which leaves
    // no connection behind.
    let mut follow = Command::new(XTASK)
        .args([
            "--config",
            config.to_str().unwrap(),
            "logs",
            "mre-app",
            "--env",
            "remote",
            "-f",
        ])
        .env_remove("GITHUB_ACTIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask logs -f");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follow.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(!first.trim().is_empty(), "logs -f printed nothing");
    let st = Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let _ = follow.wait();
    let start = Instant::now();
    while !masters_left(&host).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "Ctrl-C on logs -f left the SSH connection: {:?}",
            masters_left(&host)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Ctrl-C during a deploy: exit 130, its undos done, the connection
    // closed, the lock released.
    let child = Command::new(XTASK)
        .args(["--config", config.to_str().unwrap(), "deploy", "remote"])
        .env_remove("GITHUB_ACTIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask deploy");
    let start = Instant::now();
    // Inside its plan, under the lock: the pre-build step runs.
    while !Command::new("pgrep")
        .args(["-P", &child.id().to_string(), "-x", "sleep"])
        .status()
        .expect("pgrep")
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the deploy never ran compose"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second operator (another machine: its own folder, the same
    // server) is refused by the server's lock, which names the first.
    let other = TempDir::new("remote-2");
    std::fs::copy(&config, other.path().join("ops.toml")).unwrap();
    std::fs::copy(
        dir.path().join(".env.remote"),
        other.path().join(".env.remote"),
    )
    .unwrap();
    // (`xtask`, not `run`: the first operator's connection is still open.)
    let second = xtask(&other.path().join("ops.toml"), &["deploy", "remote"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("locked on its server")
            && second.stderr.contains(&format!("pid {}", child.id())),
        "{second:?}"
    );
    let status = xtask(
        &other.path().join("ops.toml"),
        &["lock", "status", "remote"],
    );
    assert!(status.stdout.contains("locked on its server"), "{status:?}");
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(130) | Some(0)),
        "Ctrl-C: {:?} {stderr}",
        out.status
    );
    assert!(
        masters_left(&host).is_empty(),
        "Ctrl-C left the SSH connection: {:?}",
        masters_left(&host)
    );
    let r = run(&host, &config, &["lock", "status", "remote"]);
    assert!(r.stdout.contains("is not locked"), "{r:?}");
    let r = run(&host, &config, &["health", "remote", "--wait", "60"]);
    assert_eq!(r.code, 0, "after Ctrl-C: {r:?}");

    let r = run(&host, &config, &["down", "remote", "--volumes", "--yes"]);
    assert_eq!(r.code, 0, "down over SSH: {r:?}");
    let ps = engine.docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!ps.contains(&project), "{ps}");

    // The server's host key changes: refused, with what to do.
    host.rotate_host_key();
    let r = run(&host, &config, &["health", "remote"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("has CHANGED"), "{r:?}");
    assert!(r.stderr.contains("ssh-keygen -R"), "{r:?}");
}

/// A release (`[release]`: images through a registry both sides reach,
/// blue-green behind the proxy, the journal) to a server reached only over
/// SSH: a first release, a second one under load through an SSH forward of
/// the public port with no failed request, and a rollback. The registry is
/// one production would run: TLS (a CA both engines trust) and a login,
/// whose password goes to `docker login` on stdin and is never printed.
#[test]
fn releases_to_a_server_over_ssh() {
    let mut engine = NsEngine::start("rr");
    let port = registry()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the registry is 127.0.0.1:PORT");
    engine.forward_loopback(port);
    let tls = tls_registry();
    let tls_port = tls
        .address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap();
    engine.forward_loopback(tls_port);
    let host = SshHost::start(&engine);
    let s = common::release::ReleaseStack::new("rr");
    // The images this test tags for the TLS registry, removed however it ends.
    let _images = OnDrop({
        let (address, project) = (tls.address.clone(), s.project.clone());
        move || remove_release_images(&address, &project)
    });
    // Anonymous access is refused.
    let anonymous = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{}/v2/", tls.address))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");
    // The login goes to a Docker config of this test's own.
    let docker_config = TempDir::new("rr-docker-config");
    let vars = [
        common::release::SMOKE_USER[0],
        common::release::SMOKE_USER[1],
        ("MRE_REG_USER", tls.user),
        ("MRE_REG_PASSWORD", tls.password),
        ("DOCKER_CONFIG", docker_config.path().to_str().unwrap()),
    ];
    let xt = |args: &[&str]| {
        let r = xtask_env(&s.config, args, &vars);
        assert!(
            !r.stdout.contains(tls.password) && !r.stderr.contains(tls.password),
            "the registry password was printed: {r:?}"
        );
        r
    };
    for image in ["mre-demo-postgres:15", "mre-demo-proxy:2"] {
        copy_image(&registry(), &s.project, image, &engine.docker_host());
    }
    // The same stand-in, on the server: ports on its loopback only.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text
        .replace(
            "[environments.rel]\n",
            &format!(
                "[environments.rel]\nssh = \"{}\"\nssh_config = \"{}\"\ndocker_host = \"{}\"\n",
                host.target(),
                host.config_path().display(),
                engine.docker_host()
            ),
        )
        .replace(
            &format!("registry = \"{}\"", registry()),
            &format!(
                "registry = \"{}\"\nregistry_user_env = \"MRE_REG_USER\"\nregistry_password_env = \"MRE_REG_PASSWORD\"",
                tls.address
            ),
        )
        .replace(
            &format!("MRE_APP_PORT = \"{}\"", s.app),
            &format!("MRE_APP_PORT = \"127.0.0.1:{}\"", s.app),
        )
        .replace(
            &format!("MRE_INGESTION_PORT = \"{}\"", s.ingestion),
            &format!("MRE_INGESTION_PORT = \"127.0.0.1:{}\"", s.ingestion),
        )
        .replace(
            &format!("MRE_POSTGRES_PORT = \"{}\"", s.postgres),
            &format!("MRE_POSTGRES_PORT = \"127.0.0.1:{}\"", s.postgres),
        );
    std::fs::write(&s.config, text).unwrap();
    let tag = |v: &str| format!("{}-{v}", s.project);

    let r = xt(&["deploy", "rel", "--tag", &tag("v1")]);
    assert_eq!(r.code, 0, "first release over SSH: {r:?}");
    let logged_in =
        std::fs::read_to_string(docker_config.path().join("config.json")).unwrap_or_default();
    assert!(
        logged_in.contains(&tls.address),
        "no `docker login` to {}: {logged_in}",
        tls.address
    );
    assert!(masters_left(&host).is_empty(), "{:?}", masters_left(&host));
    let ps = engine.docker(&["ps", "--format", "{{.Names}}"]);
    assert!(ps.contains(&format!("{}-app-blue", s.prefix)), "{ps}");
    let open = listening_outside_loopback(&engine);
    assert!(open.iter().all(|a| a.ends_with(":22")), "{open:?}");

    // Users reach the proxy through an SSH forward of its port.
    let local = free_port();
    let mut forward = host
        .ssh()
        .args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("127.0.0.1:{local}:127.0.0.1:{}", s.app),
            &host.target(),
        ])
        .spawn()
        .expect("ssh -L");
    wait_for_port(local, 20);
    let load = common::load::Load::start(local);
    let r = xt(&["deploy", "rel", "--tag", &tag("v2")]);
    let (ok, failed, why) = load.finish();
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(r.code, 0, "second release over SSH: {r:?}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the release: {why:?}",
        ok + failed
    );
    assert!(ok > 50, "only {ok} requests answered");
    let ps = engine.docker(&["ps", "--format", "{{.Names}}"]);
    assert!(ps.contains(&format!("{}-app-green", s.prefix)), "{ps}");

    let r = xt(&["rollback", "rel"]);
    assert_eq!(r.code, 0, "rollback over SSH: {r:?}");
    let r = xt(&["releases", "rel"]);
    assert!(
        r.stdout.contains(&tag("v1")) && r.stdout.contains("rollback"),
        "{r:?}"
    );
    assert!(masters_left(&host).is_empty(), "{:?}", masters_left(&host));
}
