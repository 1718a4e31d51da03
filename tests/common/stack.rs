//! A whole demo stack: its own Compose project, container prefix and free
//! ports (so it runs beside a deployed demo), deployed by a test and torn
//! down with its volumes on drop; or `Shared`, deployed once and shared by
//! every test of one test binary, torn down when the last of them finishes.

use super::{docker, free_port, workspace_root, xtask, Run, TempDir, XTASK};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub struct Stack {
    pub dir: TempDir,
    pub config: PathBuf,
    pub project: String,
    pub prefix: String,
    pub app: u16,
    pub ingestion: u16,
    pub postgres: u16,
}

impl Stack {
    /// An ops.toml with environment `e2e` for a new stack (not started:
    /// `run(&["deploy", "e2e"])` does that). `compose_env` adds entries to
    /// the Compose `env` table (`, KEY = "value"`); `extra` adds TOML.
    pub fn new(tag: &str, compose_env: &str, extra: &str) -> Stack {
        let dir = TempDir::new(tag);
        let project = format!("mre-{tag}-{}", std::process::id());
        let prefix = project.clone();
        let (app, ingestion, postgres) = (free_port(), free_port(), free_port());
        let compose = workspace_root().join("demo/docker-compose.yml");
        let config = dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.e2e]
env_file = ".env.e2e"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.e2e.compose]
files = ["{compose}"]
project = "{project}"
pre_build = [["{xtask}", "-q", "demo", "prepare"]]
env = {{ MRE_CONTAINER_PREFIX = "{prefix}", MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}"{compose_env} }}
[environments.e2e.services.mre-app]
container = "{prefix}-app"
url = "http://localhost:{app}"
health = {{ url = "http://127.0.0.1:{app}/api/health", expect = "runbook-json" }}
[environments.e2e.services.mre-liverc-ingestion-service]
container = "{prefix}-liverc-ingestion-service"
health = {{ url = "http://127.0.0.1:{ingestion}/health" }}
[environments.e2e.database]
container = "{prefix}-postgres"
host = "127.0.0.1"
port = {postgres}
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.e2e.migrations]
dir = "{migrations}"
{extra}
"#,
                compose = compose.display(),
                migrations = workspace_root().join("prisma/migrations").display(),
                xtask = XTASK,
            ),
        );
        Stack {
            dir,
            config,
            project,
            prefix,
            app,
            ingestion,
            postgres,
        }
    }

    /// `xtask --config <this stack's ops.toml> ARGS`
    pub fn run(&self, args: &[&str]) -> Run {
        xtask(&self.config, args)
    }

    /// The generated database password (to check it never leaks).
    pub fn password(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(".env.e2e")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
            .unwrap_or("unset")
            .to_string()
    }

    /// The container of a service: `app`, `liverc-ingestion-service`, `postgres`.
    pub fn container(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// SQL through psql inside the database container; tuples only.
    pub fn psql(&self, sql: &str) -> String {
        let pg = self.container("postgres");
        docker(&[
            "exec",
            &pg,
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

    /// The container's id and start time: unchanged means not recreated.
    pub fn started_at(&self, suffix: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{.Id}} {{.State.StartedAt}}",
            &self.container(suffix),
        ])
    }
}

