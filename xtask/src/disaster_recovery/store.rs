//! Disaster Recovery Procedures, Backup Strategy: the backups of an
//! environment (listing, finding one by name or `latest`) and retention
//! ("Retention: 30 days").

use std::time::Duration;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Serialize;

use crate::adapters::clock::Utc;
use crate::adapters::output::{Output, Tone};
use crate::config::config_error;

// Siblings: the module's parts share their items (pub(super)).
#[allow(unused_imports)]
use super::*;

impl<'a> Target<'a> {
    pub(super) fn backups(&self) -> Result<Vec<Backup>> {
        let mut list = Vec::new();
        let entries = match std::fs::read_dir(&self.folder) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.folder)),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.folder))?;
            let Ok(path) = Utf8PathBuf::from_path_buf(entry.path()) else {
                continue;
            };
            if path.extension() == Some("dump") && !path.file_name().unwrap_or("").starts_with('.')
            {
                list.push(load(&path)?);
            }
        }
        // A file without a manifest is dated by its name.
        let when = |b: &Backup| {
            b.manifest
                .as_ref()
                .map(|m| m.started_unix)
                .unwrap_or_else(|| {
                    b.name
                        .rsplit('-')
                        .find_map(Utc::parse_compact)
                        .map(|u| u.unix())
                        .unwrap_or(0)
                })
        };
        list.sort_by(|a, b| {
            let (ta, tb) = (when(a), when(b));
            tb.cmp(&ta).then(b.name.cmp(&a.name))
        });
        Ok(list)
    }

    /// `latest`, a name from `backup list`, or a path.
    pub(super) fn resolve(&self, arg: &str) -> Result<Backup> {
        if arg == "latest" {
            // The newest backup worth going back to: not one whose last
            // verification failed, and not the safety copy an earlier
            // restore took of the state it was escaping.
            return self
                .backups()?
                .into_iter()
                .find(|b| {
                    b.manifest.as_ref().is_some_and(|m| {
                        m.verified() != Some(false) && !m.reason.starts_with("safety before restoring")
                    })
                })
                .ok_or_else(|| {
                    config_error(format!(
                        "there is no usable backup of `{}` in {} (failed ones and restore safety copies are \
                         skipped by `latest`; `cargo xtask backup list {}` shows them all, and takes a name): \
                         create one with `cargo xtask backup create {}`",
                        self.env.name, self.folder, self.env.name, self.env.name
                    ))
                });
        }
        let path = if arg.contains('/') {
            Utf8PathBuf::from(arg)
        } else {
            self.folder
                .join(format!("{}.dump", arg.trim_end_matches(".dump")))
        };
        if !path.is_file() {
            return Err(config_error(format!(
                "no backup `{arg}` ({path}): `cargo xtask backup list {}` shows the backups, or pass `latest` or a path",
                self.env.name
            )));
        }
        load(&path)
    }

    // -- creating
}

