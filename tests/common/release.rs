//! The staging/production stand-in for one test: the demo's release Compose
//! file (nginx proxy, blue/green app, stop-first ingestion) under its own
//! project, prefix and ports, released through a real registry
//! (`docker-registry` from Debian, one per test process on a free loopback
//! port, stopped when the process ends). Torn down with its volumes on drop.
//!
//! The registry listens on loopback only: an engine in a network namespace
//! (`netns::NsEngine`) reaches it at the same `127.0.0.1:PORT` through
//! `NsEngine::forward_loopback`. (Not on the veth address: the name is the
//! same for the push from this machine's engine and the pull on the target,
//! and this machine's engine speaks plain HTTP to 127.0.0.0/8 only, unless
//! its daemon.json were changed.)

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{docker, free_port, wait_for_port, workspace_root, xtask_env, Run, TempDir, XTASK};

/// `127.0.0.1:PORT` of this test process's registry.
pub fn registry() -> String {
    static REGISTRY: OnceLock<String> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or_else(|| {
                    panic!("these tests need a container registry: `apt-get install docker-registry` (Debian's Distribution registry); .ci/run installs it")
                });
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("mre-registry-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            serve_registry(bin, &config, &dir, None);
            wait_for_port(port, 20);
            format!("127.0.0.1:{port}")
        })
        .clone()
}

