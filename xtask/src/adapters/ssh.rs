//! The system's OpenSSH client, one multiplexed connection to a server: a
//! ControlMaster in its own process group (a terminal's Ctrl-C reaches
//! mre-ops, which undoes its steps over the connection, not the connection
//! itself), dying with mre-ops even after kill -9, with forwards added to
//! it on demand (`ssh -O forward`). The operator's ~/.ssh/config, agent,
//! ProxyJump and known_hosts apply; host keys are always verified.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// One server connection.
pub struct Master {
    destination: String,
    port: Option<u16>,
    config: Option<Utf8PathBuf>,
    control: Utf8PathBuf,
    child: Child,
}

impl Master {
    /// Connect to `destination` (`user@host`), the control socket in `dir`
    /// (made private). Fails with what to do when the host key is unknown
    /// or changed, or the server refuses the key. `cancelled` is asked while
    /// waiting (a signal arrived): the attempt stops at once.
    pub fn open(
        destination: &str,
        port: Option<u16>,
        config: Option<&Utf8Path>,
        dir: &Utf8Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Master> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {dir} for the SSH connection's sockets"))?;
        let control = dir.join("ssh");
        let _ = std::fs::remove_file(&control);
        let mut cmd = base(config, port);
        cmd.args(["-o", "ControlMaster=yes", "-o"])
            .arg(format!("ControlPath={control}"))
            .args([
                "-o",
                "ControlPersist=no",
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
                "-N",
                destination,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        detach_from_terminal(&mut cmd);
        let mut child = cmd.spawn().context(
            "could not start `ssh`: install the OpenSSH client (apt-get install openssh-client)",
        )?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("{}", explain(destination, port, config, status, &err));
            }
            if control.exists() && check(config, port, &control, destination) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("no SSH connection to {destination} after 30 s: is the server up, and does `ssh {destination} true` work?");
            }
            if cancelled() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("interrupted while connecting to {destination}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Master {
            destination: destination.to_string(),
            port,
            config: config.map(Utf8Path::to_path_buf),
            control,
            child,
        })
    }

    fn control_cmd(&self) -> Command {
        let mut c = base(self.config.as_deref(), self.port);
        c.arg("-S").arg(self.control.as_str());
        c
    }

    /// `-L local:remote` on the connection (`remote`: a unix socket path or
    /// `host:port` on the server; `local`: a socket path or `127.0.0.1:port`).
    pub fn forward(&self, local: &str, remote: &str) -> Result<()> {
        let out = self
            .control_cmd()
            .args(["-O", "forward", "-L"])
            .arg(format!("{local}:{remote}"))
            .arg(&self.destination)
            .output()
            .context("running `ssh -O forward`")?;
        if !out.status.success() {
            bail!(
                "forwarding {local} to {remote} on {} failed: {} (does the server's sshd allow forwarding: \
                 AllowTcpForwarding, AllowStreamLocalForwarding?)",
                self.destination,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Run `argv` on the server (through the connection), its output
    /// captured.
    pub fn run(&self, argv: &[&str]) -> Result<std::process::Output> {
        self.control_cmd()
            .arg(&self.destination)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{}` on {}", argv.join(" "), self.destination))
    }

    /// Start `sh -c SCRIPT` on the server through the connection, its stdin
    /// and stdout piped to this process: it lives as long as its stdin
    /// stays open (a lock held on the server), and its session ends when
    /// this process dies.
    pub fn spawn(&self, script: &str) -> Result<Child> {
        let mut cmd = self.control_cmd();
        // One argument for the remote shell: the script, quoted once.
        cmd.arg(&self.destination)
            .arg(format!("sh -c '{}'", script.replace('\'', "'\\''")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        detach_from_terminal(&mut cmd);
        cmd.spawn()
            .with_context(|| format!("starting a command on {} over SSH", self.destination))
    }

    /// Close the connection (and every forward on it).
    pub fn close(mut self) {
        let _ = self
            .control_cmd()
            .args(["-O", "exit"])
            .arg(&self.destination)
            .stderr(Stdio::null())
            .output();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ssh` that outlives nothing: in its own process group (the
/// terminal's Ctrl-C is for mre-ops, which still needs the connection for
/// its undo steps), and sent SIGTERM when mre-ops dies, however it ends.
fn detach_from_terminal(cmd: &mut Command) {
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// `ssh` with the options every call shares: the operator's config (or
/// `-F`), no prompts, host keys always verified.
fn base(config: Option<&Utf8Path>, port: Option<u16>) -> Command {
    let mut c = Command::new("ssh");
    if let Some(f) = config {
        c.arg("-F").arg(f.as_str());
    }
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    c.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
    ]);
    c
}

fn check(config: Option<&Utf8Path>, port: Option<u16>, control: &Utf8Path, dest: &str) -> bool {
    base(config, port)
        .arg("-S")
        .arg(control.as_str())
        .args(["-O", "check", dest])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a failed connection means, and the next thing to try.
fn explain(
    dest: &str,
    port: Option<u16>,
    config: Option<&Utf8Path>,
    status: std::process::ExitStatus,
    err: &str,
) -> String {
    let host = dest.rsplit('@').next().unwrap_or(dest);
    // known_hosts names a host on another port as [host]:port.
    let (keyscan, name) = match port {
        Some(p) => (
            format!("ssh-keyscan -p {p} {host}"),
            format!("'[{host}]:{p}'"),
        ),
        None => (format!("ssh-keyscan {host}"), host.to_string()),
    };
    let (known, where_) = match config {
        Some(c) => (
            "KNOWN_HOSTS".to_string(),
            format!(" (KNOWN_HOSTS: the UserKnownHostsFile that {c} names)"),
        ),
        None => ("~/.ssh/known_hosts".to_string(), String::new()),
    };
    let err = err.trim();
    if err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || err.contains("Host key for") && err.contains("has changed")
    {
        format!(
            "the host key of {host} has CHANGED since it was recorded: someone may be intercepting the connection, \
             or the server was reinstalled. Check the new key's fingerprint with the server's owner; only then \
             replace it: `ssh-keygen -R {name} -f {known}` and `{keyscan} >> {known}`{where_}"
        )
    } else if err.contains("Host key verification failed")
        || err.contains("No ") && err.contains("host key is known")
    {
        format!(
            "the host key of {host} is not known: check its fingerprint with the server's owner, then add it: \
             `{keyscan} >> {known}`{where_} (mre-ops never accepts an unknown key)"
        )
    } else if err.contains("Permission denied") {
        format!(
            "{dest} refused the login ({err}): is your key in the server's authorized_keys, and loaded in your agent (`ssh-add -l`)?"
        )
    } else {
        format!("cannot connect to {dest} over SSH ({status}): {err}")
    }
}
