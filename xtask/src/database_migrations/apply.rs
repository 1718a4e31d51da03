//! Database Migration Procedures: "Apply migration" (`migrate deploy`, and
//! the step of `cargo xtask deploy`): the lint gate, each migration in a
//! transaction when it can, Prisma's bookkeeping with it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::adapters::output::{Output, Tone};
use crate::config::{Env, LintMode, Runner};
use crate::core::files::uuid_v4;
use crate::core::steps::Plan;

// Siblings: the module's parts share their items (pub(super)).
#[allow(unused_imports)]
use super::lint::{self, Mode};
#[allow(unused_imports)]
use super::progress;
#[allow(unused_imports)]
use super::{authoring::*, bookkeeping::*, files::*, prisma::*, state::*};

pub struct DeployOptions {
    pub dry_run: bool,
    pub allow_risky: bool,
    /// Back the database up (disaster_recovery::create_backup) before
    /// applying anything, when something is pending.
    pub backup: bool,
    /// Print the JSON document under `--json` (not when a step of `deploy`,
    /// which prints its own).
    pub report: bool,
}

pub(super) fn lint_blocks(env: &Env) -> bool {
    match env.settings.migrations.lint {
        Some(LintMode::Block) => true,
        Some(LintMode::Warn) => false,
        None => env.name != "development",
    }
}