/// `docker-registry serve CONFIG` under a watchdog: the registry, `dir` and
/// `also` (a folder, and its parent when that is left empty) go when this
/// process does. Never waited for: it outlives every test.
fn serve_registry(
    bin: &str,
    config: &std::path::Path,
    dir: &std::path::Path,
    also: Option<&std::path::Path>,
) {
    let also = also.map(|a| a.display().to_string()).unwrap_or_default();
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args([
            "-c",
            "\"$1\" serve \"$2\" >/dev/null 2>&1 & r=$!; while kill -0 \"$3\" 2>/dev/null; do sleep 1; done; kill $r; \
             rm -rf \"$4\"; if [ -n \"$5\" ]; then rm -rf \"$5\"; rmdir \"$(dirname \"$5\")\" 2>/dev/null; fi",
            "sh",
            bin,
            &config.display().to_string(),
            &std::process::id().to_string(),
            &dir.display().to_string(),
            &also,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting docker-registry");
}

/// The smoke user a release's smoke tests log in as (registered on first use).
pub const SMOKE_USER: &[(&str, &str)] = &[
    ("MRE_SMOKE_EMAIL", "smoke@mre-ops.test"),
    ("MRE_SMOKE_PASSWORD", "smoke-test-password"),
];

pub struct ReleaseStack {
    pub dir: TempDir,
    pub config: PathBuf,
    pub project: String,
    pub prefix: String,
    pub app: u16,
    pub ingestion: u16,
    pub postgres: u16,
    pub registry: String,
    /// A production-like environment: protected, with backups.
    pub protected: bool,
    /// The proxy: `nginx` or `haproxy` (release.proxy.kind and the demo
    /// proxy image's MRE_PROXY_KIND).
    pub proxy: &'static str,
}

impl ReleaseStack {
    pub fn new(tag: &str) -> ReleaseStack {
        super::require_docker();
        super::ensure_demo_images();
        let dir = TempDir::new(tag);
        let project = format!("mre-{tag}-{}", std::process::id());
        let prefix = project.clone();
        let (app, ingestion, postgres) = (free_port(), free_port(), free_port());
        let mut s = ReleaseStack {
            dir,
            config: PathBuf::new(),
            project,
            prefix,
            app,
            ingestion,
            postgres,
            registry: registry(),
            protected: false,
            proxy: "nginx",
        };
        s.copy_migrations();
        s.config = s.write_config(
            &workspace_root()
                .join("demo/docker/app")
                .display()
                .to_string(),
            None,
            "",
        );
        s
    }

    /// The stand-in behind `proxy` (`nginx` or `haproxy`).
    pub fn with_proxy(tag: &str, proxy: &'static str) -> ReleaseStack {
        let mut s = ReleaseStack::new(tag);
        s.proxy = proxy;
        s.config = s.write_config(
            &workspace_root()
                .join("demo/docker/app")
                .display()
                .to_string(),
            None,
            "",
        );
        s
    }

    /// (Re)write ops.toml: the app image's build context, optionally another
    /// context for the ingestion service, and extra TOML for `release`.
    pub fn write_config(
        &self,
        app_context: &str,
        ingestion_context: Option<&str>,
        extra: &str,
    ) -> PathBuf {
        let (prefix, project, app, ingestion, postgres, registry) = (
            &self.prefix,
            &self.project,
            self.app,
            self.ingestion,
            self.postgres,
            &self.registry,
        );
        let ingestion_image = if ingestion_context.is_some() {
            "mre-ingest"
        } else {
            "mre-demo-app"
        };
        let ingestion_ctx = ingestion_context
            .map(|c| format!(", mre-ingest = {{ context = \"{c}\" }}"))
            .unwrap_or_default();
        self.dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.rel]
env_file = ".env.rel"
protected = {protected}
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.rel.compose]
files = ["{compose}"]
project = "{project}"
pre_build = [["{xtask}", "-q", "demo", "prepare"]]
env = {{ MRE_CONTAINER_PREFIX = "{prefix}", MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}", MRE_PROXY_KIND = "{proxy}" }}
[environments.rel.services.mre-app]
container = "{prefix}-proxy"
health = {{ url = "http://127.0.0.1:{app}/api/health", expect = "runbook-json" }}
[environments.rel.services.mre-liverc-ingestion-service]
container = "{prefix}-liverc-ingestion-service"
health = {{ url = "http://127.0.0.1:{ingestion}/health" }}
[environments.rel.database]
container = "{prefix}-postgres"
host = "127.0.0.1"
port = {postgres}
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.rel.migrations]
dir = "migrations"
{backups}
[environments.rel.release]
registry = "{registry}"
keep = 3
health_timeout_secs = 25
drain_secs = 1
proxy = {{ service = "mre-proxy", kind = "{proxy}" }}
images = {{ mre-demo-app = {{ context = "{app_context}" }}{ingestion_ctx} }}
{extra}
[environments.rel.release.services.mre-app]
image = "mre-demo-app"
strategy = "blue-green"
port = 3001
health_path = "/api/health"
[environments.rel.release.services.mre-liverc-ingestion-service]
image = "{ingestion_image}"
strategy = "stop-first"
"#,
                compose = workspace_root().join("demo/docker-compose.release.yml").display(),
                protected = self.protected,
                backups = if self.protected {
                    "[environments.rel.backups]\nmethod = \"container\"\ndir = \"backups\""
                } else {
                    ""
                },
                xtask = XTASK,
                proxy = self.proxy,
            ),
        )
    }

    /// The demo's migrations, copied so a test can add one.
    fn copy_migrations(&self) {
        let from = workspace_root().join("prisma/migrations");
        let to = self.dir.path().join("migrations");
        let st = Command::new("cp")
            .args(["-r", &from.display().to_string(), &to.display().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The xtask binary on this stack's ops.toml, with the smoke user a
    /// deploy's smoke tests log in as (registered on first use).
    pub fn run(&self, args: &[&str]) -> Run {
        xtask_env(&self.config, args, SMOKE_USER)
    }

    /// The xtask on this stack, running in the background with its output
    /// piped (to interrupt it, or to run another beside it).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(XTASK)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(SMOKE_USER.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running the xtask")
    }

    pub fn container(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    pub fn psql(&self, sql: &str) -> String {
        docker(&[
            "exec",
            &self.container("postgres"),
            "psql",
            "-tA",
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
            "-c",
            sql,
        ])
    }

    fn password(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(".env.rel")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
            .unwrap_or("unset")
            .to_string()
    }
}

impl Drop for ReleaseStack {
    fn drop(&mut self) {
        super::compose_down(
            &self.project,
            &workspace_root().join("demo/docker-compose.release.yml"),
            &[
                ("POSTGRES_PASSWORD", &self.password()),
                ("MRE_CONTAINER_PREFIX", &self.prefix),
            ],
        );
        // The release images this stack pulled (its registry's port is unique).
        remove_release_images(&self.registry, &self.project);
    }
}

/// Copy `image` (`name:tag`, built on this machine's engine, e.g. by `demo
/// prepare`, and never pushed anywhere) to the engine at `docker_host`
/// through the registry, under the same name there: tagged
/// `<registry>/<name>:<project>-<tag>` here (removed again at once, and by
/// `remove_release_images`), pushed, pulled there and tagged `image`.
pub fn copy_image(registry: &str, project: &str, image: &str, docker_host: &str) {
    let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let via = format!("{registry}/{name}:{project}-{tag}");
    docker(&["tag", image, &via]);
    let pushed = Command::new("docker")
        .args(["push", "--quiet", &via])
        .output();
    let _ = Command::new("docker").args(["rmi", &via]).output();
    let pushed = pushed.expect("running docker push");
    assert!(
        pushed.status.success(),
        "docker push {via} failed: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let there = |args: &[&str]| {
        let o = Command::new("docker")
            .env("DOCKER_HOST", docker_host)
            .args(args)
            .output()
            .expect("running docker");
        assert!(
            o.status.success(),
            "docker {args:?} on {docker_host} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    there(&["pull", "--quiet", &via]);
    there(&["tag", &via, image]);
    there(&["rmi", &via]);
}

/// Remove the images tagged `<registry>/<image>:<project>-...` here.
pub fn remove_release_images(registry: &str, project: &str) {
    let listed = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mine: Vec<&str> = listed
        .lines()
        .filter(|l| l.starts_with(&format!("{registry}/")) && l.contains(&format!(":{project}-")))
        .collect();
    if !mine.is_empty() {
        let _ = Command::new("docker").arg("rmi").args(&mine).output();
    }
}

/// A registry as production would run one: TLS with a certificate from a
/// CA made for this test process, and a login (htpasswd, bcrypt). The
/// engines here trust that CA for this address only, through
/// `/etc/docker/certs.d/127.0.0.1:PORT/ca.crt` (both engines of a test read
/// it: the namespaced one shares this filesystem); the file, the folder
/// and the registry go when the test process does.
pub struct TlsRegistry {
    pub address: String,
    pub user: &'static str,
    pub password: &'static str,
}

pub fn tls_registry() -> &'static TlsRegistry {
    static REGISTRY: OnceLock<TlsRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let bin = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(bin).exists(),
            "these tests need a container registry: `apt-get install docker-registry`"
        );
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("mre-tls-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(args[0])
                .args(&args[1..])
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e} (apt-get install openssl python3)", args[0]));
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o.stdout
        };
        // A CA, and the registry's certificate for 127.0.0.1 signed by it.
        run(&["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=mre-ops test CA", "-keyout", "ca.key", "-out", "ca.crt"]);
        run(&["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr"]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt"]);
        let (user, password) = ("mre-release", "a-registry-password-for-tests");
        let hash = run(&[
            "/usr/bin/python3",
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            password,
        ]);
        std::fs::write(
            dir.join("htpasswd"),
            format!("{user}:{}", String::from_utf8_lossy(&hash).trim()),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\n\
                 auth:\n  htpasswd:\n    realm: mre-ops\n    path: {d}/htpasswd\n\
                 http:\n  addr: {address}\n  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let certs = std::path::PathBuf::from(format!("/etc/docker/certs.d/{address}"));
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(dir.join("ca.crt"), certs.join("ca.crt")).unwrap();
        // The engines' trust in its CA goes with it.
        serve_registry(bin, &dir.join("config.yml"), &dir, Some(&certs));
        wait_for_port(port, 20);
        TlsRegistry {
            address,
            user,
            password,
        }
    })
}
