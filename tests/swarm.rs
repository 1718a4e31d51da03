//! Production on Docker Swarm (`driver = "swarm"`), on a second Docker
//! engine that the test starts in a network namespace of its own and makes
//! a one-node swarm (`tests/common/netns.rs`): this machine's engine is
//! never made a swarm, nor left one, so the published ports of what runs on
//! it (a developer's demo stack) are untouched. The test checks that its
//! swarm state is the same after. Then: a first release, an update under a
//! load with no failed request, a release whose health fails rolled back by
//! the engine with the whole stack kept on one version, `rollback` of the
//! whole stack, and `status` showing the tasks. Images are built on this
//! machine's engine and go through a real registry (Debian's
//! docker-registry, on loopback, which the namespace reaches at the same
//! address), pinned by digest; the stack's ports and database are reached
//! at the namespace's address. Needs root (the namespace); fails, never
//! skips, when it cannot.
mod common;

use std::path::PathBuf;

use common::load::Load;
use common::netns::NsEngine;
use common::release::{copy_image, registry, remove_release_images, SMOKE_USER};
use common::*;

/// A second engine in a network namespace, a one-node swarm advertising
/// the namespace's address, reaching the test registry at its loopback
/// address. Removed with everything in it on drop.
fn swarm_engine() -> NsEngine {
    let mut engine = NsEngine::start("sw");
    engine.docker(&[
        "swarm",
        "init",
        "--advertise-addr",
        &engine.ns_addr().to_string(),
    ]);
    let port = registry()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the registry is 127.0.0.1:PORT");
    engine.forward_loopback(port);
    engine
}

/// This machine's engine's swarm state (`inactive` unless someone made it
/// a swarm).
fn host_swarm_state() -> String {
    docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
}

/// Run one phase of the test: a failure says which.
fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => {
            eprintln!("phase `{name}`: {:.1} s", start.elapsed().as_secs_f64());
            v
        }
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("the swarm test failed in phase `{name}`: {why}");
        }
    }
}

/// A stack of the demo under its own name and ports on the namespaced
/// engine (which goes with everything on it); the release images built
/// here are removed on drop.
struct Stack<'a> {
    engine: &'a NsEngine,
    dir: TempDir,
    config: PathBuf,
    stack: String,
    app: u16,
    ingestion: u16,
    postgres: u16,
    registry: String,
}

impl<'a> Stack<'a> {
    fn new(tag: &str, engine: &'a NsEngine) -> Stack<'a> {
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
        // The stack's images that no release builds (the database, the
        // proxy) exist only on this machine's engine: through the registry.
        for image in ["mre-demo-postgres:15", "mre-demo-proxy:1"] {
            copy_image(&registry(), &stack, image, &engine.docker_host());
        }
        let mut s = Stack {
            engine,
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
        let (docker_host, addr) = (self.engine.docker_host(), self.engine.ns_addr());
        self.dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.sw]
driver = "swarm"
docker_host = "{docker_host}"
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
health = {{ url = "http://{addr}:{app}/api/health", expect = "runbook-json" }}
[environments.sw.database]
host = "{addr}"
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
        let mut v: Vec<String> = self
            .engine
            .docker(&[
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

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        // The stack, its volume and the images pulled there go with the
        // namespaced engine; the images built and tagged here stay here.
        remove_release_images(&self.registry, &self.stack);
    }
}

/// Run `f` under a client's load on the proxy at `host:port`: its result,
/// (ok, failed, why).
fn under_load<T>(host: &str, port: u16, f: impl FnOnce() -> T) -> (T, usize, usize, Vec<String>) {
    let load = Load::start_at(host, port);
    let r = f();
    let (ok, failed, why) = load.finish();
    (r, ok, failed, why)
}

#[test]
fn a_swarm_stack_is_released_updated_rolled_back_by_the_engine_and_by_us() {
    // Root, ip, nsenter, dockerd, then this machine's engine: each says
    // what is missing.
    common::netns::require();
    require_docker();
    let host_before = host_swarm_state();
    let engine = phase(
        "start a second engine in a network namespace, a one-node swarm",
        swarm_engine,
    );
    let mut s = phase("prepare the stack (demo images, registry)", || {
        Stack::new("sw", &engine)
    });
    let addr = engine.ns_addr().to_string();

    let first = phase("first release: the whole stack from nothing", || {
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
        first
    });
    let v1 = s.tag("v1");

    // A new version under load: the engine's start-first update drops nothing.
    let second = phase("update to v2 under load, no failed request", || {
        let ctx = s.context("v2", &v1, "ENV MRE_DEMO_RELEASE=v2");
        s.config = s.write_config(&ctx);
        let v2 = s.tag("v2");
        let (r, ok, failed, why) =
            under_load(&addr, s.app, || s.run(&["deploy", "sw", "--tag", &v2]));
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
        second
    });

    // A version whose health fails: the engine rolls the app back, mre-ops
    // puts every service back on v2, and nothing failed meanwhile.
    phase("v3 fails its health: rolled back by the engine", || {
        let bad = s.context("bad", &v1, "ENV MRE_DEMO_HEALTH_FAULT=500");
        s.config = s.write_config(&bad);
        let v3 = s.tag("v3");
        let (r, ok, failed, why) =
            under_load(&addr, s.app, || s.run(&["deploy", "sw", "--tag", &v3]));
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
    });

    // `rollback`: the whole stack to the previous release (v1).
    phase("rollback of the whole stack to v1", || {
        let r = s.run(&["rollback", "sw"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(s.app_images(), first, "back on v1");
        let ingestion = engine.docker(&[
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
    });

    // `down`: the stack goes, the volume stays.
    phase("down", || {
        let r = s.run(&["down", "sw"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(engine
            .docker(&["stack", "ls"])
            .lines()
            .all(|l| !l.starts_with(&format!("{} ", s.stack))));
        assert!(
            engine
                .docker(&["volume", "ls", "--format", "{{.Name}}"])
                .lines()
                .any(|l| l == format!("{}_pgdata", s.stack)),
            "the volume stays"
        );
    });

    drop(s);
    phase(
        "remove the namespaced engine and everything in it",
        move || drop(engine),
    );
    assert_eq!(
        host_swarm_state(),
        host_before,
        "this machine's engine's swarm state changed during the test"
    );
}
