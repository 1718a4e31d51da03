//! A second Docker engine for one test, in a network namespace of its own,
//! so that a test can make it a swarm (or anything else) without touching
//! the engine of the machine it runs on: `NsEngine::start(tag)`.
//!
//! What it makes, all named after this process (and removed on drop, or by
//! a watchdog when the process dies without dropping it):
//! - a network namespace `mre-TAG-PID-N` and a veth pair `mreNh`/`mreNn`
//!   (host side 10.213.x.y+1/30, namespace side +2/30, from a /30 of
//!   10.213.0.0/16 derived from the pid and unused on this machine); the
//!   namespace's only routes are that /30 and 10.213.0.0/16 through the host
//!   side (other namespaces made here), so nothing in it reaches past this
//!   machine;
//! - `dockerd` started in it with `nsenter --net` (not `ip netns exec`,
//!   which remounts /sys and hides the cgroup mounts), its own data root,
//!   exec root, containerd, pidfile and socket under `/tmp/mre-ns-PID-N/`
//!   (short paths: unix socket paths are limited to 108 bytes), no bridge
//!   and no iptables rules. The socket is on this machine's filesystem:
//!   `docker_host()` (`unix://...`) reaches the engine from here; what it
//!   publishes listens on `ns_addr()`.
//!
//! A machine that cannot do this (not root, no `ip`, `nsenter` or `dockerd`)
//! fails the test, saying what to install or how to run it; it never skips.
//! Nothing here is specific to one engine per test: several `NsEngine`s
//! reach each other's namespace addresses through this machine (once it
//! forwards between their veths: FORWARD rules, added by `cluster.rs`, a
//! swarm of such engines), and
//! another process can run in `netns()` with `nsenter --net=PATH`: an sshd
//! for a host reached only by SSH is `common::ssh::SshHost`.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The /16 the namespaces' /30s come from.
const NET: [u8; 2] = [10, 213];
/// How long dockerd may take to answer `docker info`.
const START_SECS: u64 = 60;

/// The removal of one engine, run by `Drop` and by the watchdog: stop
/// dockerd (SIGTERM via its pidfile, then SIGKILL after 30 s), then kill
/// whatever process still runs from its folder (its containerd and shims,
/// when dockerd was killed), then unmount lazily what is left mounted under
/// the folder (the data root's bind mount, overlay and netns mounts), then
/// delete the veth, the namespace and the folder. Arguments: $1 a pid to
/// outlive first (the test process, for the watchdog; empty from `Drop`),
/// $2 the folder, $3 the veth's host side, $4 the namespace.
const CLEANUP: &str = r#"
if [ -n "$1" ]; then
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
fi
d="$2"
p=$(cat "$d/p" 2>/dev/null)
if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    i=0
    while kill -0 "$p" 2>/dev/null && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
    kill -KILL "$p" 2>/dev/null
fi
for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" = "$$" ] && continue
    # (A process may end between the glob and the read: no message.)
    if { tr '\0' ' ' < "$proc/cmdline"; } 2>/dev/null | grep -q -F "$d/"; then
        kill -KILL "$pid" 2>/dev/null
    fi
done
awk -v d="$d/" 'index($2, d) == 1 || $2 == substr(d, 1, length(d) - 1) { print $2 }' /proc/self/mounts \
    | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
ip link del "$3" 2>/dev/null
ip netns del "$4" 2>/dev/null
rm -rf "$d"
"#;

/// A Docker engine in a network namespace made by this process.
pub struct NsEngine {
    netns: String,
    veth: String,
    host: Ipv4Addr,
    ns: Ipv4Addr,
    dir: PathBuf,
    dockerd: Option<std::process::Child>,
    watchdog: Option<std::process::Child>,
    forwards: Vec<Forward>,
    /// More dockerd arguments (`start_with`).
    extra: Vec<String>,
    /// The host name dockerd sees (a UTS namespace of its own), which a
    /// swarm shows as the node's name; None: this machine's.
    hostname: Option<String>,
}

impl NsEngine {
    /// Make the namespace and its veth, start dockerd in it and wait until
    /// it answers. Panics with what went wrong (the end of dockerd's log
    /// when it does not answer); what was made until then is removed.
    pub fn start(tag: &str) -> NsEngine {
        NsEngine::start_full(tag, None, &|_| Vec::new())
    }

    /// `start`, with more dockerd arguments made from the namespace's
    /// address (a TCP listener with TLS: `--tlsverify`, a certificate for
    /// that address, `-H tcp://ADDR:2376`).
    pub fn start_with(tag: &str, extra: &dyn Fn(Ipv4Addr) -> Vec<String>) -> NsEngine {
        NsEngine::start_full(tag, None, extra)
    }

