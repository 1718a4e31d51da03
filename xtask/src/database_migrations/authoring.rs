//! Database Migration Procedures: "Create migration" (`migrate new`),
//! "Review migration SQL before production" (`migrate review`) and
//! Migration Rollback's bookkeeping (`migrate resolve`).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::clock::Utc;
use crate::adapters::output::{Output, Tone};
use crate::config::{config_error, Env};
use crate::core::files::uuid_v4;
use crate::core::steps::Plan;

use super::bookkeeping::{Db, Row, LOCK_FILE_TEXT};
use super::files::{migrations_dir, read_local, Local};
use super::lint;
use super::state::read_state;

// resolve

pub(super) fn resolve(
    env: &Env,
    out: &Output,
    name: &str,
    applied: bool,
    dry_run: bool,
) -> Result<()> {
    let local = read_local(env)?;
    let mut db = Db::open(env)?;
    let flag = if applied {
        "--applied"
    } else {
        "--rolled-back"
    };
    let mut plan = Plan::new(format!("migrate resolve {flag} {name} ({})", env.name));
    let wait = Duration::from_secs(env.settings.migrations.lock_wait_secs);
    let db = RefCell::new(&mut db);
    if applied {
        let Some(l) = local.iter().find(|l| l.name == name) else {
            return Err(config_error(format!(
                "no migration `{name}` in {}: `cargo xtask migrate status {}` lists them",
                migrations_dir(env),
                env.name
            )));
        };
        let Some(checksum) = l.checksum() else {
            bail!("{}/migration.sql is missing (Prisma: P3015)", l.dir);
        };
        plan.action(
            format!("Record {name} as applied"),
            format!(
                "take lock 72707369; create _prisma_migrations if missing; mark its unfinished rows rolled back; \
                 INSERT a finished row (checksum {}), without running its SQL",
                &checksum[..12]
            ),
            move || {
                let mut db = db.borrow_mut();
                db.lock(out, wait)?;
                let r = (|| {
                    db.ensure_table(env, true)?;
                    let rows = db.rows()?;
                    if rows.iter().any(|r| r.migration_name == name && r.finished_at.is_some() && r.rolled_back_at.is_none()) {
                        return Err(config_error(format!(
                            "migration `{name}` is already recorded as applied in `{}` (Prisma: P3008): nothing to resolve",
                            env.name
                        )));
                    }
                    db.client.execute(
                        "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = $1 AND finished_at IS NULL AND rolled_back_at IS NULL",
                        &[&name],
                    )?;
                    db.client.execute(
                        "INSERT INTO _prisma_migrations (id, checksum, started_at, finished_at, migration_name, logs, applied_steps_count) \
                         VALUES ($1, $2, now(), now(), $3, '', 0)",
                        &[&uuid_v4()?, &checksum, &name.to_string()],
                    ).context("recording the migration as applied")?;
                    out.line(&format!("Migration {name} marked as applied."));
                    Ok(())
                })();
                db.unlock();
                r
            },
        );
    } else {
        plan.action(
            format!("Record {name} as rolled back"),
            "take lock 72707369; UPDATE its failed rows SET rolled_back_at = now(), so that deploy applies it again",
            move || {
                let mut db = db.borrow_mut();
                db.lock(out, wait)?;
                let r = (|| {
                    let rows = if db.table_exists()? { db.rows()? } else { Vec::new() };
                    let mine: Vec<&Row> = rows.iter().filter(|r| r.migration_name == name).collect();
                    if mine.is_empty() {
                        return Err(config_error(format!(
                            "migration `{name}` is not recorded in `{}` at all: nothing to roll back (Prisma: P3011)",
                            env.name
                        )));
                    }
                    if !mine.iter().any(|r| r.failed()) {
                        return Err(config_error(format!(
                            "migration `{name}` is not in a failed state in `{}` (Prisma: P3012): only a failed migration can be \
                             marked rolled back. To undo an applied migration, write a new migration that reverses it",
                            env.name
                        )));
                    }
                    db.client.execute(
                        "UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = $1 AND finished_at IS NULL AND rolled_back_at IS NULL",
                        &[&name],
                    ).context("recording the migration as rolled back")?;
                    out.line(&format!(
                        "Migration {name} marked as rolled back: `cargo xtask migrate deploy {}` applies it again.",
                        env.name
                    ));
                    Ok(())
                })();
                db.unlock();
                r
            },
        );
    }
    plan.execute(out, dry_run)
}

// ---------------------------------------------------------------------------
// new

