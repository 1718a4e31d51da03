//! Database Migration Procedures: what is applied, pending, failed, edited
//! or missing (`migrate status`).

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::adapters::output::{Output, Tone};
use crate::config::{Env, Runner};
use crate::core::report::Report;

use super::bookkeeping::{Db, Row};
use super::files::{checksum_matches, migrations_dir, read_local, sha256_hex, Local};
use super::lint::{self, Mode};
use super::progress;
use super::resume::{resume_point, Resume};

#[derive(Serialize)]
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) state: &'static str,
    pub(super) detail: String,
}

pub(super) struct State {
    pub(super) local: Vec<Local>,
    pub(super) rows: Vec<Row>,
    pub(super) table: bool,
}

impl State {
    pub(super) fn applied(&self, name: &str) -> bool {
        self.rows
            .iter()
            .any(|r| r.migration_name == name && r.rolled_back_at.is_none())
    }
    pub(super) fn pending(&self) -> Vec<&Local> {
        self.local
            .iter()
            .filter(|l| !self.applied(&l.name))
            .collect()
    }
    pub(super) fn failed(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.failed()).collect()
    }

    pub(super) fn entries(&self) -> Vec<Entry> {
        let mut list = Vec::new();
        for l in &self.local {
            let live: Vec<&Row> = self
                .rows
                .iter()
                .filter(|r| r.migration_name == l.name && r.rolled_back_at.is_none())
                .collect();
            let (state, detail) = if let Some(r) = live.iter().find(|r| r.failed()) {
                (
                    "failed",
                    format!("started {} and did not finish", r.started_at),
                )
            } else if let Some(r) = live.iter().find(|r| r.finished_at.is_some()) {
                match &l.sql {
                    None => (
                        "missing",
                        "applied, but migration.sql is missing on disk".to_string(),
                    ),
                    Some(sql) if !checksum_matches(sql, &r.checksum) => (
                        "edited",
                        format!(
                            "migration.sql changed after it was applied (recorded {}, file {})",
                            &r.checksum[..12.min(r.checksum.len())],
                            &sha256_hex(sql)[..12]
                        ),
                    ),
                    _ => (
                        "applied",
                        format!("finished {}", r.finished_at.as_deref().unwrap_or("")),
                    ),
                }
            } else if l.sql.is_none() {
                (
                    "pending",
                    "migration.sql is missing: deploy will stop here (Prisma: P3015)".to_string(),
                )
            } else {
                ("pending", String::new())
            };
            list.push(Entry {
                name: l.name.clone(),
                state,
                detail,
            });
        }
        let on_disk: BTreeSet<&str> = self.local.iter().map(|l| l.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        for r in &self.rows {
            if !on_disk.contains(r.migration_name.as_str())
                && r.rolled_back_at.is_none()
                && seen.insert(r.migration_name.clone())
            {
                list.push(Entry {
                    name: r.migration_name.clone(),
                    state: if r.failed() { "failed" } else { "not-on-disk" },
                    detail:
                        "recorded in the database but its folder is not in the migrations folder"
                            .into(),
                });
            }
        }
        list
    }
}

pub(super) fn read_state(env: &Env, db: &mut Db) -> Result<State> {
    let local = read_local(env)?;
    let table = db.table_exists()?;
    let rows = if table { db.rows()? } else { Vec::new() };
    Ok(State { local, rows, table })
}

pub(super) fn status(env: &Env, out: &Output, strict: bool) -> Result<()> {
    if env.settings.migrations.runner == Runner::Prisma {
        out.line("(runner = \"prisma\": the state below is read from the same _prisma_migrations table Prisma writes)");
    }
    let mut db = Db::open(env)?;
    let state = read_state(env, &mut db)?;
    let mut entries = state.entries();
    // An unfinished row while someone holds the lock is a migration running now.
    let running = db.lock_holder().ok();
    if let Some(holder) = &running {
        for e in entries.iter_mut().filter(|e| e.state == "failed") {
            e.state = "running";
            e.detail = format!(
                "being applied now by {holder}; if the migrator that started it was killed, the server ends that \
                 session when its statement ends (within a second on PostgreSQL 14+ for mre-ops), and \
                 `migrate status` then says what it left"
            );
        }
    }
    // A migration being applied right now is not done: it counts as pending.
    let pending = entries
        .iter()
        .filter(|e| e.state == "pending" || e.state == "running")
        .count();
    let failed = entries.iter().filter(|e| e.state == "failed").count();
    let dir = migrations_dir(env);
    let mut report = Report::new(serde_json::json!({
        "environment": env.name, "database": db.target, "schema": db.schema,
        "migrations_dir": dir.as_str(), "table_exists": state.table,
        "migrations": entries, "pending": pending, "failed": failed,
        "up_to_date": pending == 0 && failed == 0,
    }));
    {
        report.line(format!(
            "{} migrations found in {dir}; database {} (schema `{}`){}",
            state.local.len(),
            db.target,
            db.schema,
            if state.table {
                ""
            } else {
                ", no _prisma_migrations table yet"
            }
        ));
        for e in &entries {
            let tone = match e.state {
                "applied" => Tone::Good,
                "failed" => Tone::Bad,
                _ => Tone::Warn,
            };
            let detail = if e.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", e.detail)
            };
            report.line(format!(
                "  {} {}{detail}",
                out.paint(tone, &format!("{:<11}", e.state)),
                e.name
            ));
        }
        for r in state.failed().into_iter().filter(|_| running.is_none()) {
            let story = match state.local.iter().find(|l| l.name == r.migration_name) {
                Some(l) if progress::killed_between_statements(r) => {
                    Some(match resume_point(&mut db, l, r)? {
                        Resume::At { story, before, .. } => {
                            let mut t = format!(
                                "{story} `cargo xtask migrate deploy {}` finishes it",
                                env.name
                            );
                            if !before.is_empty() {
                                t.push_str(&format!(
                                    ", running first: {}",
                                    before
                                        .iter()
                                        .map(|b| format!("{b};"))
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                ));
                            }
                            (t + ".", true)
                        }
                        Resume::Manual(why) => (why, false),
                    })
                }
                _ => None,
            };
            report.line("");
            report.line(failed_message(
                env,
                r,
                &state,
                story.as_ref().map(|(t, ok)| (t.as_str(), *ok)),
            ));
        }
        if pending == 0 && failed == 0 {
            report.line("Database schema is up to date!");
        } else if pending > 0 {
            report.line(format!(
                "{pending} pending: review them with `cargo xtask migrate review {0}`, apply with `cargo xtask migrate deploy {0}`",
                env.name
            ));
        }
    }
    report.emit(out);
    let drift: Vec<String> = entries
        .iter()
        .filter(|e| matches!(e.state, "edited" | "missing" | "not-on-disk"))
        .map(|e| format!("{} ({})", e.name, e.state))
        .collect();
    if strict && !drift.is_empty() && pending == 0 && failed == 0 {
        bail!(
            "--strict: the applied migrations of `{}` drifted from the folder: {}. Restore the files as they were applied; \
             a change belongs in a new migration (`cargo xtask migrate new NAME`)",
            env.name,
            drift.join(", ")
        );
    }
    if pending > 0 || failed > 0 {
        bail!(
            "{pending} migration(s) pending and {failed} failed in `{}`",
            env.name
        );
    }
    Ok(())
}

