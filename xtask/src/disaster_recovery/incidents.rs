//! Disaster Recovery, "Document incident": the incident record a restore
//! writes (what it put back, the data window it lost, its steps), the rule
//! for `--reason`, and `cargo xtask incidents ENV`.

use anyhow::Result;

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::config::{Env, Ops};
use crate::core::incident::{self, human_secs, Incident};
use crate::core::report::{table, Report};
use crate::core::session;
use crate::core::steps::Timing;

use super::manifest::{Backup, Manifest};

/// List an environment's incident records.
///
/// Runbook: Disaster Recovery, Recovery Procedures, "Document incident".
///
/// Every `restore`, `recover` and `rollback --with-db` records what it did
/// (what was restored, to which time, the data window lost, each step's
/// duration, who and why) in the journal table `mre_ops_incidents` and as a
/// markdown file in `<backups dir>/<env>/incidents/`. Newest first; when the
/// journal cannot be reached, the files are listed.
#[derive(clap::Args, Debug)]
pub struct IncidentsArgs {
    #[arg(default_value = "development")]
    pub env: String,
}

/// The reason for the incident record. Required on a protected
/// environment unless the operator confirmed with `--yes` (CI, or a caller
/// that asked already): on a terminal it is asked for (after the
/// confirmation), without one it is refused (exit 2, nothing changed).
pub(crate) fn reason(env: &Env, reason: Option<&str>, yes: bool) -> Result<Option<String>> {
    let given = reason.map(str::trim).filter(|r| !r.is_empty());
    if given.is_some() || !env.settings.protected || yes {
        return Ok(given.map(str::to_string));
    }
    crate::core::confirm::ask(
        "Why (for the incident record)?",
        &format!(
            "`{}` is protected: say why for the incident record with --reason \"…\" \
             (e.g. --reason \"bad DELETE at 14:02, ticket 123\"), or pass --yes",
            env.name
        ),
    )
    .map(Some)
}

/// What a restore's record needs from its run.
pub(super) struct RestoreRun<'a> {
    pub(super) incident: Incident,
    pub(super) backup: &'a Backup,
    pub(super) manifest: &'a Manifest,
    pub(super) safety: Option<&'a Backup>,
    pub(super) replaced: &'a str,
    pub(super) swapped: bool,
    pub(super) timings: Vec<Timing>,
}

/// Write a restore's incident record (the markdown file and the journal
/// row); warnings only, never the restore's failure.
pub(super) fn record_restore(env: &Env, out: &Output, run: RestoreRun, result: &Result<()>) {
    let RestoreRun {
        mut incident,
        backup,
        manifest: m,
        safety,
        replaced,
        swapped,
        timings,
    } = run;
    incident.restored = Some(format!("backup {} ({})", backup.name, backup.path));
    incident.steps = timings;
    if swapped {
        incident.point_in_time = Some(m.started_at.clone());
        let now = Utc::now();
        let before = safety.and_then(|s| s.manifest.as_ref()).map(|s| &s.tables);
        let mut tables = serde_json::Map::new();
        if let Some(before) = before {
            let names: std::collections::BTreeSet<&String> =
                before.keys().chain(m.tables.keys()).collect();
            for t in names {
                let (b, a) = (
                    before.get(t).copied().unwrap_or(0),
                    m.tables.get(t).copied().unwrap_or(0),
                );
                if a != b {
                    tables.insert(
                        t.clone(),
                        serde_json::json!({"before": b, "after": a, "change": a - b}),
                    );
                }
            }
        }
        incident.data_window = serde_json::json!({
            "from": m.started_at,
            "to": now.rfc3339(),
            "seconds": now.unix() - m.started_unix,
            "tables": tables,
            "kept_in": format!(
                "the safety backup {} and the replaced database `{replaced}`",
                safety.map(|s| s.name.as_str()).unwrap_or("(none)")
            ),
        });
    } else {
        incident.data_window = serde_json::json!({
            "note": "nothing was swapped in: the live database holds what it held before",
        });
    }
    incident.write(env, out, result);
}

pub fn incidents(ops: &Ops, out: &Output, args: &IncidentsArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let (rows, journal_error) = match incident::rows(&env) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let files: Vec<String> = incident::files(&env)
        .iter()
        .map(|f| f.to_string())
        .collect();
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "incidents": rows, "files": files,
        "folder": incident::folder(&env).as_str(), "journal_error": journal_error,
    }));
    if let Some(e) = &journal_error {
        r.line(format!(
            "The journal could not be read ({e}); the incident files of `{}` instead:",
            env.name
        ));
        for f in &files {
            r.line(format!("  {f}"));
        }
        if files.is_empty() {
            r.line("  (none)");
        }
        r.emit(out);
        return Ok(());
    }
    if rows.is_empty() {
        r.line(format!(
            "No incidents recorded for `{}`: no restore, recover or rollback --with-db ran.",
            env.name
        ));
        r.emit(out);
        return Ok(());
    }
    r.line(format!("Incidents of `{}` (newest first):", env.name));
    let mut t = vec![vec![
        "#".to_string(),
        "when".into(),
        "operation".into(),
        "result".into(),
        "who".into(),
        "lost".into(),
        "why".into(),
    ]];
    for i in &rows {
        let lost = match (
            i.data_window["seconds"].as_i64(),
            i.data_window["from"].as_str(),
        ) {
            (Some(s), Some(_)) => human_secs(s),
            _ => "-".into(),
        };
        t.push(vec![
            i.id.to_string(),
            i.started_at.clone(),
            i.operation.clone(),
            i.result.clone(),
            i.who.clone(),
            lost,
            i.reason.clone(),
        ]);
    }
    for l in table(&t, &[0]) {
        r.line(l);
    }
    if let Some(f) = rows.first().and_then(|i| i.file.as_ref()) {
        r.line(format!("The newest one's record: {f}"));
    }
    r.emit(out);
    Ok(())
}

/// The incident record of a point-in-time restore ("Document incident"):
/// what was restored, the time reached, the data window lost (from it to
/// now, kept in the replaced container), each step's time.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_pitr(
    env: &Env,
    out: &Output,
    mut incident: Incident,
    reached: Option<&str>,
    (base, range, target): (&str, &str, &str),
    kept_in: &str,
    timings: &[crate::core::steps::Timing],
    result: &Result<()>,
) {
    incident.restored = Some(format!(
        "base backup {base} and WAL {range} (target: {target})"
    ));
    incident.steps = timings.to_vec();
    let now = Utc::now();
    incident.data_window = match reached {
        Some(reached) => {
            incident.point_in_time = Some(reached.to_string());
            serde_json::json!({
                "from": reached, "to": now.rfc3339(),
                "seconds": crate::adapters::clock::parse_instant(reached).map(|r| now.unix() - r),
                "kept_in": kept_in,
            })
        }
        None => serde_json::json!({
            "note": "nothing was swapped in: the database container holds what it held before",
        }),
    };
    incident.write(env, out, result);
}
