//! Database Migration Procedures: "Apply migration" (`migrate deploy`, and
//! the step of `cargo xtask deploy`): the lint gate, each migration in a
//! transaction when it can, Prisma's bookkeeping with it.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::adapters::output::{Output, Tone};
use crate::config::{Env, LintMode, Runner};
use crate::core::files::uuid_v4;
use crate::core::steps::Plan;

use super::bookkeeping::{quote_ident, Db, Row};
use super::files::{migrations_dir, read_local, Local};
use super::lint::{self, Mode};
use super::prisma::prisma_deploy;
use super::progress;
use super::resume::{invalid_indexes_of, replay_settings, resume_point, Resume};
use super::run::{db_error_text, prisma_style_logs, run_new, run_statements, Outcome, RowRef};
use super::state::{failed_message, indent, read_state, State};
use super::DeployOptions;

pub(super) fn lint_blocks(env: &Env) -> bool {
    match env.settings.migrations.lint {
        Some(LintMode::Block) => true,
        Some(LintMode::Warn) => false,
        None => env.name != "development",
    }
}

/// Lint the pending migrations, knowing the database's tables (a statement
/// on a table that is not there yet, nor created earlier in the batch, is
/// no risk); an error when they block.
pub(super) fn lint_pending(
    env: &Env,
    out: &Output,
    db: &mut Db,
    pending: &[&Local],
    allow_risky: bool,
) -> Result<()> {
    let mut tables = lint::Tables::known(db.relation_names()?);
    let mut open = Vec::new();
    for l in pending {
        let verdict = lint::lint(&l.text(), &mut tables);
        for note in &verdict.notes {
            out.line(&format!("  {}: {note}", l.name));
        }
        for f in verdict.findings {
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
    if !lint_blocks(env) {
        out.line(&format!(
            "Lint findings (not blocking: the lint only warns on `{}`):\n{list}",
            env.name
        ));
        return Ok(());
    }
    if allow_risky {
        out.line(&format!(
            "Lint findings (they block on `{}`; --allow-risky overrode them):\n{list}",
            env.name
        ));
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
    // is a session lock: it goes when this connection closes, whatever
    // happens. A session whose client was killed holds it until the server
    // ends that session, so once we have it, what the row says is final.
    if !opts.dry_run {
        db.lock(out, wait)?;
    }
    let mut state = read_state(env, &mut db)?;
    warn_edited(env, out, &state);
    // A row our transactional run left when it was killed: the server rolled
    // its transaction back (we hold the lock its session held, so that
    // session is gone). Mark it rolled back and apply the migration again.
    let provable: Vec<Row> = state
        .failed()
        .into_iter()
        .filter(|r| progress::killed_in_transaction(r))
        .cloned()
        .collect();
    for r in &provable {
        if opts.dry_run {
            out.line(&format!(
                "Migration `{}` was interrupted while it ran in a transaction (started {}): the server rolled it back; \
                 a real run marks it rolled back and applies it again.",
                r.migration_name, r.started_at
            ));
            continue;
        }
        db.client
            .execute(
                "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE id = $1 AND finished_at IS NULL",
                &[&r.id],
            )
            .context("marking an interrupted migration rolled back")?;
        out.line(&format!(
            "Migration `{}` was interrupted while it ran in a transaction (started {}): the server rolled it back, \
             so it is marked rolled back and applied again.",
            r.migration_name, r.started_at
        ));
    }
    // A dry run leaves the rows as they are: those are applied again all the same.
    let reapplied: Vec<String> = if opts.dry_run {
        provable.iter().map(|r| r.migration_name.clone()).collect()
    } else {
        if !provable.is_empty() {
            state = read_state(env, &mut db)?;
        }
        Vec::new()
    };
    // A file run statement by statement and interrupted: finish it where the
    // database says it stopped.
    let mut resumes: Vec<(Row, Resume)> = Vec::new();
    for r in state.failed() {
        let Some(l) = state.local.iter().find(|l| l.name == r.migration_name) else {
            continue;
        };
        if progress::killed_between_statements(r) {
            resumes.push((r.clone(), resume_point(&mut db, l, r)?));
        }
    }
    let blocking = state.failed().into_iter().find(|r| {
        !reapplied.contains(&r.migration_name)
            && !resumes
                .iter()
                .any(|(x, how)| x.id == r.id && matches!(how, Resume::At { .. }))
    });
    if let Some(r) = blocking {
        let story = resumes
            .iter()
            .find(|(x, _)| x.id == r.id)
            .map(|(_, how)| match how {
                Resume::Manual(why) => (why.clone(), false),
                Resume::At { story, .. } => (story.clone(), true),
            });
        bail!(failed_message(
            env,
            r,
            &state,
            story.as_ref().map(|(t, ok)| (t.as_str(), *ok))
        ));
    }
    // Pending, and those to finish (their rows count as recorded).
    let mut pending: Vec<&Local> = state.pending();
    for name in resumes
        .iter()
        .map(|(r, _)| &r.migration_name)
        .chain(&reapplied)
    {
        if let Some(l) = state.local.iter().find(|l| &l.name == name) {
            pending.push(l);
        }
    }
    pending.sort_by(|a, b| a.name.cmp(&b.name));
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
    lint_pending(env, out, &mut db, &pending, opts.allow_risky)?;

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
        let db = &db;
        if let Some((
            r,
            Resume::At {
                next,
                before,
                story,
            },
        )) = resumes.iter().find(|(r, _)| r.migration_name == l.name)
        {
            let stmts = lint::split(&l.text());
            let mut detail = format!("interrupted earlier: {story}");
            for b in before {
                detail.push_str(&format!("; then {b}"));
            }
            if let Some(s) = stmts.get(*next) {
                detail.push_str(&format!("; from line {}", s.line));
            }
            plan.action(format!("Finish {}", l.name), detail, move || {
                finish_interrupted(env, out, &mut db.borrow_mut(), l, r, *next, before, story)
            });
            continue;
        }
        let stmts = lint::split(&l.text());
        let mode = lint::mode(&stmts);
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

/// One migration, with Prisma's bookkeeping around it (`run`).
pub(super) fn apply_one(
    env: &Env,
    out: &Output,
    db: &mut Db,
    l: &Local,
    mode: &Mode,
) -> Result<()> {
    // The lock has been held since before the state was read: nobody else
    // can have applied it meanwhile.
    let sql = l.text();
    let id = uuid_v4()?;
    let checksum = l.checksum().unwrap_or_default();
    let table = format!("{}._prisma_migrations", quote_ident(&db.schema));
    let row = RowRef {
        table: &table,
        id: &id,
    };
    let start = Instant::now();
    let watch = match db.pid() {
        Ok(pid) => Some(super::watch::watch(out, &db.url, pid, &l.name)),
        Err(_) => None,
    };
    let outcome = run_new(db, &sql, mode, &row, &checksum, &l.name);
    drop(watch);
    conclude(env, out, db, l, &sql, &row, outcome, start)
}

/// Finish a file an interrupted run left between statements, in its row.
#[allow(clippy::too_many_arguments)]
fn finish_interrupted(
    env: &Env,
    out: &Output,
    db: &mut Db,
    l: &Local,
    r: &Row,
    next: usize,
    before: &[String],
    story: &str,
) -> Result<()> {
    out.line(&format!("  {}: {story}", l.name));
    let sql = l.text();
    let stmts = lint::split(&sql);
    // The session the interrupted run had (its SETs), then what the catalog
    // said to do first.
    replay_settings(db, &sql, &stmts, next)?;
    for b in before {
        out.line(&format!("  {b};"));
        db.client
            .batch_execute(b)
            .with_context(|| format!("running `{b}` before finishing {}", l.name))?;
    }
    let table = format!("{}._prisma_migrations", quote_ident(&db.schema));
    let row = RowRef {
        table: &table,
        id: &r.id,
    };
    let mode = match lint::mode(&stmts) {
        Mode::Transaction => Mode::NoTransaction("finishing an interrupted run".into()),
        m => m,
    };
    let start = Instant::now();
    let outcome = run_statements(db, &sql, &stmts, next, &row, &mode);
    conclude(env, out, db, l, &sql, &row, outcome, start)
}

/// Say how a run ended; on failure record Prisma-style `logs` and explain
/// what is in the database and what to do.
#[allow(clippy::too_many_arguments)]
fn conclude(
    env: &Env,
    out: &Output,
    db: &mut Db,
    l: &Local,
    sql: &str,
    row: &RowRef,
    o: Outcome,
    start: Instant,
) -> Result<()> {
    if o.result.is_err() {
        // A script with its own BEGIN, or our own, may have left its
        // transaction open and aborted: close it, or the bookkeeping below
        // cannot run.
        let _ = db.client.batch_execute("ROLLBACK");
    }
    // Session settings a script made (lock_timeout, search_path) end with it.
    let _ = db.client.batch_execute("RESET ALL");
    let _ = db.session_settings();
    if let Some(why) = &o.retried {
        out.line(&format!(
            "  {}: PostgreSQL refused it in a transaction ({why}); it ran statement by statement instead, as psql runs it",
            l.name
        ));
    }
    if let (Err(_), Some(sig)) = (&o.result, crate::core::interrupt::pending()) {
        return Err(interrupted(env, db, l, row, &o, sig));
    }
    let e = match o.result {
        Ok(()) => {
            out.line(&format!(
                "  applied {} {} in {:.2} s",
                l.name,
                o.mode.describe(),
                start.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        Err(e) => e,
    };
    // Prisma's text, and how it ran when that was statement by statement
    // (also after PostgreSQL refused the transaction): `status` reads it to
    // say what stayed applied.
    let mut logs = prisma_style_logs(&l.name, &e);
    if o.mode != Mode::Transaction {
        logs.push_str(&format!(
            "\n{}{} of {} statement(s) committed before the failure (they stay applied).\n",
            progress::STATEMENTS,
            o.committed,
            lint::split(sql).len()
        ));
    }
    let recorded = db
        .client
        .execute(
            &format!("UPDATE {} SET logs = $1 WHERE id = $2", row.table),
            &[&logs, &row.id],
        )
        .map(drop);
    let stmts = lint::split(sql);
    let invalid = invalid_indexes_of(db, sql);
    let state = match o.failed_at {
        None if o.mode == Mode::Transaction => {
            "It ran in a transaction that was rolled back: nothing of it is in the database, the schema is exactly as it was before.".to_string()
        }
        at => {
            let failing = at
                .and_then(|k| stmts.get(k))
                .map(|s| format!(" (line {})", s.line))
                .unwrap_or_default();
            let mut t = format!(
                "It ran statement by statement: {} of {} statement(s) before the failing one{failing} are committed and stay applied. \
                 Reverse them by hand or restore the backup (runbook: Migration Rollback).",
                o.committed,
                stmts.len()
            );
            if !invalid.is_empty() {
                t.push_str(&format!(
                    "\nThe failure left this migration's index(es) INVALID (they exist but are neither used nor enforced); drop them before retrying:\n{}",
                    invalid.iter().map(|i| format!("  DROP INDEX CONCURRENTLY {i};")).collect::<Vec<_>>().join("\n")
                ));
            }
            t
        }
    };
    match recorded {
        Ok(()) => bail!(
            "migration `{}` failed {}:\n{}\n{state}\n\
             It is recorded as failed (its error is in its row's logs), and deploy refuses to run until it is resolved. \
             Next: fix {}/migration.sql, then\n  \
             cargo xtask migrate resolve --rolled-back {} {env}\n  cargo xtask migrate deploy {env}",
            l.name,
            o.mode.describe(),
            indent(&db_error_text(&e)),
            l.dir,
            l.name,
            env = env.name
        ),
        Err(rec) => bail!(
            "migration `{}` failed {}:\n{}\n{state}\n\
             Its error could not be recorded in _prisma_migrations ({rec}); `cargo xtask migrate status {}` shows what its row says",
            l.name,
            o.mode.describe(),
            indent(&db_error_text(&e)),
            env.name
        ),
    }
}

/// Ctrl-C or SIGTERM cancelled the migration's SQL (`run::cancellable`):
/// a transaction is rolled back, and its row says so (Prisma applies a
/// rolled-back migration again); statement by statement, the row's count
/// stays for `deploy` to finish the file.
fn interrupted(
    env: &Env,
    db: &mut Db,
    l: &Local,
    row: &RowRef,
    o: &Outcome,
    sig: i32,
) -> anyhow::Error {
    let signal = anyhow::Error::new(crate::core::interrupt::Interrupted(sig));
    if o.failed_at.is_none() && o.mode == Mode::Transaction {
        let marked = db.client.execute(
            &format!(
                "UPDATE {} SET rolled_back_at = now(), logs = $1 WHERE id = $2 AND finished_at IS NULL",
                row.table
            ),
            &[&progress::INTERRUPTED_TRANSACTION, &row.id],
        );
        let how = match marked {
            Ok(_) => "it is marked rolled back",
            Err(_) => "its row stays unfinished (the next deploy marks it rolled back)",
        };
        return signal.context(format!(
            "migration `{}` was interrupted: its transaction was rolled back, nothing of it is in the database, and {how}. \
             `cargo xtask migrate deploy {}` applies it again",
            l.name, env.name
        ));
    }
    signal.context(format!(
        "migration `{}` was interrupted after {} of its statement(s) committed (they stay applied; the row counts them). \
         `cargo xtask migrate status {env}` says where it stopped; `cargo xtask migrate deploy {env}` finishes it",
        l.name,
        o.committed,
        env = env.name
    ))
}