    /// `start`, with dockerd in a UTS namespace of its own whose host name
    /// is `hostname`: the name a swarm gives the node (engines sharing this
    /// machine's host name would be indistinguishable nodes).
    pub fn start_named(tag: &str, hostname: Option<&str>) -> NsEngine {
        NsEngine::start_full(tag, hostname, &|_| Vec::new())
    }

    fn start_full(
        tag: &str,
        hostname: Option<&str>,
        extra: &dyn Fn(Ipv4Addr) -> Vec<String>,
    ) -> NsEngine {
        require();
        let pid = std::process::id();
        let (index, veth) = claim_subnet();
        let net = index * 4;
        let (hi, lo) = ((net >> 8) as u8, (net & 0xff) as u8);
        let mut e = NsEngine {
            netns: format!("mre-{tag}-{pid}-{index}"),
            veth,
            host: Ipv4Addr::new(NET[0], NET[1], hi, lo + 1),
            ns: Ipv4Addr::new(NET[0], NET[1], hi, lo + 2),
            dir: PathBuf::from(format!("/tmp/mre-ns-{pid}-{index}")),
            dockerd: None,
            watchdog: None,
            forwards: Vec::new(),
            extra: Vec::new(),
            hostname: hostname.map(str::to_string),
        };
        // From here on, a panic drops `e`, which removes what was made.
        e.watchdog = Some(
            Command::new("sh")
                .args(["-c", CLEANUP, "sh", &pid.to_string()])
                .args(e.cleanup_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group: a Ctrl-C of the test run does not
                // stop it before it has cleaned up.
                .process_group(0)
                .spawn()
                .expect("starting the namespace's watchdog (sh)"),
        );
        let peer = format!("{}n", &e.veth[..e.veth.len() - 1]);
        let (host, ns) = (format!("{}/30", e.host), format!("{}/30", e.ns));
        let range = format!("{}.{}.0.0/16", NET[0], NET[1]);
        ip(&["netns", "add", &e.netns]);
        ip(&["link", "set", &peer, "netns", &e.netns]);
        ip(&["addr", "add", &host, "dev", &e.veth]);
        ip(&["link", "set", &e.veth, "up"]);
        ip(&["-n", &e.netns, "addr", "add", &ns, "dev", &peer]);
        ip(&["-n", &e.netns, "link", "set", &peer, "up"]);
        ip(&["-n", &e.netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &e.netns,
            "route",
            "add",
            &range,
            "via",
            &e.host.to_string(),
        ]);
        e.extra = extra(e.ns);
        e.start_dockerd();
        e
    }

    /// This machine's end of the veth (what the namespace reaches us at).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host
    }

    /// The namespace's address: the engine's published ports listen here,
    /// and it is the address to advertise (`swarm init --advertise-addr`).
    pub fn ns_addr(&self) -> Ipv4Addr {
        self.ns
    }

