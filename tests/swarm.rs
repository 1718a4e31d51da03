//! Production on Docker Swarm (`driver = "swarm"`), on this machine's
//! engine made a one-node swarm for the test run (and left again after, when
//! it was not one before): a first release, an update under a loopback load
//! with no failed request, a release whose health fails rolled back by the
//! engine with the whole stack kept on one version, `rollback` of the whole
//! stack, and `status` showing the tasks. Images go through a real registry
//! (Debian's docker-registry), pinned by digest.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::load::Load;
use common::release::{registry, remove_release_images, SMOKE_USER};
use common::*;

/// The engine as a one-node swarm for this process; left on drop when this
/// process made it one.
struct Swarm {
    made: bool,
}

impl Swarm {
    fn join() -> Swarm {
        require_docker();
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state.trim() == "active" {
            return Swarm { made: false };
        }
        let out = std::process::Command::new("docker")
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()
            .expect("docker swarm init");
        assert!(
            out.status.success(),
            "`docker swarm init --advertise-addr 127.0.0.1` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Swarm { made: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.made {
            let _ = std::process::Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", "docker_gwbridge"])
                .output();
        }
    }
}

/// A stack of the demo under its own name and ports; removed (with its
/// volume and pulled images) on drop.
struct Stack {
    dir: TempDir,
    config: PathBuf,
    stack: String,
    app: u16,
    ingestion: u16,
    postgres: u16,
    registry: String,
}

impl Stack {
    fn new(tag: &str) -> Stack {
        ensure_demo_images();
        let dir = TempDir::new(tag);
        let stack = format!("mre-{tag}-{}", std::process::id());
        let from = workspace_root().join("prisma/migrations");
        let st = std::process::Command::new("cp")
            .args([
                "-r",
                from.to_str().unwrap(),
                dir.path().join("migrations").to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let mut s = Stack {
            dir,
            config: PathBuf::new(),
            stack,
            app: free_port(),
            ingestion: free_port(),
            postgres: free_port(),
            registry: registry(),
        };
        s.config = s.write_config(
            &workspace_root()
                .join("demo/docker/app")
                .display()
                .to_string(),
        );
        s
    }

    fn write_config(&self, app_context: &str) -> PathBuf {
        // The same ports each time: a changed port is a changed proxy
        // service, replaced stop-first (its host ports are taken).
        let (stack, app, ingestion, postgres, registry) = (
            &self.stack,
            self.app,
            self.ingestion,
            self.postgres,
            &self.registry,
        );
        self.dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.sw]
driver = "swarm"
env_file = ".env.sw"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.sw.swarm]
stack = "{stack}"
files = ["{file}"]
pre_build = [["{xtask}", "-q", "demo", "prepare"]]
env = {{ MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}" }}
monitor_secs = 3
services = {{ mre-app = {{ replicas = 2 }}, mre-postgres = {{ constraints = ["node.role == manager"] }} }}
[environments.sw.services.mre-app]
health = {{ url = "http://127.0.0.1:{app}/api/health", expect = "runbook-json" }}
[environments.sw.database]
host = "127.0.0.1"
port = {postgres}
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.sw.migrations]
dir = "migrations"
[environments.sw.release]
registry = "{registry}"
keep = 3
health_timeout_secs = 90
proxy = {{ service = "mre-proxy" }}
images = {{ mre-demo-app = {{ context = "{app_context}" }} }}
[environments.sw.release.services.mre-app]
image = "mre-demo-app"
strategy = "blue-green"
[environments.sw.release.services.mre-liverc-ingestion-service]
image = "mre-demo-app"
strategy = "stop-first"
"#,
                file = workspace_root().join("demo/docker-stack.yml").display(),
                xtask = XTASK,
            ),
        )
    }

    fn run(&self, args: &[&str]) -> Run {
        xtask_env(&self.config, args, SMOKE_USER)
    }

    /// The images the app's running tasks use.
    fn app_images(&self) -> Vec<String> {
        let mut v: Vec<String> = docker(&[
            "service",
            "ps",
            &format!("{}_mre-app", self.stack),
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Image}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
        v.sort();
        v.dedup();
        v
    }

    fn tag(&self, v: &str) -> String {
        format!("{}-{v}", self.stack)
    }

    /// A build context: the first release's image with one line more.
    fn context(&self, name: &str, v1: &str, line: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {}/mre-demo-app:{v1}\n{line}\n", self.registry),
        )
        .unwrap();
        dir.display().to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["stack", "rm", &self.stack])
            .output();
        for _ in 0..60 {
            let left = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.stack.namespace={}", self.stack),
            ]);
            if left.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", &format!("{}_pgdata", self.stack)])
            .output();
        remove_release_images(&self.registry, &self.stack);
    }
}

