//! A Docker Swarm of real engines for the tests: a manager and two workers,
//! each an `NsEngine` (a dockerd in a network namespace of its own, with a
//! host name of its own: `manager`, `worker-1`, `worker-2`), joined into one
//! swarm. This machine's engine is never made a swarm.
//!
//! The namespaces reach each other through this machine: each one's routes
//! send 10.213.0.0/16 to its veth's host side, and this machine forwards
//! between the cluster's veths, for which its `FORWARD` chain (policy DROP
//! where Docker runs) gets one ACCEPT rule per ordered pair of veths
//! (`-i mreAh -o mreBh`, commented `mre-cluster-PID`), inserted first. That
//! carries the swarm's ports between the nodes (2377/tcp, 7946/tcp+udp and
//! the overlay's VXLAN, 4789/udp). The rules are removed on drop, or by a
//! watchdog when the test process ends without dropping the cluster; the
//! engines' own watchdogs remove them and their namespaces.
//!
//! Every node reaches the test registry with TLS and a login
//! (`release::tls_registry()`) at the same `127.0.0.1:PORT` as this machine
//! (`NsEngine::forward_loopback`), trusting its CA through
//! `/etc/docker/certs.d/` (the engines share this filesystem); workers pull
//! with the credentials `docker stack deploy --with-registry-auth` hands
//! them.
//!
//! A node can be lost (`NsEngine::lose`: its engine and containers killed)
//! and brought back (`NsEngine::restart`), and its route to the registry
//! cut (`block_registry`).
//!
//! One cluster per test binary run: `Cluster::lease(TESTS)` makes it on the
//! first call and gives it to one test at a time (tests drain and stop
//! nodes); the lease that brings the count of finished tests to `TESTS`
//! removes it. When fewer tests run, the watchdogs remove it as the process
//! ends.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::netns::NsEngine;
use super::release::{tls_registry, TlsRegistry};

/// How long the nodes may take to be `Ready` after joining.
const READY_SECS: u64 = 60;

pub struct Cluster {
    pub manager: NsEngine,
    pub workers: Vec<NsEngine>,
    pub registry: &'static TlsRegistry,
    /// The FORWARD rules added (iptables arguments after `-A`/`-D FORWARD`).
    rules: Vec<Vec<String>>,
    watchdog: Option<Child>,
}

impl Cluster {
    /// A manager and `workers` workers, joined, every node `Ready` and
    /// reaching the TLS registry. Panics saying what failed; what was made
    /// until then is removed.
    pub fn start(workers: usize) -> Cluster {
        super::netns::require();
        require_iptables();
        let tls = tls_registry();
        let port = port_of(&tls.address);
        let mut manager = NsEngine::start_named("cm", Some("manager"));
        manager.forward_loopback(port);
        let mut cluster = Cluster {
            manager,
            workers: Vec::new(),
            registry: tls,
            rules: Vec::new(),
            watchdog: None,
        };
        for i in 1..=workers {
            let mut w = NsEngine::start_named(&format!("cw{i}"), Some(&format!("worker-{i}")));
            w.forward_loopback(port);
            cluster.workers.push(w);
        }
        cluster.forward_between_nodes();
        let addr = cluster.manager.ns_addr().to_string();
        cluster
            .manager
            .docker(&["swarm", "init", "--advertise-addr", &addr]);
        let token = cluster
            .manager
            .docker(&["swarm", "join-token", "-q", "worker"]);
        for w in &cluster.workers {
            w.docker(&[
                "swarm",
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &w.ns_addr().to_string(),
                &format!("{addr}:2377"),
            ]);
        }
        cluster.wait_ready(workers + 1);
        cluster
    }

