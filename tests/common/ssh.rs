//! An SSH server in an `NsEngine`'s network namespace, the way a test
//! reaches a "remote" server: `SshHost::start(&engine)`.
//!
//! What it makes, in a folder of its own inside the engine's folder
//! (`/tmp/mre-ns-PID-N/ssh/`, mode 0700):
//! - an ed25519 host key, an ed25519 client key (no passphrase) and
//!   `authorized_keys` holding the client's public key;
//! - `sshd_config`: listens on the namespace's address, port 22 only; public
//!   keys only (no password, no keyboard-interactive, root by key); TCP and
//!   unix-socket forwarding allowed (mre-ops forwards the Docker socket and
//!   the database port); no PAM, no X11; its pidfile in the folder (never
//!   this machine's `/run/sshd.pid`);
//! - `ssh_config`, for `ssh -F`: `Host ALIAS NS_ADDR` with the client key,
//!   `User root`, batch mode and the host's key pinned in a `known_hosts`
//!   of its own (strict checking, no global file), so that both
//!   `ssh -F CONFIG ALIAS` and `ssh -F CONFIG root@NS_ADDR` work and nothing
//!   of `~/.ssh` or `/etc/ssh/ssh_config` applies.
//!
//! sshd runs as `nsenter --net=NETNS unshare --pid --fork --kill-child
//! /usr/sbin/sshd -D -e -f CONFIG`: in the namespace (so only what is in
//! it, or this machine through the veth, reaches it), on this machine's
//! filesystem (a session sees the engine's socket at `engine.docker_host()`),
//! and as the first process of a PID namespace of its own, so that stopping
//! it ends every session and command it started (the kernel kills the rest
//! of a PID namespace when its first process ends). Its log is `sshd.log` in
//! the folder. It is stopped on drop; and since its command line names the
//! engine's folder, the engine's drop and watchdog stop it too, when this
//! value was not dropped first (declare it after the engine).
//!
//! A machine without `/usr/sbin/sshd`, `ssh` or `ssh-keygen` fails the test,
//! naming the packages; it never skips.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::NsEngine;

const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to accept `ssh ... true`.
const START_SECS: u64 = 20;
/// How long sshd has to end after SIGTERM before it is killed.
const STOP_SECS: u64 = 5;

/// An sshd in an engine's network namespace, and a client configuration
/// that reaches it.
pub struct SshHost {
    dir: PathBuf,
    netns: String,
    addr: Ipv4Addr,
    alias: String,
    /// `unshare`, whose only child is sshd.
    sshd: Option<std::process::Child>,
    /// sshd's PID namespace (`pid:[INODE]`), for the check that nothing of
    /// it is left.
    pidns: Option<String>,
}

