//! Shared by the integration tests: run the xtask binary, make throwaway
//! folders and ports, and fail loudly (never skip) when Docker or
//! PostgreSQL is missing.

#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod load;
pub mod migrate;
pub mod netns;
pub mod ops;
pub mod pg;
pub mod release;
pub mod ssh;
pub mod stack;
pub mod swarm_stack;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mre-ops-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run `xtask ARGS` with `--config CONFIG`, outside of any terminal.
pub fn xtask(config: &Path, args: &[&str]) -> Run {
    xtask_env(config, args, &[])
}

pub fn xtask_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(XTASK);
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove("GITHUB_ACTIONS").env_remove("DOCKER_HOST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("running the xtask binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Fail (not skip) with the way to get Docker when it is not there.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match ok {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "these tests need a running Docker engine, and `docker info` failed: {}\n\
             Start it (`systemctl start docker` or `dockerd &`); .ci/run does this on CI.",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("these tests need Docker: `docker` could not run ({e}). Install docker.io and docker-compose with apt-get."),
    }
}

/// The demo binary, built once per test process (`cargo build -p mre-demo`).
pub fn demo_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-q", "-p", "mre-demo"])
                .current_dir(workspace_root())
                .status()
                .expect("running cargo build -p mre-demo");
            assert!(st.success(), "cargo build -p mre-demo failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(|d| workspace_root().join(d))
                .unwrap_or_else(|_| workspace_root().join("target"));
            target.join("debug/mre-demo")
        })
        .clone()
}

/// A child process killed on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until something accepts connections on 127.0.0.1:port.
pub fn wait_for_port(port: u16, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {secs} s");
}

/// Start `mre-demo ROLE` on the host on a free port, with extra env.
pub fn start_demo(role: &str, env: &[(&str, &str)]) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(demo_binary());
    cmd.arg(role)
        .env("PORT", port.to_string())
        .env(
            "DATABASE_URL",
            "postgres://pacetracer:x@127.0.0.1:1/pacetracer",
        )
        .env("MRE_INGEST_RATE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Child(cmd.spawn().expect("starting mre-demo"));
    wait_for_port(port, 20);
    (child, port)
}

/// The demo's images (`xtask demo prepare`), built once per test process.
pub fn ensure_demo_images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_docker();
        let st = Command::new(XTASK)
            .args(["-q", "demo", "prepare"])
            .status()
            .expect("running xtask demo prepare");
        assert!(
            st.success(),
            "`cargo xtask demo prepare` failed: the demo images are needed by this test"
        );
    });
}

/// Run `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        o.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `docker compose` (v2) or `docker-compose` (v1) `-p PROJECT -f FILE down
/// -v`: what a stack fixture's drop runs; errors ignored.
pub fn compose_down(project: &str, file: &Path, env: &[(&str, &str)]) {
    let mut c = compose_down_command(project, file);
    for (k, v) in env {
        c.env(k, v);
    }
    let _ = c.output();
}

/// The command line of [`compose_down`], not run: also what the guard
/// process of a shared stack (`stack::Shared`) runs.
pub fn compose_down_command(project: &str, file: &Path) -> Command {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let program: &[&str] = if v2 {
        &["docker", "compose"]
    } else {
        &["docker-compose"]
    };
    let mut c = Command::new(program[0]);
    c.args(&program[1..])
        .args(["-p", project, "-f", &file.display().to_string()])
        .args(["down", "-v", "--remove-orphans", "-t", "2"]);
    c
}

/// Runs a closure on drop, panic or not: puts back what a test changed on a
/// shared fixture. The closure must not panic (it may run while unwinding).
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}
