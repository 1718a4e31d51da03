//! What a fresh Debian machine lacks, found and, with the operator's consent
//! (`--yes`, as root), installed or started: programs on PATH, the Docker
//! engine, Debian packages. Used by `deploy development` (the engine, and
//! debootstrap for the demo's pre-build step) and `cargo xtask test`.

use std::time::Duration;

use anyhow::{bail, Result};

use super::wait::{self, Poll, Waited};
use crate::adapters::output::Output;
use crate::adapters::process::Command;

/// Set for a deploy's child commands when the operator consented (`--yes`)
/// to installing what is missing (`demo prepare` installs debootstrap).
pub const CONSENT_VAR: &str = "MRE_OPS_INSTALL";

/// The operator consented in this process or a parent deploy.
pub fn consented(yes: bool) -> bool {
    yes || std::env::var(CONSENT_VAR).is_ok_and(|v| v == "1")
}

/// `program` on PATH (or in /usr/sbin, /sbin, where Debian puts tools for
/// root).
pub fn on_path(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(program).is_file())
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `docker info` answers (the engine of DOCKER_HOST, else the local one).
pub fn engine_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `apt-get update` then `apt-get install` of `packages`, non-interactive.
pub fn apt_install(out: &Output, packages: &[&str]) -> Result<()> {
    let env = [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())];
    Command::new("apt-get", ["update", "-qq"])
        .envs(&env)
        .run(out)?;
    let args = ["install", "-y", "-qq", "--no-install-recommends"]
        .into_iter()
        .chain(packages.iter().copied());
    Command::new("apt-get", args).envs(&env).run(out)
}

/// Refuse, naming what to do, unless the operator consented and is root.
pub fn require_consent(what: &str, yes: bool, command: &str) -> Result<()> {
    if !consented(yes) {
        bail!("{what}: run `{command} --yes` as root to let mre-ops do it, or do it yourself (README.md, Prerequisites)");
    }
    if !is_root() {
        bail!("{what}, and doing it needs root: run `sudo {command} --yes`, or do it yourself (README.md, Prerequisites)");
    }
    Ok(())
}

/// Start the local Docker engine: `service docker start`, else `dockerd` in
/// the background (its log in /tmp/dockerd.log); then wait up to 60 s for
/// `docker info`.
pub fn start_engine(out: &Output) -> Result<()> {
    out.line("Starting the Docker engine");
    let service = std::process::Command::new("service")
        .args(["docker", "start"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !service {
        let log = std::fs::File::create("/tmp/dockerd.log")?;
        std::process::Command::new("dockerd")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("could not start dockerd (apt-get install docker.io): {e}")
            })?;
    }
    let waited = wait::until(
        out,
        "the Docker engine to answer `docker info`",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            Ok(if engine_answers() {
                Poll::Ready(())
            } else {
                Poll::Pending(String::new())
            })
        },
    )?;
    if let Waited::TimedOut(_) = waited {
        bail!("the Docker engine did not start within 60 s: see /tmp/dockerd.log (or `journalctl -u docker`)");
    }
    Ok(())
}
