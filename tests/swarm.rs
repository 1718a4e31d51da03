//! Production on Docker Swarm (`driver = "swarm"`), on a cluster of real
//! engines the test starts (`tests/common/cluster.rs`): a manager and two
//! workers, each a dockerd in a network namespace of its own, joined into
//! one swarm and routed through this machine so that the stack's overlay
//! network spans them. This machine's engine is never made a swarm, nor
//! left one, so the published ports of what runs on it (a developer's demo
//! stack) are untouched; the test checks that its swarm state is the same
//! after. Placement comes from ops.toml: the database on the node labelled
//! for its volume (the manager), the proxy on the node that publishes the
//! ports (the manager), the app's replicas on the workers. The released
//! images go through a registry with TLS and a login, and every node pulls
//! the pinned digests itself (`--with-registry-auth`). Then: a first
//! release, an update under load with no failed request, a release whose
//! health fails rolled back by the engine with the whole stack kept on one
//! version, a release refused before its update because a worker cannot
//! reach the registry, `rollback` of the whole stack, and `status` showing
//! nodes and tasks. Needs root (the namespaces); fails, never skips, when
//! it cannot.
mod common;

use common::cluster::Cluster;
use common::load::Load;
use common::swarm_stack::SwarmStack;
use common::*;

/// How many tests lease the cluster.
const TESTS: usize = 1;

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
    let cluster = phase(
        "start a cluster: a manager and two workers in network namespaces",
        || {
            let cluster = Cluster::lease(TESTS);
            // The database's volume lives on the manager: its label pins it.
            cluster
                .manager
                .docker(&["node", "update", "--label-add", "db=true", "manager"]);
            cluster
        },
    );
    let engine = &cluster.manager;
    let mut s = phase("prepare the stack (demo images, registry)", || {
        SwarmStack::new("sw", engine, cluster.registry)
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
        // Placement from ops.toml: the app's replicas spread over the
        // workers (each pulled the digest itself), the database and the
        // proxy on the manager.
        assert_eq!(
            cluster.task_nodes(&s.service("mre-app")),
            ["worker-1", "worker-2"]
        );
        assert_eq!(cluster.task_nodes(&s.service("mre-postgres")), ["manager"]);
        assert_eq!(cluster.task_nodes(&s.service("mre-proxy")), ["manager"]);
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
    phase("remove the cluster and everything in it", move || {
        drop(cluster)
    });
    assert_eq!(
        host_swarm_state(),
        host_before,
        "this machine's engine's swarm state changed during the test"
    );
}
