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
//! reach the registry, a worker drained under load (`node drain`) and made
//! active again, `rollback` of the whole stack, a worker lost under load
//! (its engine killed: the time until its tasks run elsewhere measured,
//! `health` and `monitor` naming it, `deploy` refused) and back, and
//! `status` showing nodes and tasks. Needs root (the namespaces); fails,
//! never skips, when it cannot.
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
    let mut cluster = phase(
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
    let mut s = phase("prepare the stack (demo images, registry)", || {
        SwarmStack::new("sw", &cluster.manager, cluster.registry)
    });
    let addr = s.addr.to_string();

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
        assert_eq!(s.task_nodes("mre-app"), ["worker-1", "worker-2"]);
        assert_eq!(s.task_nodes("mre-postgres"), ["manager"]);
        assert_eq!(s.task_nodes("mre-proxy"), ["manager"]);
        let st = s.run(&["status", "sw"]);
        assert_eq!(st.code, 0, "{st:?}");
        assert!(
            st.stdout.contains(&s.service("mre-app"))
                && st.stdout.contains("2/2 running")
                && st.stdout.contains("task"),
            "{st:?}"
        );
        // The nodes, and which tasks run where.
        let line = |node: &str| {
            st.stdout
                .lines()
                .find(|l| l.trim_start().starts_with(node))
                .unwrap_or_else(|| panic!("no line for {node}: {st:?}"))
                .to_string()
        };
        let m = line("manager ");
        assert!(
            m.contains("manager") && m.contains("ready") && m.contains("mre-postgres.1"),
            "{m}"
        );
        for w in ["worker-1", "worker-2"] {
            let l = line(w);
            assert!(
                l.contains("worker") && l.contains("active") && l.contains("mre-app."),
                "{l}"
            );
        }
        // The checklist reads the stack's services and asks every node.
        let p = s.run(&["--json", "preflight", "sw"]);
        let doc: serde_json::Value =
            serde_json::from_str(&p.stdout).unwrap_or_else(|_| panic!("{p:?}"));
        for item in [
            "Container health checks configured",
            "Network configuration verified",
            "Resource limits configured",
            "Swarm nodes ready",
            "Registry reachable from every node",
            "Room on the nodes for the update",
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
        assert!(
            h.stdout.contains("replicas") && h.stdout.contains("node worker-2"),
            "{h:?}"
        );
        first
    });
    let v1 = s.tag("v1");

    // A new version under load: the engine's start-first update, task by
    // task across the workers, drops nothing.
    let second = phase("update to v2 under load, no failed request", || {
        let ctx = s.context("v2", &v1, "ENV MRE_DEMO_RELEASE=v2");
        s.config = s.write_config(&ctx);
        let v2 = s.tag("v2");
        let t = std::time::Instant::now();
        let (r, ok, failed, why) =
            under_load(&addr, s.app, || s.run(&["deploy", "sw", "--tag", &v2]));
        eprintln!(
            "figure: update across nodes: deploy {:.1} s, {} requests, {failed} failed",
            t.elapsed().as_secs_f64(),
            ok + failed
        );
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

    // A worker that cannot reach the registry: named before the update.
    phase("a worker cannot pull: refused before the update", || {
        let ctx = s.context("v4", &v1, "ENV MRE_DEMO_RELEASE=v4");
        s.config = s.write_config(&ctx);
        let v4 = s.tag("v4");
        let w2 = &cluster.workers[1];
        cluster.block_registry(w2, true);
        let r = s.run(&["deploy", "sw", "--tag", &v4]);
        cluster.block_registry(w2, false);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr.contains("worker-2 cannot pull") && r.stderr.contains("Nothing was updated"),
            "{r:?}"
        );
        assert!(!r.stderr.contains("worker-1 cannot pull"), "{r:?}");
        assert_eq!(s.app_images(), second, "still v2");
        // The one-shot pull services are gone.
        let services = s.docker(&["service", "ls", "--format", "{{.Name}}"]);
        assert!(!services.contains("mre-ops-pull"), "{services}");
    });

    // Maintenance: drain a worker under load; its tasks move, nothing fails.
    phase("drain worker-1 under load, then activate it", || {
        let dry = s.run(&["node", "drain", "sw", "worker-1", "--dry-run"]);
        assert_eq!(dry.code, 0, "{dry:?}");
        assert!(dry.stdout.contains("Drain worker-1"), "{dry:?}");
        assert!(
            cluster.node_states().iter().all(|(_, _, a)| a == "Active"),
            "a dry run changes nothing"
        );
        let t = std::time::Instant::now();
        let (r, ok, failed, why) =
            under_load(&addr, s.app, || s.run(&["node", "drain", "sw", "worker-1"]));
        eprintln!(
            "figure: drain worker-1: {:.1} s, {} requests, {failed} failed",
            t.elapsed().as_secs_f64(),
            ok + failed
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("worker-1 is drained"), "{r:?}");
        assert_eq!(
            failed,
            0,
            "{failed} of {} requests failed during the drain: {why:?}",
            ok + failed
        );
        assert_eq!(s.task_nodes("mre-app"), ["worker-2", "worker-2"]);
        assert!(s
            .docker(&[
                "node",
                "ps",
                "worker-1",
                "--filter",
                "desired-state=running",
                "-q"
            ])
            .is_empty());
        let st = s.run(&["status", "sw"]);
        assert!(
            st.stdout
                .lines()
                .any(|l| l.contains("worker-1") && l.contains("drain")),
            "{st:?}"
        );
        let a = s.run(&["node", "activate", "sw", "worker-1"]);
        assert_eq!(a.code, 0, "{a:?}");
        assert!(cluster
            .node_states()
            .iter()
            .any(|(n, _, a)| n == "worker-1" && a == "Active"));
    });

    // Ctrl-C while a drain waits for the node to empty: the undo makes the
    // node active again, nothing is left half-drained.
    phase("Ctrl-C during a drain of worker-2", || {
        let child = s.spawn(&["node", "drain", "sw", "worker-2"]);
        let t = std::time::Instant::now();
        let draining = |c: &Cluster| {
            c.node_states()
                .iter()
                .any(|(n, _, a)| n == "worker-2" && a == "Drain")
        };
        while !draining(&cluster) {
            assert!(t.elapsed().as_secs() < 30, "worker-2 was never drained");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let st = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let o = child.wait_with_output().expect("waiting for xtask");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(err.contains("undo"), "{err}");
        assert!(
            cluster
                .node_states()
                .iter()
                .any(|(n, _, a)| n == "worker-2" && a == "Active"),
            "{:?}\n{err}",
            cluster.node_states()
        );
    });

    // `rollback`: the whole stack to the previous release (v1), which also
    // spreads the app over both workers again.
    phase("rollback of the whole stack to v1", || {
        let r = s.run(&["rollback", "sw"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(s.app_images(), first, "back on v1");
        let ingestion = s.docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            &s.service("mre-liverc-ingestion-service"),
        ]);
        assert_eq!(
            ingestion.trim(),
            first[0],
            "every released service is on v1"
        );
    });

    // A node lost: worker-2's engine and everything it ran are killed.
    phase(
        "worker-2 lost under load: rescheduled, named, deploy refused, then allowed",
        || {
            let before = s.task_nodes("mre-app");
            let load = Load::start_at(&addr, s.app);
            std::thread::sleep(std::time::Duration::from_secs(2));
            let lost_at = std::time::Instant::now();
            cluster.worker("worker-2").lose();
            let down = cluster.wait_node("worker-2", "Down", 120);
            // Rescheduled: the app runs its two replicas on the nodes left.
            let deadline = lost_at + std::time::Duration::from_secs(120);
            while s.task_nodes("mre-app") != ["worker-1", "worker-1"] {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the app's tasks were not rescheduled: {:?}",
                    s.task_nodes("mre-app")
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let rescheduled = lost_at.elapsed();
            std::thread::sleep(std::time::Duration::from_secs(3));
            let offset = load_offset(&load, lost_at);
            let failed_at = load.failed_at();
            let (ok, failed, why) = load.finish();
            let window = match (failed_at.first(), failed_at.last()) {
                (Some(a), Some(b)) => format!(
                    "failures from {:.1} s to {:.1} s after the loss",
                    a.as_secs_f64() - offset,
                    b.as_secs_f64() - offset
                ),
                _ => "no failure".into(),
            };
            eprintln!(
            "figure: worker-2 lost (app on {before:?}): Down after {:.1} s, app rescheduled after {:.1} s, \
             {} requests, {failed} failed ({window}): {why:?}",
            down.as_secs_f64(),
            rescheduled.as_secs_f64(),
            ok + failed
        );
            assert!(ok > 20, "the load ran: {ok}");
            // health and monitor name the lost node.
            let h = s.run(&["health", "sw"]);
            assert_eq!(h.code, 1, "{h:?}");
            assert!(
                h.all().contains("node worker-2") && h.all().contains("down"),
                "{h:?}"
            );
            let m = s.run(&["--json", "monitor", "sw"]);
            assert!(m.stdout.contains("node worker-2"), "{m:?}");
            // A release waits for the node, unless told otherwise.
            let ctx = s.context("v5", &v1, "ENV MRE_DEMO_RELEASE=v5");
            s.config = s.write_config(&ctx);
            let v5 = s.tag("v5");
            let r = s.run(&["deploy", "sw", "--tag", &v5]);
            assert_eq!(r.code, 1, "{r:?}");
            assert!(
                r.stderr.contains("worker-2") && r.stderr.contains("--allow-degraded"),
                "{r:?}"
            );
            assert_eq!(s.app_images(), first, "nothing changed");
            // With --allow-degraded: released on the nodes left, warned;
            // its health is the services' (the lost node does not fail it).
            let t = std::time::Instant::now();
            let r = s.run(&["deploy", "sw", "--tag", &v5, "--allow-degraded"]);
            eprintln!(
                "figure: release with worker-2 down (--allow-degraded): {:.1} s",
                t.elapsed().as_secs_f64()
            );
            assert_eq!(r.code, 0, "{r:?}");
            assert!(r.stderr.contains("--allow-degraded"), "{r:?}");
            assert_ne!(s.app_images(), first, "the app runs v5");
            assert_eq!(s.task_nodes("mre-app"), ["worker-1", "worker-1"]);
        },
    );

    // The node comes back: its engine restarts on the same data root and
    // rejoins; the swarm is whole again.
    phase("worker-2 back", || {
        cluster.worker("worker-2").restart();
        let ready = cluster.wait_node("worker-2", "Ready", 120);
        eprintln!(
            "figure: worker-2 restarted: Ready after {:.1} s",
            ready.as_secs_f64()
        );
        let h = s.run(&["health", "sw"]);
        assert_eq!(h.code, 0, "{h:?}");
    });

    // `down`: the stack goes, the volume stays.
    phase("down", || {
        let r = s.run(&["down", "sw"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(s
            .docker(&["stack", "ls"])
            .lines()
            .all(|l| !l.starts_with(&format!("{} ", s.stack))));
        assert!(
            s.docker(&["volume", "ls", "--format", "{{.Name}}"])
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

/// Seconds from the load's start to `at` (the load started before `at`).
fn load_offset(load: &Load, at: std::time::Instant) -> f64 {
    load.started().elapsed().as_secs_f64() - at.elapsed().as_secs_f64()
}