    /// This machine's end of the veth pair (`mreNh`): what a FORWARD rule
    /// between namespaces names.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// The engine's host name (its swarm node's name), when it has one of
    /// its own.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// `unix:///tmp/mre-ns-.../s`: for DOCKER_HOST, `docker -H` and
    /// `docker_host` in ops.toml.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.join("s").display())
    }

    /// `/run/netns/NAME`, for `nsenter --net=PATH COMMAND`.
    pub fn netns(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// This engine's folder (`/tmp/mre-ns-PID-N`), removed with it. A
    /// fixture that runs a process in `netns()` keeps its files in a folder
    /// of its own in here (`common::ssh`): a command line naming this folder
    /// is what the cleanup kills, so the watchdog stops that process too.
    pub fn folder(&self) -> &Path {
        &self.dir
    }

    /// `docker ARGS` against this engine: stdout, trimmed; panics with
    /// stderr when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let o = self.cli().args(args).output().expect("running docker");
        assert!(
            o.status.success(),
            "docker {args:?} (on the engine in namespace {}) failed: {}",
            self.netns,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Make `127.0.0.1:PORT` inside the namespace lead to `127.0.0.1:PORT`
    /// on this machine, for as long as this engine lives: a loopback-only
    /// service here (a registry) is then reachable from the engine under
    /// the same address as from this machine's engine, and Docker treats
    /// 127.0.0.0/8 registries as insecure (plain HTTP) on both without
    /// any daemon setting. The listener is made by a thread that entered
    /// the namespace (setns(2) moves only the calling thread); connections
    /// out are made from this machine's namespace.
    pub fn forward_loopback(&mut self, port: u16) {
        let ns = std::fs::File::open(self.netns()).expect("opening the namespace");
        let listener = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a valid fd; the thread
            // ends right after making the listener.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "setns into the namespace: {}",
                std::io::Error::last_os_error()
            );
            TcpListener::bind(("127.0.0.1", port))
        })
        .join()
        .expect("the thread entering the namespace")
        .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{port} in the namespace: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        std::thread::spawn(move || relay(inside, port));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.forwards.push(Forward {
            stop,
            handle: Some(handle),
        });
    }

    /// The node's power goes: dockerd, its containerd and shims, and every
    /// container they ran are killed (SIGKILL) at once, with no chance to
    /// tell anyone. The namespace and its veth stay (the address answers
    /// nothing); `restart` starts dockerd again on the same data root.
    pub fn lose(&mut self) {
        if self.dockerd.is_none() {
            return;
        }
        // (No panic here: also called from a drop.)
        let read = |args: &[&str]| {
            self.cli()
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let mut pids: Vec<i32> = Vec::new();
        for id in read(&["ps", "-q"]).split_whitespace() {
            if let Ok(pid) = read(&["inspect", "--format", "{{.State.Pid}}", id]).parse() {
                pids.push(pid);
            }
        }
        let cgroups: Vec<String> = pids
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
            .filter_map(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            })
            .collect();
        if let Some(mut d) = self.dockerd.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // containerd and the shims: every process naming this folder.
        let kill = format!(
            r#"for proc in /proc/[0-9]*; do pid=${{proc#/proc/}}; [ "$pid" = "$$" ] && continue;
               if {{ tr '\0' ' ' < "$proc/cmdline"; }} 2>/dev/null | grep -q -F "{}/"; then kill -KILL "$pid" 2>/dev/null; fi; done"#,
            self.dir.display()
        );
        let _ = Command::new("sh").args(["-c", &kill]).status();
        for p in &pids {
            // SAFETY: SIGKILL to the init process of a container this
            // fixture's engine ran (its pid namespace goes with it).
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(300));
        // What the engine would have removed: the containers' cgroups.
        for c in cgroups {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{c}"));
        }
    }

    /// Start dockerd again after `lose` (same data root, socket and host
    /// name): a swarm node rejoins by itself.
    pub fn restart(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd still runs: `lose` first");
        self.start_dockerd();
    }

    /// `docker` aimed at this engine (whatever DOCKER_HOST or
    /// DOCKER_CONTEXT this process has).
    fn cli(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.docker_host())
            .env_remove("DOCKER_CONTEXT");
        c
    }

    fn cleanup_args(&self) -> [String; 3] {
        [
            self.dir.display().to_string(),
            self.veth.clone(),
            self.netns.clone(),
        ]
    }

    fn start_dockerd(&mut self) {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("x")).unwrap();
        // An empty configuration: nothing of /etc/docker/daemon.json (this
        // machine's engine's settings) applies.
        std::fs::write(d.join("c.json"), "{}\n").unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let path = |p: &str| d.join(p).display().to_string();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns()));
        if let Some(name) = &self.hostname {
            // Its own UTS namespace: the host name is the node's, not this
            // machine's (unshare and sh exec: dockerd keeps the child's pid).
            cmd.args(["unshare", "--uts", "sh", "-c"])
                .arg("hostname \"$1\" && shift && exec \"$@\"")
                .args(["sh", name]);
        }
        let child = cmd
            .arg("dockerd")
            .args(["--data-root", &path("d")])
            .args(["--exec-root", &path("x")])
            .args(["--pidfile", &path("p")])
            .args(["-H", &self.docker_host()])
            .args(["--config-file", &path("c.json")])
            .args(["--bridge", "none", "--iptables=false"])
            .args(&self.extra)
            // When a system containerd is shared, this engine's containers
            // stay apart from the other engine's.
            .args(["--containerd-namespace", &self.netns])
            .args([
                "--containerd-plugins-namespace",
                &format!("{}-p", self.netns),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting nsenter ... dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(START_SECS);
        let mut last;
        loop {
            if let Some(st) = self.dockerd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "dockerd in namespace {} exited ({st}) before answering; the end of its log:\n{}",
                    self.netns,
                    self.log_tail()
                );
            }
            let o = self
                .cli()
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output()
                .expect("running docker");
            if o.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if Instant::now() > deadline {
                panic!(
                    "dockerd in namespace {} did not answer `docker -H {} info` within {START_SECS} s \
                     (last: {last}); the end of its log:\n{}",
                    self.netns,
                    self.docker_host(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        let _ =
            std::fs::File::open(self.dir.join("log")).and_then(|mut f| f.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// What of this engine is still there (for the check after cleanup).
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if Path::new(&self.netns()).exists() {
            left.push(format!("namespace {}", self.netns));
        }
        if Path::new("/sys/class/net").join(&self.veth).exists() {
            left.push(format!("interface {}", self.veth));
        }
        if self.dir.exists() {
            left.push(format!("folder {}", self.dir.display()));
        }
        let prefix = format!("{}/", self.dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&prefix) {
                left.push(format!("mount {m}"));
            }
        }
        left
    }
}

impl Drop for NsEngine {
    fn drop(&mut self) {
        for f in &mut self.forwards {
            f.stop.store(true, Ordering::SeqCst);
            if let Some(h) = f.handle.take() {
                let _ = h.join();
            }
        }
        // The watchdog would do the same when this process ends: do it now.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // dockerd is this process's child: stop and reap it here (a zombie
        // would still answer the script's `kill -0`).
        if let Some(mut d) = self.dockerd.take() {
            // nsenter execs dockerd: the child's pid is the pidfile's.
            if d.try_wait().ok().flatten().is_none() {
                // SAFETY: a signal to the engine this fixture started (not
                // reaped yet, so the pid is still its).
                unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        let st = Command::new("sh")
            .args(["-c", CLEANUP, "sh", ""])
            .args(self.cleanup_args())
            .status();
        let left = self.leftovers();
        if (st.is_err() || !left.is_empty()) && !std::thread::panicking() {
            panic!(
                "removing the engine in namespace {} ({st:?}) left: {}",
                self.netns,
                left.join(", ")
            );
        }
    }
}

struct Forward {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Copy both ways between a connection made in the namespace and a new one
/// to 127.0.0.1:port here.
fn relay(inside: TcpStream, port: u16) {
    let _ = inside.set_nonblocking(false);
    let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let (mut a, mut b) = (inside.try_clone().unwrap(), outside.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (outside, inside);
    let _ = std::io::copy(&mut a, &mut b);
    let _ = b.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Fail (never skip) when this machine cannot make a namespaced engine:
/// what to install, or to run as root.
pub fn require() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test starts a second Docker engine in a network namespace of its own \
         (so that it never changes this machine's engine), which needs root: \
         run it as root (`sudo -E cargo test --test swarm`)"
    );
    for (program, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("nsenter", &["--version"][..], "util-linux"),
        ("dockerd", &["--version"][..], "docker.io"),
    ] {
        let ok = Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "this test starts a second Docker engine in a network namespace, with `ip`, `nsenter` \
             and `dockerd`: `{program}` could not run. Install it: `apt-get install {package}`"
        );
    }
}

/// `ip ARGS`, panicking with its stderr.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        o.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A /30 of 10.213.0.0/16 (its index, 0..16384) unused on this machine,
/// claimed by creating its veth pair `mreNh`/`mreNn` (an existing name
/// means another process has it: the next one is tried). Starts at an
/// index derived from the pid.
fn claim_subnet() -> (u32, String) {
    let used = used_networks();
    let start = std::process::id() % 16384;
    for k in 0..16384u32 {
        let index = (start + k * 7) % 16384;
        let net = u32::from(Ipv4Addr::new(NET[0], NET[1], 0, 0)) | (index * 4);
        if used.iter().any(|&(n, len)| overlaps((net, 30), (n, len))) {
            continue;
        }
        let veth = format!("mre{index}h");
        let o = Command::new("ip")
            .args(["link", "add", &veth, "type", "veth", "peer", "name"])
            .arg(format!("mre{index}n"))
            .output()
            .expect("running ip (apt-get install iproute2)");
        if o.status.success() {
            return (index, veth);
        }
        let why = String::from_utf8_lossy(&o.stderr);
        assert!(
            why.contains("exists"),
            "ip link add {veth} type veth failed: {why}"
        );
    }
    panic!(
        "no unused /30 left in 10.213.0.0/16 for a test namespace (`ip -4 addr`, `ip -4 route`)"
    );
}

/// The IPv4 networks this machine has addresses in or routes to.
fn used_networks() -> Vec<(u32, u8)> {
    let mut nets = Vec::new();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"][..],
    ] {
        let o = Command::new("ip")
            .args(args)
            .output()
            .expect("running ip (apt-get install iproute2)");
        for word in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let (addr, len) = word.split_once('/').unwrap_or((word, "32"));
            if let (Ok(a), Ok(l)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                if l <= 32 && !a.is_loopback() && !a.is_unspecified() {
                    nets.push((u32::from(a), l));
                }
            }
        }
    }
    nets
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}
