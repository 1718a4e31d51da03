//! Disaster Recovery Procedures, Backup Strategy: the backups of an
//! environment (listing, finding one by name or `latest`) and retention
//! ("Retention: 30 days").

use std::time::Duration;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::adapters::clock::Utc;
use crate::adapters::output::{Output, Tone};
use crate::config::config_error;
use crate::core::report::{table, Report};

use super::manifest::{human_age, human_size, load, manifest_path, now_unix, Backup};
use super::pg_tools::{drop_database, Target};
use serde::Serialize;

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
            if path.file_name().unwrap_or("").starts_with('.') {
                continue;
            }
            if path.extension() == Some("dump") {
                list.push(load(&path)?);
            } else if path.extension() == Some("json") && !path.with_extension("dump").exists() {
                // A backup kept on the server: its manifest alone is here.
                let dump = path.with_extension("dump");
                if let Ok(b) = load(&dump) {
                    if b.manifest.as_ref().is_some_and(|m| m.on_server.is_some()) {
                        list.push(b);
                    }
                }
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
        let on_server = !path.is_file() && manifest_path(&path).is_file();
        if !path.is_file() && !on_server {
            return Err(config_error(format!(
                "no backup `{arg}` ({path}): `cargo xtask backup list {}` shows the backups, or pass `latest` or a path",
                self.env.name
            )));
        }
        let b = load(&path)?;
        if on_server && b.manifest.as_ref().is_some_and(|m| m.on_server.is_none()) {
            return Err(config_error(format!(
                "{path} is missing: its manifest ({}) is here but the dump is not, and it was not kept on the server. \
                 `cargo xtask backup list {}` shows the backups",
                manifest_path(&path),
                self.env.name
            )));
        }
        if b.manifest.is_none() {
            return Err(config_error(format!(
                "{path} is not a backup made by mre-ops: it has no manifest ({}) beside it. \
                 `cargo xtask backup list {}` shows the backups",
                manifest_path(&path),
                self.env.name
            )));
        }
        Ok(b)
    }

    /// Databases that restore, verify and drill left on the server: staged
    /// restores and scratch copies an interrupted run did not drop, and the
    /// databases restores replaced (kept on purpose). Newest first by name.
    pub(super) fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut admin = self.connect(&self.settings.maintenance_db)?;
        let rows = admin
            .query(
                "SELECT d.datname::text, pg_database_size(d.oid),                         (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)::bigint                  FROM pg_database d                  WHERE d.datname LIKE $1 OR d.datname LIKE $2 OR d.datname LIKE 'mre\\_ops\\_%'                  ORDER BY d.datname DESC",
                &[
                    &format!("{}\\_\\_mre\\_restore\\_%", like_escape(&self.database)),
                    &format!("{}\\_\\_mre\\_replaced\\_%", like_escape(&self.database)),
                ],
            )
            .context("listing the databases restore and verify left")?;
        Ok(rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                let kind = if name.contains("__mre_replaced_") {
                    "replaced"
                } else if name.contains("__mre_restore_") {
                    "restore-staging"
                } else {
                    "verify-scratch"
                };
                Leftover {
                    name,
                    kind,
                    bytes: r.get::<_, i64>(1).max(0) as u64,
                    sessions: r.get(2),
                }
            })
            .collect())
    }
}

/// A database an operation left.
#[derive(serde::Serialize, Clone, Debug)]
pub(super) struct Leftover {
    pub(super) name: String,
    /// `replaced` (kept by restore on purpose), `restore-staging` or
    /// `verify-scratch` (an interrupted run's).
    pub(super) kind: &'static str,
    pub(super) bytes: u64,
    pub(super) sessions: i64,
}

