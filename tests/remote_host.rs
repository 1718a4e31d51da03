//! The fixture for servers reached only over SSH (`tests/common/ssh.rs`):
//! an sshd in the network namespace of a second Docker engine
//! (`tests/common/netns.rs`). A command over SSH reaches that engine's
//! socket; a ControlMaster connection forwards the socket to this machine;
//! the namespace listens on nothing but the SSH port (and loopback); a
//! session ends with its sshd; a changed host key is refused. Needs root and OpenSSH; fails, never skips,
//! when it cannot.
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::netns::NsEngine;
use common::ssh::SshHost;
use common::TempDir;

/// Run `c`; panics with its stderr unless it succeeds; stdout, trimmed.
fn ok(what: &str, c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `docker -H HOST ARGS` from this machine.
fn docker_at(host: &str, args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .args(["-H", host])
        .args(args);
    c
}

/// A ControlMaster connection, ended (`-O exit`) on drop if the test did not.
struct Master<'a> {
    host: &'a SshHost,
    path: String,
    open: bool,
}

impl Master<'_> {
    fn control(&self, op: &str) -> Command {
        let mut c = self.host.ssh();
        c.args(["-S", &self.path, "-O", op]);
        c
    }
}

impl Drop for Master<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.control("exit").arg(self.host.alias()).output();
        }
    }
}

fn log(start: Instant, what: &str) {
    eprintln!("{:>5.1} s  {what}", start.elapsed().as_secs_f64());
}

#[test]
fn a_namespaced_engine_is_reached_over_ssh_only() {
    let start = Instant::now();
    // Before the engine: a machine without OpenSSH fails at once.
    common::ssh::require();
    let engine = NsEngine::start("rh");
    log(start, "engine started");
    let mut host = SshHost::start(&engine);
    log(start, "sshd answers");
    let alias = host.alias().to_string();
    let engine_id = engine.docker(&["info", "--format", "{{.ID}}"]);
    let socket = engine
        .docker_host()
        .strip_prefix("unix://")
        .expect("a unix socket")
        .to_string();

    // A command over SSH: sshd runs in the namespace on this machine's
    // filesystem, so the engine's socket path is valid in the session.
    let remote = ok(
        "docker info over ssh",
        host.ssh().args([
            &alias,
            "docker",
            "-H",
            &engine.docker_host(),
            "info",
            "--format",
            "'{{.ID}}'",
        ]),
    );
    assert_eq!(remote, engine_id, "docker info over SSH saw another engine");
    // The configuration also matches `user@address` (the form of `ssh =`).
    let user = ok(
        "ssh -F CONFIG root@ADDR",
        host.ssh().args([&host.target(), "id", "-un"]),
    );
    assert_eq!(user, "root");
    log(start, "commands over ssh");

    // One ControlMaster connection, the engine's socket forwarded through it.
    let dir = TempDir::new("rh");
    let master_log = dir.path().join("master.log");
    let mut master = Master {
        host: &host,
        path: dir.path().join("cm").display().to_string(),
        open: false,
    };
    let st = host
        .ssh()
        .args(["-o", "ControlMaster=yes"])
        .arg("-o")
        .arg(format!("ControlPath={}", master.path))
        .args(["-o", "ControlPersist=no", "-fN", &alias])
        // The master stays in the background with what it inherited: no
        // pipe this process would wait on.
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&master_log).unwrap())
        .status()
        .expect("running ssh -fN");
    master.open = st.success();
    assert!(
        st.success(),
        "ssh -fN (the ControlMaster) failed ({st}): {}",
        std::fs::read_to_string(&master_log).unwrap_or_default()
    );
    ok("ssh -O check", master.control("check").arg(&alias));
    let local = dir.path().join("docker.sock").display().to_string();
    ok(
        "ssh -O forward -L",
        master
            .control("forward")
            .args(["-L", &format!("{local}:{socket}"), &alias]),
    );
    let forwarded = ok(
        "docker info through the forwarded socket",
        &mut docker_at(&format!("unix://{local}"), &["info", "--format", "{{.ID}}"]),
    );
    assert_eq!(
        forwarded, engine_id,
        "the forwarded socket reached another engine"
    );
    ok("ssh -O exit", master.control("exit").arg(&alias));
    master.open = false;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&master.path).exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let check: Output = master.control("check").arg(&alias).output().unwrap();
    assert!(
        !check.status.success(),
        "the ControlMaster still answers after -O exit"
    );
    drop(master);
    log(start, "socket forwarded through a ControlMaster");

    // In the namespace, nothing listens on TCP beyond loopback but sshd.
    let listening = ok(
        "ss -Hltn in the namespace",
        Command::new("nsenter")
            .arg(format!("--net={}", engine.netns()))
            .args(["ss", "-Hltn"]),
    );
    let ssh_port = format!("{}:22", engine.ns_addr());
    let mut seen_ssh = false;
    for line in listening.lines() {
        let local = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("a line of ss without a local address: {line}"));
        let (addr, _port) = local.rsplit_once(':').unwrap();
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let loopback = addr
            .split('%')
            .next()
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
        seen_ssh |= local == ssh_port;
        assert!(
            loopback || local == ssh_port,
            "in the namespace, {local} listens (only {ssh_port} and loopback should):\n{listening}"
        );
    }
    assert!(seen_ssh, "sshd does not listen on {ssh_port}:\n{listening}");
    log(start, "only port 22 listens");

    // A session still running when sshd stops ends with it (sshd is the
    // first process of a PID namespace): a command, and its client here.
    let mut session = host
        .ssh()
        .args([&alias, "exec", "sleep", "613"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running ssh ... sleep");
    let remote_sleep = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00613\x00")
        })
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !remote_sleep() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(remote_sleep(), "`sleep 613` over ssh did not start");

    // A changed host key is refused, and known_hosts stays as it was.
    let pinned = std::fs::read_to_string(host.known_hosts()).unwrap();
    host.rotate_host_key();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while session.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ended = session.try_wait().unwrap().is_some();
    let _ = session.kill();
    let _ = session.wait();
    assert!(ended, "an SSH session outlived the sshd it was on");
    assert!(!remote_sleep(), "a command run over SSH outlived its sshd");
    let o = host.ssh().args([&alias, "true"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && (stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || stderr.contains("Host key verification failed")),
        "ssh to a server whose host key changed did not fail on the key ({}): {stderr}",
        o.status
    );
    assert_eq!(
        std::fs::read_to_string(host.known_hosts()).unwrap(),
        pinned,
        "known_hosts changed"
    );
    log(start, "a rotated host key is refused");

    drop(host);
    drop(engine);
    log(start, "removed");
}