pub(super) fn new(env: &Env, out: &Output, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || !name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
    {
        return Err(config_error(format!(
            "`{name}` is not a valid migration name: use lowercase letters, digits and underscores, \
             starting with a letter, at most 200 characters (e.g. add_lap_sector)"
        )));
    }
    let dir = migrations_dir(env);
    let stamp = Utc::now().compact();
    let folder = dir.join(format!("{stamp}_{name}"));
    let existing = read_local(env)?;
    if let Some(last) = existing.last() {
        if last.name.as_str() >= folder.file_name().unwrap_or("") {
            bail!(
                "the newest migration `{}` sorts after `{stamp}_{name}`: is this machine's clock right? Migrations apply in folder-name order",
                last.name
            );
        }
    }
    if let Some(same) = existing
        .iter()
        .find(|l| l.name.split_once('_').map(|x| x.1) == Some(name))
    {
        out.line(&format!(
            "note: a migration with this name exists already: {}",
            same.name
        ));
    }
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {folder}"))?;
    let lock = dir.join("migration_lock.toml");
    if !lock.exists() {
        std::fs::write(&lock, LOCK_FILE_TEXT).with_context(|| format!("writing {lock}"))?;
    }
    let file = folder.join("migration.sql");
    let text = format!(
        "-- {name}: created {} by `cargo xtask migrate new`.\n\
         -- Fail fast rather than queue behind long transactions (lint rule require-lock-timeout).\n\
         SET lock_timeout = '5s';\n\n",
        Utc::now().rfc3339()
    );
    std::fs::write(&file, text).with_context(|| format!("writing {file}"))?;
    if out.json {
        out.json_doc(&serde_json::json!({ "created": file.as_str() }));
    } else {
        out.line(&format!("Created {file}"));
        out.line(&format!(
            "Write its SQL, then `cargo xtask migrate review {0}` and `cargo xtask migrate deploy {0}`.",
            env.name
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// review

pub(super) fn review(env: &Env, out: &Output, all: bool) -> Result<()> {
    let local = read_local(env)?;
    let mut db = if all { None } else { Some(Db::open(env)?) };
    let list: Vec<&Local> = match &mut db {
        None => local.iter().collect(),
        Some(db) => {
            let state = read_state(env, db)?;
            let pending: BTreeSet<String> =
                state.pending().iter().map(|l| l.name.clone()).collect();
            local.iter().filter(|l| pending.contains(&l.name)).collect()
        }
    };
    // The database's tables when it is read (pending), else none known.
    let mut tables = match &mut db {
        Some(db) => lint::Tables::known(db.relation_names()?),
        None => lint::Tables::default(),
    };
    let mut docs = Vec::new();
    let mut open = 0;
    for l in &list {
        // --all: each migration as if it were the only new one (a table made
        // by an earlier migration is not "new" to a later one's review).
        if all {
            tables = lint::Tables::default();
        }
        if l.sql.is_none() {
            open += 1;
            let what = format!(
                "{}/migration.sql is missing: deploy stops here (Prisma: P3015). Add the file or remove the folder",
                l.dir
            );
            if !out.json {
                out.line(&format!(
                    "=== {}\n  {} {what}\n",
                    l.name,
                    out.paint(Tone::Warn, "finding ")
                ));
            }
            docs.push(serde_json::json!({ "name": l.name, "findings": [{ "rule": "missing-migration-sql", "reason": what }] }));
            continue;
        }
        let text = l.text();
        let stmts = lint::split(&text);
        let mode = lint::mode(&stmts);
        let verdict = lint::lint(&text, &mut tables);
        let findings = verdict.findings;
        open += findings.iter().filter(|f| !f.allowed).count();
        if !out.json {
            out.line(&format!(
                "=== {} ({} statement(s), runs {})",
                l.name,
                stmts.len(),
                mode.describe()
            ));
            for (i, line) in text.lines().enumerate() {
                out.line(&format!("{:>4} | {line}", i + 1));
            }
            for f in &findings {
                let label = if f.allowed {
                    out.paint(Tone::Dim, "accepted")
                } else {
                    out.paint(Tone::Warn, "finding ")
                };
                out.line(&format!(
                    "  {label} line {}: {}: {}",
                    f.line, f.rule, f.reason
                ));
                out.line(&format!("           safer: {}", f.instead));
            }
            for note in &verdict.notes {
                out.line(&format!("  {} {note}", out.paint(Tone::Warn, "not linted")));
            }
            if findings.is_empty() {
                out.line(&format!("  {}", out.paint(Tone::Good, "no findings")));
            }
            out.line("");
        }
        docs.push(serde_json::json!({
            "name": l.name, "mode": mode.describe(), "statements": stmts.len(),
            "checksum": l.checksum(), "findings": findings, "not_linted": verdict.notes,
        }));
    }
    if out.json {
        out.json_doc(
            &serde_json::json!({ "environment": env.name, "migrations": docs, "unaccepted": open }),
        );
    } else if list.is_empty() {
        out.line("No pending migrations to review.");
    }
    if open > 0 {
        bail!(
            "{open} unaccepted lint finding(s): make the statements safer, or accept one with `-- mre-ops:allow RULE` above it"
        );
    }
    Ok(())
}