impl SshHost {
    /// Make the keys and configurations, start sshd in the engine's
    /// namespace and wait until `ssh ALIAS true` works. Panics with sshd's
    /// log when it does not; what was made until then is removed.
    pub fn start(engine: &NsEngine) -> SshHost {
        require();
        let dir = engine.folder().join("ssh");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "making {} (one SshHost per engine: sshd listens on its port 22): {e}",
                    dir.display()
                )
            });
        let netns = engine.netns();
        let alias = Path::new(&netns)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // From here on, a panic drops `h`, which removes the folder.
        let mut h = SshHost {
            dir,
            netns,
            addr: engine.ns_addr(),
            alias,
            sshd: None,
            pidns: None,
        };
        h.keygen("client_key");
        std::fs::copy(h.path("client_key.pub"), h.path("authorized_keys")).unwrap();
        h.keygen("host_key");
        h.pin_host_key(&h.path("known_hosts"));
        h.write_sshd_config();
        h.write_client_config();
        h.start_sshd();
        h
    }

    /// `root@NS_ADDR`: what a test puts in `ssh = "..."`.
    pub fn target(&self) -> String {
        format!("root@{}", self.addr)
    }

    /// The `Host` name in `config_path()` (the namespace's name).
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The client configuration, for `ssh -F` (`ssh_config = "..."`).
    pub fn config_path(&self) -> PathBuf {
        self.path("ssh_config")
    }

    /// The `known_hosts` the client configuration pins the host key in
    /// (left as it is by `rotate_host_key`).
    pub fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }

    /// The client's private key (authorized for root).
    pub fn client_key(&self) -> PathBuf {
        self.path("client_key")
    }

    /// `ssh -F CONFIG` (add the options, then `alias()` and a command).
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(self.config_path()).stdin(Stdio::null());
        c
    }

    /// Give the server a new host key and restart it, leaving
    /// `known_hosts()` as it was: the client then refuses the server
    /// ("REMOTE HOST IDENTIFICATION HAS CHANGED"). Returns once the
    /// restarted sshd serves the new key. Ends the sessions of the old one.
    pub fn rotate_host_key(&mut self) {
        self.stop_sshd();
        for f in ["host_key", "host_key.pub"] {
            std::fs::remove_file(self.path(f)).unwrap();
        }
        self.keygen("host_key");
        self.start_sshd();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ssh-keygen -t ed25519` without a passphrase, into the folder.
    fn keygen(&self, name: &str) {
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("mre-ops-test-{name}"))
            .arg("-f")
            .arg(self.path(name))
            .stdin(Stdio::null())
            .output()
            .expect("running ssh-keygen");
        assert!(
            o.status.success(),
            "ssh-keygen -f {} failed: {}",
            self.path(name).display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Write a known_hosts holding the server's current host key under the
    /// namespace's address (what ssh looks up: HostName, port 22).
    fn pin_host_key(&self, to: &Path) {
        let public = std::fs::read_to_string(self.path("host_key.pub")).unwrap();
        let mut words = public.split_whitespace();
        let (kind, key) = (words.next().unwrap(), words.next().unwrap());
        std::fs::write(to, format!("{} {kind} {key}\n", self.addr)).unwrap();
    }

    fn write_sshd_config(&self) {
        let p = |name: &str| self.path(name).display().to_string();
        let text = format!(
            "# A test's sshd (tests/common/ssh.rs), in network namespace {netns}.\n\
             ListenAddress {addr}\n\
             Port 22\n\
             HostKey {host_key}\n\
             PidFile {pidfile}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             UsePAM no\n\
             AllowTcpForwarding yes\n\
             AllowStreamLocalForwarding yes\n\
             X11Forwarding no\n\
             PrintMotd no\n\
             UseDNS no\n",
            netns = self.netns,
            addr = self.addr,
            host_key = p("host_key"),
            pidfile = p("sshd.pid"),
            authorized_keys = p("authorized_keys"),
        );
        std::fs::write(self.path("sshd_config"), text).unwrap();
    }

    fn write_client_config(&self) {
        let p = |name: &str| self.path(name).display().to_string();
        let text = format!(
            "# The client side of a test's sshd (tests/common/ssh.rs): `ssh -F THIS {alias}`.\n\
             Host {alias} {addr}\n\
             \tHostName {addr}\n\
             \tPort 22\n\
             \tUser root\n\
             \tIdentityFile {key}\n\
             \tIdentitiesOnly yes\n\
             \tIdentityAgent none\n\
             \tUserKnownHostsFile {known_hosts}\n\
             \tGlobalKnownHostsFile /dev/null\n\
             \tStrictHostKeyChecking yes\n\
             \tUpdateHostKeys no\n\
             \tBatchMode yes\n\
             \tConnectTimeout 10\n",
            alias = self.alias,
            addr = self.addr,
            key = p("client_key"),
            known_hosts = p("known_hosts"),
        );
        std::fs::write(self.path("ssh_config"), text).unwrap();
    }

    fn start_sshd(&mut self) {
        // sshd's privilege separation directory (its chroot before
        // authentication): Debian's package makes it at boot only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create("/run/sshd")
            .expect("making /run/sshd (sshd's privilege separation directory)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("sshd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .args(["unshare", "--pid", "--fork", "--kill-child"])
            .args([SSHD, "-D", "-e", "-f"])
            .arg(self.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // As the engine's dockerd: a Ctrl-C of the test run leaves it
            // to the drop or the engine's watchdog.
            .process_group(0)
            .spawn()
            .expect("starting nsenter ... unshare ... sshd");
        self.sshd = Some(child);
        // Readiness: a command runs over SSH, checked against the host key
        // the server has now (not `known_hosts()`, stale after a rotation).
        let current = self.path("current_known_hosts");
        self.pin_host_key(&current);
        let deadline = Instant::now() + Duration::from_secs(START_SECS);
        loop {
            if let Some(st) = self.sshd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sshd in namespace {} exited ({st}) before accepting a connection; its log:\n{}",
                    self.netns,
                    self.log_tail()
                );
            }
            self.note_pidns();
            let o = self
                .ssh()
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", current.display()))
                .args(["-o", "ConnectTimeout=2", &self.alias, "true"])
                .output()
                .expect("running ssh");
            if o.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let log = self.log_tail();
                let hint = if log.contains("locked") {
                    "\n(root's account is locked, `!` in /etc/shadow: sshd without PAM \
                     refuses it even with a key; `usermod -p '*' root` makes it \
                     key-only instead of locked)"
                } else {
                    ""
                };
                panic!(
                    "`ssh -F {} {} true` did not succeed within {START_SECS} s (last: {}); \
                     sshd's log:\n{log}{hint}",
                    self.config_path().display(),
                    self.alias,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // (It may have started after the loop's last look.)
        self.note_pidns();
        assert!(
            self.pidns.is_some(),
            "sshd (the child of unshare) answers but was not found in /proc"
        );
    }

    /// Record sshd's PID namespace, once unshare has started it.
    fn note_pidns(&mut self) {
        if self.pidns.is_some() {
            return;
        }
        let unshare = self.sshd.as_ref().unwrap().id() as i32;
        self.pidns = child_of(unshare)
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok())
            .map(|l| l.display().to_string());
    }

    /// SIGTERM to sshd, SIGKILL after STOP_SECS; then wait until nothing of
    /// its PID namespace is left (its sessions and their commands).
    fn stop_sshd(&mut self) {
        let Some(mut unshare) = self.sshd.take() else {
            return;
        };
        if unshare.try_wait().ok().flatten().is_none() {
            if let Some(pid) = child_of(unshare.id() as i32) {
                // SAFETY: a signal to the child of the unshare this fixture
                // started and has not reaped (so its pid is still its).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            // unshare ends when sshd does.
            let deadline = Instant::now() + Duration::from_secs(STOP_SECS);
            while unshare.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // (--kill-child: sshd gets SIGKILL when unshare dies.)
            let _ = unshare.kill();
        }
        let _ = unshare.wait();
        if let Some(ns) = self.pidns.take() {
            let deadline = Instant::now() + Duration::from_secs(STOP_SECS);
            while !in_pid_namespace(&ns).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let left = in_pid_namespace(&ns);
            if !left.is_empty() && !std::thread::panicking() {
                panic!(
                    "processes of the stopped sshd (namespace {}) are left: {left:?}",
                    self.netns
                );
            }
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.path("sshd.log"))
            .and_then(|mut f| f.read_to_string(&mut text));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.stop_sshd();
        let removed = match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        if let Err(e) = removed {
            if !std::thread::panicking() {
                panic!("removing {}: {e}", self.dir.display());
            }
        }
    }
}

/// Every process: (pid, parent pid), from /proc/PID/stat.
fn processes() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // (A process may end between the listing and the read.)
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// sshd's pid in this machine's PID namespace: the child of `unshare`
/// (its pidfile holds 1, its pid in its own namespace).
fn child_of(unshare: i32) -> Option<i32> {
    processes()
        .into_iter()
        .find(|&(_, ppid)| ppid == unshare)
        .map(|(pid, _)| pid)
}

/// The pids of the processes in PID namespace `ns` (`pid:[INODE]`).
fn in_pid_namespace(ns: &str) -> Vec<i32> {
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|l| l.display().to_string() == ns)
        })
        .collect()
}

/// Fail (never skip) when this machine has no OpenSSH server or client:
/// what to install.
pub fn require() {
    let on_path = |program: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|d| {
                std::fs::metadata(d.join(program))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    };
    for (what, present, package) in [
        (SSHD, Path::new(SSHD).is_file(), "openssh-server"),
        ("ssh", on_path("ssh"), "openssh-client"),
        ("ssh-keygen", on_path("ssh-keygen"), "openssh-client"),
    ] {
        assert!(
            present,
            "this test reaches a server over SSH, an sshd it starts in a network namespace \
             (never this machine's own sshd): `{what}` is missing. Install it: \
             `apt-get install openssh-server openssh-client` (package {package}; on a machine \
             with systemd this also enables this machine's sshd: `systemctl disable --now ssh` \
             if you do not want it)"
        );
    }
}