/// What a failed row means and what to do. `story`: what the database says
/// of a run that was interrupted between statements (`resume`), and whether
/// `migrate deploy` can finish it.
pub(super) fn failed_message(
    env: &Env,
    r: &Row,
    state: &State,
    story: Option<(&str, bool)>,
) -> String {
    let name = &r.migration_name;
    let env = &env.name;
    let head = format!(
        "Migration `{name}` failed: it started at {} and did not finish (Prisma: P3009).",
        r.started_at
    );
    if progress::killed_between_statements(r) {
        let (story, finishes) = story.unwrap_or(("", false));
        let by_hand = format!(
            "finish the rest by hand and `cargo xtask migrate resolve --applied {name} {env}`, or reverse what was applied \
             and `cargo xtask migrate resolve --rolled-back {name} {env}`"
        );
        return if finishes {
            format!(
                "{head}\nIt ran statement by statement and was interrupted: {story}\n  cargo xtask migrate deploy {env}    \
                 (finishes the file where it stopped)\nOr, by hand: {by_hand}."
            )
        } else {
            format!(
                "{head}\nIt ran statement by statement and was interrupted: {story}\n`migrate deploy` cannot finish it on its \
                 own. Next: {by_hand}."
            )
        };
    }
    if progress::killed_in_transaction(r) {
        return format!(
            "{head}\nIt ran in a transaction and was interrupted: the server rolled it back, nothing of it is in the database.\n  \
             cargo xtask migrate deploy {env}    (applies it again)"
        );
    }
    if let Some(story) = progress::describe_legacy(r) {
        return format!(
            "{head}\n{story}\n  cargo xtask migrate resolve --rolled-back {name} {env}\n  cargo xtask migrate resolve --applied {name} {env}"
        );
    }
    let mode = state
        .local
        .iter()
        .find(|l| &l.name == name)
        .filter(|l| l.sql.is_some())
        .map(|l| lint::mode(&lint::split(&l.text())));
    // How it ran, from the row (a refused transaction runs statement by
    // statement), else from the file.
    let ran_statements = r
        .logs
        .as_deref()
        .unwrap_or_default()
        .contains(progress::STATEMENTS)
        || r.applied_steps_count > 0;
    let in_tx = mode == Some(Mode::Transaction) && !ran_statements;
    let how = match &mode {
        Some(Mode::Transaction) if ran_statements => format!(
            "PostgreSQL refused this file in a transaction, so it ran statement by statement: {} statement(s) before the \
             failing one stay applied; reverse them or finish them by hand.",
            r.applied_steps_count
        ),
        Some(Mode::Transaction) => "mre-ops runs this file in a transaction, so if mre-ops ran it, nothing of it is in the database (Prisma runs it statement by statement: then the statements before the error stay applied).".to_string(),
        Some(Mode::NoTransaction(why)) => format!("This file runs statement by statement ({why}): the statements before the failing one stay applied; reverse them or finish them by hand."),
        Some(Mode::ScriptControlled) => "This file has its own BEGIN/COMMIT and runs statement by statement: what its committed transactions did stays applied; an open one was rolled back.".to_string(),
        None => "Its migration.sql is not on disk: check the schema by hand.".to_string(),
    };
    let applied = if in_tx {
        "Only if you then apply the whole file by hand (nothing of it is in the database now), record it as applied:"
    } else {
        "If you finished it by hand instead, record it as applied:"
    };
    format!(
        "{head}\nIts logs:\n{logs}\n{how}\n\
         Next: fix its migration.sql, then\n  \
         cargo xtask migrate resolve --rolled-back {name} {env}\n  cargo xtask migrate deploy {env}\n\
         {applied}\n  \
         cargo xtask migrate resolve --applied {name} {env}",
        logs = indent(r.logs.as_deref().unwrap_or("(none)")),
    )
}

pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