fn scratch_owner_alive(name: &str) -> bool {
    name.split('_')
        .nth(3)
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// What `backup prune` drops: an interrupted run's staging and scratch
/// databases nobody is connected to, and replaced databases beyond the
/// newest `keep_replaced`.
pub(super) fn leftovers_to_drop(
    list: &[Leftover],
    keep_replaced: usize,
) -> Vec<(&Leftover, String)> {
    let mut drop = Vec::new();
    let mut replaced = 0;
    for l in list {
        match l.kind {
            "replaced" => {
                replaced += 1;
                if replaced > keep_replaced {
                    drop.push((l, format!("a replaced database beyond the newest {keep_replaced} (backups.keep_replaced)")));
                }
            }
            // A verify or drill running now on this machine owns its scratch
            // (`mre_ops_<tag>_<pid>_<hex>`).
            "verify-scratch" if scratch_owner_alive(&l.name) => {}
            _ if l.sessions == 0 => drop.push((
                l,
                "left by an interrupted run, nobody connected".to_string(),
            )),
            _ => {}
        }
    }
    drop
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
                "on_server": m.and_then(|m| m.on_server.clone()),
            })
        })
        .collect();
    // Best effort: the backups are listed even when the server is down.
    let leftovers = t.leftovers().unwrap_or_default();
    let incident = crate::core::incident::pointer(t.env);
    let mut report = Report::new(
        serde_json::json!({"environment": t.env.name, "folder": t.folder.as_str(), "backups": rows, "leftover_databases": leftovers, "latest_incident": incident.as_ref().map(|i| &i.1)}),
    );
    if !leftovers.is_empty() {
        report.line(format!("Leftover databases of `{}` on its server (`cargo xtask backup prune {}` drops them by retention):", t.env.name, t.env.name));
        let rows: Vec<Vec<String>> = leftovers
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.kind.to_string(),
                    human_size(l.bytes),
                    if l.sessions > 0 {
                        format!("({} session(s) connected)", l.sessions)
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        for line in table(&rows, &[2]) {
            report.line(line);
        }
        report.line("");
    }
    if backups.is_empty() {
        report.line(format!(
            "No backups of `{}` in {}. Create one: cargo xtask backup create {}",
            t.env.name, t.folder, t.env.name
        ));
        report.emit(out);
        return Ok(());
    }
    report.line(format!(
        "Backups of `{}` in {} (newest first):",
        t.env.name, t.folder
    ));
    let mut rows = vec![vec![
        "name".to_string(),
        "age".into(),
        "size".into(),
        "verified".into(),
        "reason".into(),
    ]];
    for b in &backups {
        rows.push(match &b.manifest {
            Some(m) => {
                let verified = match m.verified() {
                    Some(true) => out.paint(Tone::Good, "yes"),
                    Some(false) => out.paint(Tone::Bad, "FAILED"),
                    None => out.paint(Tone::Warn, "no"),
                };
                vec![
                    b.name.clone(),
                    human_age(now - m.started_unix),
                    human_size(m.size),
                    verified,
                    match &m.on_server {
                        Some(p) => format!("{} (kept on the server: {p})", m.reason),
                        None => m.reason.clone(),
                    },
                ]
            }
            None => vec![
                b.name.clone(),
                "?".into(),
                "?".into(),
                "-".into(),
                "no manifest: not a usable backup".into(),
            ],
        });
    }
    for line in table(&rows, &[1, 2]) {
        report.line(line);
    }
    if let Some((line, _)) = &incident {
        report.line(line.clone());
    }
    report.emit(out);
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
    // Databases operations left on the server.
    let leftovers = t.leftovers().unwrap_or_default();
    let mut dropped_dbs = Vec::new();
    for (l, why) in leftovers_to_drop(&leftovers, t.settings.keep_replaced) {
        if dry_run {
            out.line(&format!(
                "would drop database {} ({}, {})",
                l.name,
                human_size(l.bytes),
                why
            ));
        } else {
            drop_database(t, &l.name)?;
            out.line(&format!(
                "dropped database {} ({}, {})",
                l.name,
                human_size(l.bytes),
                why
            ));
        }
        dropped_dbs.push(l.name.clone());
    }
    let mut deleted = Vec::new();
    for (b, d) in backups.iter().zip(&decisions) {
        if d.keep {
            out.detail(&format!("keep {}: {}", b.name, d.why));
            continue;
        }
        let on_server = b.manifest.as_ref().and_then(|m| m.on_server.clone());
        if dry_run {
            out.line(&format!("would delete {} ({})", b.path, d.why));
        } else if let Some(p) = &on_server {
            t.delete_on_server(b, p)?;
            out.line(&format!(
                "deleted {p} on the server and its manifest ({})",
                d.why
            ));
        } else {
            std::fs::remove_file(&b.path).with_context(|| format!("deleting {}", b.path))?;
            std::fs::remove_file(b.manifest_path())
                .with_context(|| format!("deleting {}", b.manifest_path()))?;
            out.line(&format!("deleted {} ({})", b.path, d.why));
        }
        deleted.push(b.name.clone());
    }
    let mut report = Report::new(serde_json::json!({
        "environment": t.env.name, "dry_run": dry_run,
        "keep_days": t.settings.keep_days, "keep_min": t.settings.keep_min,
        "decisions": decisions, "dropped_databases": dropped_dbs,
    }));
    {
        report.line(format!(
            "{} {} of {} backups of `{}` (policy: keep {} days, at least {}, and the newest verified one)",
            if dry_run { "Would delete" } else { "Deleted" },
            deleted.len(),
            backups.len(),
            t.env.name,
            t.settings.keep_days,
            t.settings.keep_min
        ));
    }
    report.emit(out);
    Ok(())
}