pub(super) fn list(t: &Target, out: &Output) -> Result<()> {
    let backups = t.backups()?;
    let now = now_unix();
    let rows: Vec<serde_json::Value> = backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref();
            serde_json::json!({
                "name": b.name,
                "path": b.path.as_str(),
                "started_at": m.map(|m| m.started_at.clone()),
                "age_secs": m.map(|m| now - m.started_unix),
                "size": m.map(|m| m.size),
                "verified": m.and_then(|m| m.verified()),
                "reason": m.map(|m| m.reason.clone()),
                "manifest": m.is_some(),
            })
        })
        .collect();
    if out.json {
        out.json_doc(&serde_json::json!({"environment": t.env.name, "folder": t.folder.as_str(), "backups": rows}));
        return Ok(());
    }
    if backups.is_empty() {
        out.line(&format!(
            "No backups of `{}` in {}. Create one: cargo xtask backup create {}",
            t.env.name, t.folder, t.env.name
        ));
        return Ok(());
    }
    out.line(&format!(
        "Backups of `{}` in {} (newest first):",
        t.env.name, t.folder
    ));
    out.line(&format!(
        "  {:<34} {:>6} {:>10}  {:<10} reason",
        "name", "age", "size", "verified"
    ));
    for b in &backups {
        match &b.manifest {
            Some(m) => {
                let verified = match m.verified() {
                    Some(true) => out.paint(Tone::Good, "yes"),
                    Some(false) => out.paint(Tone::Bad, "FAILED"),
                    None => out.paint(Tone::Warn, "no"),
                };
                out.line(&format!(
                    "  {:<34} {:>6} {:>10}  {:<10} {}",
                    b.name,
                    human_age(now - m.started_unix),
                    human_size(m.size),
                    verified,
                    m.reason
                ));
            }
            None => out.line(&format!(
                "  {:<34} {:>6} {:>10}  {:<10} no manifest: not a usable backup",
                b.name, "?", "?", "-"
            )),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Retention.

/// What retention decides for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    pub why: String,
}

/// The policy, on backups given newest first as (name, age in seconds,
/// verified): keep the `keep_min` newest, keep those younger than
/// `keep_days`, always keep the newest verified one; the rest go.
pub fn retention(
    backups: &[(String, i64, bool)],
    keep_days: u64,
    keep_min: usize,
) -> Vec<Decision> {
    let newest_verified = backups.iter().position(|b| b.2);
    backups
        .iter()
        .enumerate()
        .map(|(i, (name, age, _))| {
            let (keep, why) = if Some(i) == newest_verified {
                (true, "the newest verified backup".to_string())
            } else if i < keep_min {
                (true, format!("one of the {keep_min} newest"))
            } else if *age < keep_days as i64 * 86400 {
                (true, format!("younger than {keep_days} days"))
            } else {
                (
                    false,
                    format!("older than {keep_days} days ({})", human_age(*age)),
                )
            };
            Decision {
                name: name.clone(),
                keep,
                why,
            }
        })
        .collect()
}

pub(super) fn prune(t: &Target, out: &Output, dry_run: bool) -> Result<()> {
    let backups: Vec<Backup> = t
        .backups()?
        .into_iter()
        .filter(|b| b.manifest.is_some())
        .collect();
    let now = now_unix();
    let input: Vec<(String, i64, bool)> = backups
        .iter()
        .map(|b| {
            let m = b.manifest.as_ref().expect("filtered");
            (
                b.name.clone(),
                now - m.started_unix,
                m.verified() == Some(true),
            )
        })
        .collect();
    let decisions = retention(&input, t.settings.keep_days, t.settings.keep_min);
    // Leftovers of interrupted dumps (never valid backups), a day old or more.
    if let Ok(entries) = std::fs::read_dir(&t.folder) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(86400));
            if name.starts_with('.') && name.contains(".partial-") && old {
                if dry_run {
                    out.line(&format!("would delete {name} (an interrupted dump)"));
                } else {
                    std::fs::remove_file(e.path())
                        .with_context(|| format!("deleting {}/{name}", t.folder))?;
                    out.line(&format!("deleted {name} (an interrupted dump)"));
                }
            }
        }
    }
    let mut deleted = Vec::new();
    for (b, d) in backups.iter().zip(&decisions) {
        if d.keep {
            out.detail(&format!("keep {}: {}", b.name, d.why));
            continue;
        }
        if dry_run {
            out.line(&format!("would delete {} ({})", b.path, d.why));
        } else {
            std::fs::remove_file(&b.path).with_context(|| format!("deleting {}", b.path))?;
            std::fs::remove_file(b.manifest_path())
                .with_context(|| format!("deleting {}", b.manifest_path()))?;
            out.line(&format!("deleted {} ({})", b.path, d.why));
        }
        deleted.push(b.name.clone());
    }
    if out.json {
        out.json_doc(&serde_json::json!({
            "environment": t.env.name, "dry_run": dry_run,
            "keep_days": t.settings.keep_days, "keep_min": t.settings.keep_min,
            "decisions": decisions,
        }));
    } else {
        out.line(&format!(
            "{} {} of {} backups of `{}` (policy: keep {} days, at least {}, and the newest verified one)",
            if dry_run { "Would delete" } else { "Deleted" },
            deleted.len(),
            backups.len(),
            t.env.name,
            t.settings.keep_days,
            t.settings.keep_min
        ));
    }
    Ok(())
}