/// Run `f` under a client's load on the proxy: its result, (ok, failed, why).
fn under_load<T>(port: u16, f: impl FnOnce() -> T) -> (T, usize, usize, Vec<String>) {
    let load = Load::start(port);
    let r = f();
    let (ok, failed, why) = load.finish();
    (r, ok, failed, why)
}

#[test]
fn a_swarm_stack_is_released_updated_rolled_back_by_the_engine_and_by_us() {
    let _swarm = Swarm::join();
    let mut s = Stack::new("sw");

    // A first release: the whole stack from nothing.
    let v1 = s.tag("v1");
    let r = s.run(&["deploy", "sw", "--tag", &v1]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Smoke tests:"), "{r:?}");
    let first = s.app_images();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("@sha256:"), "pinned by digest: {first:?}");
    let st = s.run(&["status", "sw"]);
    assert_eq!(st.code, 0, "{st:?}");
    assert!(
        st.stdout.contains(&format!("{}_mre-app", s.stack))
            && st.stdout.contains("2/2 running")
            && st.stdout.contains("task"),
        "{st:?}"
    );
    // The checklist reads the stack's services for its infrastructure items.
    let p = s.run(&["--json", "preflight", "sw"]);
    let doc: serde_json::Value =
        serde_json::from_str(&p.stdout).unwrap_or_else(|_| panic!("{p:?}"));
    for item in [
        "Container health checks configured",
        "Network configuration verified",
        "Resource limits configured",
    ] {
        let c = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == item)
            .unwrap_or_else(|| panic!("{item} in {doc}"));
        assert_eq!(c["state"], "PASS", "{c}");
    }
    let h = s.run(&["health", "sw"]);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(h.stdout.contains("replicas"), "{h:?}");

    // A new version under load: the engine's start-first update drops nothing.
    let ctx = s.context("v2", &v1, "ENV MRE_DEMO_RELEASE=v2");
    s.config = s.write_config(&ctx);
    let v2 = s.tag("v2");
    let (r, ok, failed, why) = under_load(s.app, || s.run(&["deploy", "sw", "--tag", &v2]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(ok > 20, "the load ran: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the update: {why:?}",
        ok + failed
    );
    let second = s.app_images();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first, "the app runs the new version");

    // A version whose health fails: the engine rolls the app back, mre-ops
    // puts every service back on v2, and nothing failed meanwhile.
    let bad = s.context("bad", &v1, "ENV MRE_DEMO_HEALTH_FAULT=500");
    s.config = s.write_config(&bad);
    let v3 = s.tag("v3");
    let (r, ok, failed, why) = under_load(s.app, || s.run(&["deploy", "sw", "--tag", &v3]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("did not take the new version"), "{r:?}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {why:?}",
        ok + failed
    );
    assert_eq!(s.app_images(), second, "still v2");
    let l = s.run(&["--json", "releases", "sw"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let last = v["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "rolled-back", "{last}");

    // `rollback`: the whole stack to the previous release (v1).
    let r = s.run(&["rollback", "sw"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.app_images(), first, "back on v1");
    let ingestion = docker(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &format!("{}_mre-liverc-ingestion-service", s.stack),
    ]);
    assert_eq!(
        ingestion.trim(),
        first[0],
        "every released service is on v1"
    );

    // `down`: the stack goes, the volume stays.
    let r = s.run(&["down", "sw"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(docker(&["stack", "ls"])
        .lines()
        .all(|l| !l.starts_with(&format!("{} ", s.stack))));
}