impl Stack {
    /// After a test stopped a container or moved a file: wait (up to 90 s)
    /// until `health e2e` passes again. Never panics (runs in `OnDrop`).
    pub fn wait_healthy_quietly(&self) {
        let _ = Command::new(XTASK)
            .arg("--config")
            .arg(&self.config)
            .args(["health", "e2e", "--wait", "90"])
            .env_remove("GITHUB_ACTIONS")
            .env_remove("DOCKER_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Start a container a test stopped, then wait until the stack is
    /// healthy. Never panics (runs in `OnDrop`).
    pub fn restart_quietly(&self, container: &str) {
        let _ = Command::new("docker")
            .args(["start", container])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.wait_healthy_quietly();
    }

    /// A process that removes this stack (`compose down -v`, then its
    /// folder) once its stdin closes: when the returned `Child`'s stdin is
    /// dropped, or when this test process ends in any way (exit, abort, a
    /// signal, `kill -9`: the kernel closes the pipe). Own process group, so
    /// a Ctrl-C on the terminal does not stop it before it has cleaned up.
    fn spawn_guard(&self) -> Child {
        let down = super::compose_down_command(
            &self.project,
            &workspace_root().join("demo/docker-compose.yml"),
        );
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"cat >/dev/null; "$@" >/dev/null 2>&1; rm -rf -- "$MRE_STACK_DIR""#)
            .arg("mre-stack-guard")
            .arg(down.get_program())
            .args(down.get_args())
            // `down` needs the variable set, not its value.
            .env("POSTGRES_PASSWORD", "unused-by-down")
            .env("MRE_CONTAINER_PREFIX", &self.prefix)
            .env("MRE_STACK_DIR", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        c.spawn()
            .expect("starting the shared stack's guard process (sh)")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        super::compose_down(
            &self.project,
            &workspace_root().join("demo/docker-compose.yml"),
            &[
                ("POSTGRES_PASSWORD", &self.password()),
                ("MRE_CONTAINER_PREFIX", &self.prefix),
            ],
        );
    }
}

/// One demo stack, deployed once (`deploy e2e`) by the first test of a test
/// binary that leases it, and shared by all of them: `static STACK: Shared =
/// Shared::new(TESTS, make);` then `STACK.read()` in a test that only looks
/// at the stack, `STACK.write()` in one that changes it (stops a container,
/// moves a file, deploys again). Writers run alone, readers in parallel; a
/// writer puts back what it changed before it returns, also when it panics
/// (`OnDrop`), so the tests hold in any order (it may skip that when every
/// other test has finished: `Lease::others_done`).
///
/// Cleanup. A static is never dropped, so the `Stack`'s own drop never runs.
/// Instead, before anything is started, a guard process is spawned
/// (`Stack::spawn_guard`): it waits for EOF on a pipe that only this process
/// holds, then runs `docker compose down -v` and removes the folder. That
/// EOF comes either
/// - from the last test out: `TESTS` is the number of tests that lease the
///   stack; each `Lease` counts its test finished in its drop (which also
///   runs when the test panics), and the one that brings the count to
///   `TESTS` closes the pipe and waits for the guard, so the stack is gone
///   before the binary reports its last test, as with a per-test fixture;
/// - or, when fewer tests run (a name filter, `--skip`, a test panicking
///   before its lease) or the process is killed, from the kernel as the
///   process ends: the guard then cleans up just after it exits.
///
/// A `TESTS` too low is caught (a lease after the teardown panics and says
/// so); one too high only defers the cleanup to the guard at exit. This was
/// chosen over `atexit` (not run on abort or a signal) and over a timer
/// (racy with libtest's exit).
pub struct Shared {
    tests: usize,
    make: fn() -> Stack,
    deployed: OnceLock<Result<Deployed, String>>,
    /// (leased, finished)
    count: Mutex<(usize, usize)>,
    lock: RwLock<()>,
}

/// The shared stack, the output of its first deploy, its guard process.
pub struct Deployed {
    stack: Stack,
    deploy: Run,
    guard: Mutex<Option<Child>>,
}

impl Shared {
    /// `tests`: how many `#[test]`s of the binary lease it. `make`: the
    /// stack's config (`Stack::new`); `ensure_demo_images` is done here.
    pub const fn new(tests: usize, make: fn() -> Stack) -> Shared {
        Shared {
            tests,
            make,
            deployed: OnceLock::new(),
            count: Mutex::new((0, 0)),
            lock: RwLock::new(()),
        }
    }

    /// The stack, for a test that changes nothing (others may run at once).
    pub fn read(&'static self) -> Lease {
        self.lease(false)
    }

    /// The stack to itself, for a test that changes it.
    pub fn write(&'static self) -> Lease {
        self.lease(true)
    }

    fn lease(&'static self, exclusive: bool) -> Lease {
        {
            let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(
                count.0 < self.tests,
                "more than {} tests lease this shared stack (it is torn down when that many \
                 have finished): raise the count given to Shared::new",
                self.tests
            );
            count.0 += 1;
        }
        // From here the lease's drop counts this test finished, panic or not.
        let mut lease = Lease {
            shared: self,
            deployed: None,
            read: None,
            write: None,
        };
        let deployed = self
            .deployed
            .get_or_init(|| deploy(self.make))
            .as_ref()
            .unwrap_or_else(|e| panic!("the shared stack could not be set up: {e}"));
        if exclusive {
            lease.write = Some(self.lock.write().unwrap_or_else(PoisonError::into_inner));
        } else {
            lease.read = Some(self.lock.read().unwrap_or_else(PoisonError::into_inner));
        }
        assert_eq!(
            deployed.deploy.code, 0,
            "the shared stack's deploy failed: {:?}",
            deployed.deploy
        );
        lease.deployed = Some(deployed);
        lease
    }

    /// The last test out: close the guard's stdin and wait for its cleanup.
    fn tear_down(&self) {
        let Some(Ok(d)) = self.deployed.get() else {
            return;
        };
        let guard = d
            .guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut guard) = guard {
            drop(guard.stdin.take());
            let _ = guard.wait();
        }
    }
}

/// Config, guard, `deploy e2e`: once. A panic (no Docker, no images) is kept
/// as the error every test then reports, instead of each trying again.
fn deploy(make: fn() -> Stack) -> Result<Deployed, String> {
    std::panic::catch_unwind(|| {
        super::ensure_demo_images();
        let stack = make();
        let guard = stack.spawn_guard();
        let deploy = stack.run(&["deploy", "e2e"]);
        Deployed {
            stack,
            deploy,
            guard: Mutex::new(Some(guard)),
        }
    })
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// A test's use of the shared stack: derefs to the `Stack`. Its drop counts
/// the test finished and, for the last one, removes the stack.
pub struct Lease {
    shared: &'static Shared,
    deployed: Option<&'static Deployed>,
    read: Option<RwLockReadGuard<'static, ()>>,
    write: Option<RwLockWriteGuard<'static, ()>>,
}

impl Lease {
    /// The output of the stack's one `deploy e2e` (it passed).
    pub fn deploy(&self) -> &Run {
        &self.deployed.unwrap().deploy
    }

    /// Every other test that leases the stack has finished: it is removed
    /// after this one, so what this test breaks need not be put back.
    pub fn others_done(&self) -> bool {
        let count = self
            .shared
            .count
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        count.1 + 1 == self.shared.tests
    }
}

impl std::ops::Deref for Lease {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.deployed.unwrap().stack
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Counted before the lock is released: a writer that gets the lock
        // next sees this test finished (`others_done`).
        let last = {
            let mut count = self
                .shared
                .count
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            count.1 += 1;
            count.1 == self.shared.tests
        };
        drop(self.write.take());
        drop(self.read.take());
        if last {
            self.shared.tear_down();
        }
    }
}
