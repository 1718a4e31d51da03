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
    let state = read_state(env, &mut db)?;
    warn_edited(env, out, &state);
    if let Some(r) = state.failed().first() {
        bail!(failed_message(env, r));
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

/// One migration, with Prisma's bookkeeping around it: the row is inserted
/// before, completed after success, given `logs` on failure; each of these
/// is its own autocommit statement (so the failure is recorded even when the
/// migration's own transaction is rolled back).
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
    let text = String::from_utf8_lossy(sql).into_owned();
    let id = uuid_v4()?;
    let checksum = sha256_hex(sql);
    db.client
        .execute(
            "INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES ($1, $2, now(), $3)",
            &[&id, &checksum, &l.name],
        )
        .context("recording the start of the migration in _prisma_migrations")?;
    let start = Instant::now();
    let table = format!("{}._prisma_migrations", quote_ident(&db.schema));
    let (result, done) = run_script(&mut db.client, &text, mode, &table, &id);
    if result.is_err() {
        // A script with its own BEGIN may have left its transaction open
        // and aborted: close it, or the bookkeeping below cannot run.
        let _ = db.client.batch_execute("ROLLBACK");
    }
    // Session settings a script made (lock_timeout, search_path) end with it.
    let _ = db.client.batch_execute(&format!(
        "RESET ALL; SET search_path TO {}",
        quote_ident(&db.schema)
    ));
    match result {
        Ok(()) if matches!(mode, Mode::Transaction) => {
            // Recorded inside the migration's own transaction (run_script).
            out.line(&format!(
                "  applied {} {} in {:.2} s",
                l.name,
                mode.describe(),
                start.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Ok(()) => {
            db.client
                .execute(
                    "UPDATE _prisma_migrations SET applied_steps_count = applied_steps_count + 1 WHERE id = $1",
                    &[&id],
                )
                .context("recording the migration's step in _prisma_migrations")?;
            db.client
                .execute(
                    "UPDATE _prisma_migrations SET finished_at = now() WHERE id = $1",
                    &[&id],
                )
                .context("recording the end of the migration in _prisma_migrations")?;
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
                    "UPDATE _prisma_migrations SET logs = $1 WHERE id = $2",
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

/// Run a migration script; on failure also how many statements had succeeded.
pub(super) fn run_script(
    client: &mut postgres::Client,
    sql: &str,
    mode: &Mode,
    table: &str,
    id: &str,
) -> (Result<(), postgres::Error>, usize) {
    match mode {
        Mode::Transaction => {
            // The bookkeeping Prisma does after the script (step count, then
            // finished_at) commits with the script: a crash between the two
            // can no longer leave an applied migration looking failed.
            let r = (|| {
                let mut tx = client.transaction()?;
                tx.batch_execute(sql)?;
                tx.execute(
                    &format!("UPDATE {table} SET applied_steps_count = applied_steps_count + 1 WHERE id = $1"),
                    &[&id],
                )?;
                tx.execute(
                    &format!("UPDATE {table} SET finished_at = now() WHERE id = $1"),
                    &[&id],
                )?;
                tx.commit()
            })();
            (r, 0)
        }
        Mode::ScriptControlled => (client.batch_execute(sql), 0),
        Mode::NoTransaction(_) => {
            let stmts = lint::split(sql);
            for (k, s) in stmts.iter().enumerate() {
                if let Err(e) = client.batch_execute(&sql[s.start..s.end]) {
                    return (Err(e), k);
                }
            }
            (Ok(()), stmts.len())
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