    /// The cluster of this test binary, to this test alone until the lease
    /// is dropped. `tests`: how many tests of the binary lease it.
    pub fn lease(tests: usize) -> Lease {
        static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);
        {
            let mut c = COUNT.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(
                c.0 < tests,
                "more than {tests} tests lease the cluster (it is removed when that many have \
                 finished): raise the count given to Cluster::lease"
            );
            c.0 += 1;
        }
        // From here the lease's drop counts this test finished, panic or not.
        let mut lease = Lease { guard: None, tests };
        let mut guard = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(Cluster::start(2));
        }
        lease.guard = Some(guard);
        lease
    }

    /// Every node: the manager, then the workers.
    pub fn nodes(&self) -> impl Iterator<Item = &NsEngine> {
        std::iter::once(&self.manager).chain(self.workers.iter())
    }

    /// `docker node ls` on the manager: (host name, status, availability).
    pub fn node_states(&self) -> Vec<(String, String, String)> {
        self.manager
            .docker(&[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.Status}} {{.Availability}}",
            ])
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace().map(str::to_string);
                Some((w.next()?, w.next()?, w.next()?))
            })
            .collect()
    }

    /// The worker with this host name (`worker-1`).
    pub fn worker(&mut self, name: &str) -> &mut NsEngine {
        self.workers
            .iter_mut()
            .find(|w| w.hostname() == Some(name))
            .unwrap_or_else(|| panic!("no worker {name}"))
    }

    /// Cut (or restore) a node's route to the TLS registry: a REJECT rule
    /// in the node's own namespace (its OUTPUT chain, to 127.0.0.1:PORT),
    /// nothing on this machine.
    pub fn block_registry(&self, node: &NsEngine, blocked: bool) {
        let port = port_of(&self.registry.address).to_string();
        let o = Command::new("nsenter")
            .arg(format!("--net={}", node.netns()))
            .args(["iptables", if blocked { "-I" } else { "-D" }, "OUTPUT"])
            .args([
                "-p",
                "tcp",
                "-d",
                "127.0.0.1",
                "--dport",
                &port,
                "-j",
                "REJECT",
            ])
            .output()
            .expect("running nsenter iptables");
        assert!(
            o.status.success(),
            "iptables in the namespace of {:?}: {}",
            node.hostname(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Wait until the manager sees node `name` in `state` (`Ready`,
    /// `Down`): how long it took.
    pub fn wait_node(&self, name: &str, state: &str, secs: u64) -> Duration {
        let start = Instant::now();
        loop {
            let states = self.node_states();
            if states.iter().any(|(n, s, _)| n == name && s == state) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "node {name} is not {state} after {secs} s: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_ready(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(READY_SECS);
        loop {
            let states = self.node_states();
            let ready = states.iter().filter(|(_, s, _)| s == "Ready").count();
            if ready == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the swarm's {count} nodes are not all Ready after {READY_SECS} s: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// ACCEPT forwarded packets between every two nodes' veths, first in
    /// FORWARD, and a watchdog that removes the rules when this process
    /// ends.
    fn forward_between_nodes(&mut self) {
        let veths: Vec<String> = self.nodes().map(|n| n.veth().to_string()).collect();
        let comment = format!("mre-cluster-{}", std::process::id());
        for a in &veths {
            for b in &veths {
                if a == b {
                    continue;
                }
                let rule: Vec<String> = [
                    "-i",
                    a,
                    "-o",
                    b,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "ACCEPT",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                iptables(&[&["-I", "FORWARD", "1"][..], &strs(&rule)].concat());
                self.rules.push(rule);
            }
        }
        // Names are ours (mreNh, mre-cluster-PID): nothing to quote.
        let deletes: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("iptables -D FORWARD {} 2>/dev/null", r.join(" ")))
            .collect();
        self.watchdog = Some(
            Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; {}",
                        deletes.join("; ")
                    ),
                    "sh",
                    &std::process::id().to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("starting the cluster's watchdog (sh)"),
        );
    }
}

/// PORT of `127.0.0.1:PORT`.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("a registry at 127.0.0.1:PORT, not {address}"))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A test cluster need not stop gracefully (a swarm engine takes
        // tens of seconds, its tasks' grace periods): every node loses its
        // power, then its drop removes what is left.
        for w in &mut self.workers {
            w.lose();
        }
        self.manager.lose();
        let mut left = Vec::new();
        for r in &self.rules {
            let args = [&["-D", "FORWARD"][..], &strs(r)].concat();
            let _ = Command::new("iptables").args(&args).output();
            let check = [&["-C", "FORWARD"][..], &strs(r)].concat();
            if Command::new("iptables")
                .args(&check)
                .output()
                .is_ok_and(|o| o.status.success())
            {
                left.push(r.join(" "));
            }
        }
        // The rules go first (nodes that lost their power need no route),
        // then the watchdog: a process killed before this point still has
        // its rules removed by it.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // The workers' folders are deleted side by side (the manager's
        // after, with its field); one by one while unwinding (a second
        // panic from a thread would abort).
        if std::thread::panicking() {
            self.workers.clear();
        } else {
            std::thread::scope(|sc| {
                for w in self.workers.drain(..) {
                    sc.spawn(move || drop(w));
                }
            });
        }
        if !left.is_empty() && !std::thread::panicking() {
            panic!("removing the cluster's FORWARD rules left: {left:?}");
        }
    }
}

/// The cluster, to one test; the last of `tests` out removes it.
pub struct Lease {
    guard: Option<MutexGuard<'static, Option<Cluster>>>,
    tests: usize,
}

/// (leased, finished) tests.
static COUNT: Mutex<(usize, usize)> = Mutex::new((0, 0));

impl std::ops::Deref for Lease {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.guard
            .as_ref()
            .and_then(|g| g.as_ref())
            .expect("leased")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Cluster {
        self.guard
            .as_mut()
            .and_then(|g| g.as_mut())
            .expect("leased")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut c = COUNT.lock().unwrap_or_else(PoisonError::into_inner);
        c.1 += 1;
        if c.1 == self.tests {
            if let Some(g) = self.guard.as_mut() {
                drop(g.take());
            }
        }
    }
}

/// `iptables ARGS`, panicking with its stderr.
fn iptables(args: &[&str]) {
    let o = Command::new("iptables")
        .args(args)
        .output()
        .expect("running iptables");
    assert!(
        o.status.success(),
        "iptables {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fail (never skip) without `iptables`: the cluster's nodes are routed
/// through this machine's FORWARD chain.
pub fn require_iptables() {
    let ok = Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the swarm cluster routes between its network namespaces through this machine's \
         FORWARD chain: `iptables -S FORWARD` could not run. Install it: `apt-get install iptables`"
    );
}
