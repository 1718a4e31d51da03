//! Staging and Production Deployment: what version a release is. The git
//! commit of the workspace (short sha), `-dirty` when tracked files changed:
//! refused for protected environments, a warning otherwise. `--version`
//! overrides it (a CI tag, a rebuild of an older commit).

use anyhow::{Context, Result};
use camino::Utf8Path;

use crate::adapters::process::Command;

pub struct Version {
    pub name: String,
    pub dirty: bool,
}

pub fn of_checkout(dir: &Utf8Path) -> Result<Version> {
    let sha = Command::new("git", ["rev-parse", "--short=12", "HEAD"])
        .dir(dir)
        .read()
        .map_err(|e| {
            crate::config::config_error(format!(
                "cannot read the git commit of {dir} (the release's version): {e:#}. Pass --tag VERSION outside a git checkout"
            ))
        })?;
    let status = Command::new("git", ["status", "--porcelain", "--untracked-files=no"])
        .dir(dir)
        .read()
        .with_context(|| format!("checking {dir} for uncommitted changes"))?;
    let dirty = !status.trim().is_empty();
    let sha = sha.trim();
    Ok(Version {
        name: if dirty {
            format!("{sha}-dirty")
        } else {
            sha.to_string()
        },
        dirty,
    })
}

/// A version is a Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with(['.', '-'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}