/// Lint the pending migrations; an error when they block.
pub(super) fn lint_pending(
    env: &Env,
    out: &Output,
    pending: &[&Local],
    allow_risky: bool,
) -> Result<()> {
    let mut new_tables = BTreeSet::new();
    let mut open = Vec::new();
    for l in pending {
        for f in lint::lint(&l.text(), &mut new_tables) {
            if !f.allowed {
                open.push(format!(
                    "  {}:{}: {}: {}\n      safer: {}",
                    l.name, f.line, f.rule, f.reason, f.instead
                ));
            }
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    let list = open.join("\n");
    if !lint_blocks(env) || allow_risky {
        out.line(&format!("Lint findings (not blocking here):\n{list}"));
        return Ok(());
    }
    bail!(
        "the lint found {} risky statement(s) in the pending migrations of `{}`:\n{list}\n\
         Review them (`cargo xtask migrate review {}`), make them safer, or accept one finding with a \
         `-- mre-ops:allow RULE` comment above its statement; `--allow-risky` deploys anyway",
        open.len(),
        env.name,
        env.name
    )
}

/// Apply the pending migrations of `env` (also the "Apply pending
/// migrations" step of `cargo xtask deploy`).
pub fn deploy(env: &Env, out: &Output, opts: &DeployOptions) -> Result<()> {
    if env.settings.migrations.runner == Runner::Prisma {
        return prisma_deploy(env, out, opts);
    }
    let local = read_local(env)?;
    let mut db = Db::open(env)?;
    let wait = Duration::from_secs(env.settings.migrations.lock_wait_secs);
    // Prisma takes the lock before it reads anything; so do we (a row being
    // written by a migrator that holds the lock is not a failure). The lock
    // is a session lock: it goes when this connection closes, whatever happens.
    if !opts.dry_run {
        db.lock(out, wait)?;
    }
    let mut state = read_state(env, &mut db)?;
    warn_edited(env, out, &state);
    // A row our transactional run left when it was killed: the server rolled
    // its transaction back (we hold the lock its session held, so that
    // session is gone). Mark it rolled back and apply the migration again.
    if !opts.dry_run {
        let provable: Vec<String> = state
            .failed()
            .iter()
            .filter(|r| progress::killed_in_transaction(r))
            .map(|r| r.id.clone())
            .collect();
        for id in &provable {
            db.client
                .execute(
                    "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE id = $1 AND finished_at IS NULL",
                    &[id],
                )
                .context("marking an interrupted migration rolled back")?;
        }
        if !provable.is_empty() {
            for r in state.failed().iter().filter(|r| provable.contains(&r.id)) {
                out.line(&format!(
                    "Migration `{}` was interrupted while it ran in a transaction (started {}): the server rolled it back, \
                     so it is marked rolled back and applied again.",
                    r.migration_name, r.started_at
                ));
            }
            state = read_state(env, &mut db)?;
        }
    }
    if let Some(r) = state.failed().first() {
        bail!(failed_message(env, r, &state));
    }
    let pending: Vec<&Local> = state.pending();
    if let Some(l) = pending.iter().find(|l| l.sql.is_none()) {
        bail!(
            "{}/migration.sql is missing (Prisma: P3015): every folder in {} must hold one. Restore the file or remove the folder",
            l.dir,
            migrations_dir(env)
        );
    }
    if pending.is_empty() {
        out.line(&format!(
            "No pending migrations: {} applied in {} (schema `{}`).",
            local.len(),
            db.target,
            db.schema
        ));
        if out.json && opts.report {
            out.json_doc(&serde_json::json!({ "environment": env.name, "applied": [], "dry_run": opts.dry_run }));
        }
        return Ok(());
    }
    lint_pending(env, out, &pending, opts.allow_risky)?;

    if opts.dry_run {
        out.line(&format!(
            "A real run holds the migration lock (pg_advisory_lock(72707369), shared with Prisma; waits at most {} s) from start to end.",
            wait.as_secs()
        ));
    }
    let db = RefCell::new(db);
    let mut plan = Plan::new(format!(
        "migrate deploy {} ({} pending)",
        env.name,
        pending.len()
    ));
    if opts.backup {
        plan.action(
            "Back up the database",
            "cargo xtask backup: a verified backup before migrating (runbook: Backup database before migration)",
            || crate::disaster_recovery::create_backup(env, out, "before migration").map(drop),
        );
    }
    if !state.table {
        plan.action(
            "Create _prisma_migrations",
            "CREATE TABLE _prisma_migrations (...) as Prisma does (only in an empty schema)",
            || db.borrow_mut().ensure_table(env, false).map(drop),
        );
    }
    for l in &pending {
        let stmts = lint::split(&l.text());
        let mode = lint::mode(&stmts);
        let db = &db;
        plan.action(
            format!("Apply {}", l.name),
            format!("{} statement(s), {}", stmts.len(), mode.describe()),
            move || apply_one(env, out, &mut db.borrow_mut(), l, &mode),
        );
    }
    plan.execute(out, opts.dry_run)?;
    if out.json && opts.report {
        let names: Vec<&str> = pending.iter().map(|l| l.name.as_str()).collect();
        let key = if opts.dry_run {
            "would_apply"
        } else {
            "applied"
        };
        out.json_doc(
            &serde_json::json!({ "environment": env.name, key: names, "dry_run": opts.dry_run }),
        );
    }
    if !opts.dry_run {
        out.line(&format!(
            "All migrations have been successfully applied ({}).",
            pending.len()
        ));
        out.step_summary(&format!(
            "Applied {} migration(s) to `{}`",
            pending.len(),
            env.name
        ));
    }
    Ok(())
}

pub(super) fn warn_edited(env: &Env, out: &Output, state: &State) {
    for e in state.entries() {
        if matches!(e.state, "edited" | "missing" | "not-on-disk") {
            out.line(&format!(
                "{} {}: {} (`cargo xtask migrate status {}`)",
                out.paint(Tone::Warn, "warning:"),
                e.name,
                e.detail,
                env.name
            ));
        }
    }
}

/// One migration, with Prisma's bookkeeping around it. The row is inserted
/// (committed) before the script, so a failure or a kill leaves a record;
/// `logs` says how it runs (`progress`), so that the next run can tell a
/// transaction the server rolled back from statements that stayed applied.
pub(super) fn apply_one(
    env: &Env,
    out: &Output,
    db: &mut Db,
    l: &Local,
    mode: &Mode,
) -> Result<()> {
    // The lock has been held since before the state was read: nobody else
    // can have applied it meanwhile.
    let sql = l.sql.as_deref().unwrap_or_default();
    let text = std::str::from_utf8(sql).context("the migration is not UTF-8")?;
    let id = uuid_v4()?;
    let checksum = sha256_hex(sql);
    let table = format!("{}._prisma_migrations", quote_ident(&db.schema));
    let start = Instant::now();
    let (result, done) = run_script(db, text, mode, &table, &id, &checksum, &l.name);
    if result.is_err() {
        // A script with its own BEGIN, or our own, may have left its
        // transaction open and aborted: close it, or the bookkeeping below
        // cannot run.
        let _ = db.client.batch_execute("ROLLBACK");
    }
    // Session settings a script made (lock_timeout, search_path) end with it.
    let _ = db.client.batch_execute(&format!(
        "RESET ALL; SET search_path TO {}",
        quote_ident(&db.schema)
    ));
    match result {
        Ok(()) => {
            out.line(&format!(
                "  applied {} {} in {:.2} s",
                l.name,
                mode.describe(),
                start.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Err(e) => {
            let logs = prisma_style_logs(&l.name, &e);
            let recorded = db
                .client
                .execute(
                    &format!("UPDATE {table} SET logs = $1 WHERE id = $2"),
                    &[&logs, &id],
                )
                .map(drop)
                .map_err(|e| {
                    format!("\n(Its logs could not be recorded in _prisma_migrations: {e}.)")
                })
                .err()
                .unwrap_or_default();
            let invalid = invalid_indexes(&mut db.client);
            let state = match mode {
                Mode::Transaction => "It ran in a transaction that was rolled back: the schema is exactly as it was before.".to_string(),
                Mode::NoTransaction(_) => format!(
                    "It ran without a transaction: {done} statement(s) before the failing one were applied and stay applied. \
                     Reverse them by hand or restore the backup (runbook: Migration Rollback).{}",
                    if invalid.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "\nThe failure left these indexes INVALID (they exist but are not used or enforced); drop them before retrying:\n{}",
                            invalid.iter().map(|i| format!("  DROP INDEX CONCURRENTLY {i};")).collect::<Vec<_>>().join("\n")
                        )
                    }
                ),
                Mode::ScriptControlled => "The script controls its own transactions: check which of its parts were committed.".to_string(),
            };
            let state = format!("{state}{recorded}");
            bail!(
                "migration `{}` failed {}:\n{}\n{state}\n\
                 It is recorded as failed, and deploy refuses to run until it is resolved. Next: fix {}/migration.sql, then\n  \
                 cargo xtask migrate resolve --rolled-back {} {env}\n  cargo xtask migrate deploy {env}",
                l.name,
                mode.describe(),
                indent(&db_error_text(&e)),
                l.dir,
                l.name,
                env = env.name
            )
        }
    }
}

/// A string constant for a simple query (standard_conforming_strings is on
/// since PostgreSQL 9.1; E'' when a backslash needs care anyway).
fn lit(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Insert the row, run the script, complete the row; on failure also how
/// many statements had succeeded.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_script(
    db: &mut Db,
    sql: &str,
    mode: &Mode,
    table: &str,
    id: &str,
    checksum: &str,
    name: &str,
) -> (Result<(), postgres::Error>, usize) {
    let insert = |logs: &str| {
        format!(
            "INSERT INTO {table} (id, checksum, started_at, migration_name, logs) VALUES ({}, {}, now(), {}, {})",
            lit(id),
            lit(checksum),
            lit(name),
            lit(logs)
        )
    };
    let finish = format!(
        "UPDATE {table} SET applied_steps_count = applied_steps_count + 1, finished_at = now(), logs = NULL WHERE id = {}",
        lit(id)
    );
    match mode {
        Mode::Transaction => {
            // One round trip: the row is committed first (a failure or a kill
            // leaves it), then the script and the completion of the row commit
            // together. A failing statement skips the rest of the query and
            // leaves the transaction aborted: the caller rolls it back. The
            // newlines and the empty statement end a trailing `--` comment.
            let batch = format!(
                "{}; COMMIT; BEGIN;\n{sql}\n;\n{finish}; COMMIT;",
                insert(progress::IN_TRANSACTION)
            );
            (db.client.batch_execute(&batch), 0)
        }
        Mode::ScriptControlled => {
            if let Err(e) = db
                .client
                .batch_execute(&insert(progress::SCRIPT_CONTROLLED))
            {
                return (Err(e), 0);
            }
            let r = db
                .client
                .batch_execute(sql)
                .and_then(|()| db.client.batch_execute(&finish));
            (r, 0)
        }
        Mode::NoTransaction(_) => {
            let stmts = lint::split(sql);
            let total = stmts.len();
            let next = |k: usize| stmts.get(k).map(|s| (s.line, &sql[s.start..s.end]));
            if let Err(e) =
                db.client
                    .batch_execute(&insert(&progress::statements(0, total, next(0))))
            {
                return (Err(e), 0);
            }
            for (k, s) in stmts.iter().enumerate() {
                if let Err(e) = db.client.batch_execute(&sql[s.start..s.end]) {
                    return (Err(e), k);
                }
                // Committed: say so before the next one runs.
                let logs = progress::statements(k + 1, total, next(k + 1));
                let step = format!(
                    "UPDATE {table} SET applied_steps_count = {}, logs = {} WHERE id = {}",
                    k + 1,
                    lit(&logs),
                    lit(id)
                );
                if let Err(e) = db.client.batch_execute(&step) {
                    return (Err(e), k + 1);
                }
            }
            let done = format!(
                "UPDATE {table} SET applied_steps_count = 1, finished_at = now(), logs = NULL WHERE id = {}",
                lit(id)
            );
            (db.client.batch_execute(&done), total)
        }
    }
}

/// Indexes left INVALID (a failed CREATE INDEX CONCURRENTLY), qualified and
/// quoted.
pub(super) fn invalid_indexes(client: &mut postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT i.indisvalid ORDER BY 1",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

pub(super) fn db_error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("ERROR: {}", d.message());
            if let Some(detail) = d.detail() {
                s.push_str(&format!("\nDETAIL: {detail}"));
            }
            if let Some(hint) = d.hint() {
                s.push_str(&format!("\nHINT: {hint}"));
            }
            s
        }
        None => format!("{e:#}"),
    }
}

/// `logs` the way Prisma's schema engine writes them.
pub(super) fn prisma_style_logs(name: &str, e: &postgres::Error) -> String {
    let code = e
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| "N/A".into());
    format!(
        "Migration name: {name}\n\nDatabase error code: {code}\n\nDatabase error:\n{}\n",
        db_error_text(e)
    )
}
