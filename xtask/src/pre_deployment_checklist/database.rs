//! Pre-Deployment Checklist, Database Checks: the pending migrations pass
//! the lint (a dry run of `migrate deploy`), every migration pending here is
//! already applied on staging, a verified backup younger than
//! `backup_max_age_hours` exists (read from the backup manifests), and a
//! rollback plan: the previous release from the journal, that backup.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::Deserialize;

use super::{Ctx, DATABASE};
use crate::adapters::output::Output;
use crate::adapters::{clock, postgres};
use crate::config::Env;
use crate::config::Runner;
use crate::core::check::Check;
use crate::core::journal;
use crate::core::session;
use crate::database_migrations;

pub(super) fn checks(ctx: &Ctx) -> Vec<Check> {
    let backup = newest_verified_backup(ctx.env);
    vec![
        reviewed(ctx.env),
        tested_in_staging(ctx),
        backup_created(ctx, &backup),
        rollback_plan(ctx, &backup),
    ]
}

/// "Database migrations reviewed": the lint, as `migrate deploy` runs it
/// (clean, or findings accepted with `-- mre-ops:allow`, or not blocking in
/// this environment), through a dry run that changes nothing.
fn reviewed(env: &Env) -> Check {
    let name = "Database migrations reviewed";
    let start = Instant::now();
    let target = format!("{}/{}", env.dir, env.settings.migrations.dir);
    if env.settings.database.is_none() {
        return Check::skip(
            name.into(),
            DATABASE,
            target,
            "no [database] in ops.toml".into(),
        );
    }
    if env.settings.migrations.runner == Runner::Prisma {
        return Check::warn(
            name.into(),
            DATABASE,
            target,
            format!(
                "runner = \"prisma\": Prisma applies them unlinted; read them with `cargo xtask migrate review {}`",
                env.name
            ),
            start.elapsed(),
        );
    }
    // The dry run prints its plan: keep it out of this report.
    let quiet = Output::new(false, true, 0);
    let opts = database_migrations::DeployOptions {
        dry_run: true,
        allow_risky: false,
        backup: false,
        report: false,
    };
    match database_migrations::deploy(env, &quiet, &opts) {
        Ok(()) => {
            let pending = pending(env).map(|p| p.len());
            Check::pass(
                name.into(),
                DATABASE,
                target,
                match pending {
                    Ok(0) => "nothing pending".into(),
                    Ok(n) => format!("{n} pending, the lint passes (`migrate deploy --dry-run`)"),
                    Err(_) => "the lint passes (`migrate deploy --dry-run`)".into(),
                },
                start.elapsed(),
            )
        }
        Err(e) => Check::fail(
            name.into(),
            DATABASE,
            target,
            "pending migrations that pass the lint",
            format!("{e:#}"),
            format!("`cargo xtask migrate review {}`", env.name),
            start.elapsed(),
        ),
    }
}

/// "Migration scripts tested in staging": every migration pending here is
/// applied on the staging environment's database.
fn tested_in_staging(ctx: &Ctx) -> Check {
    let name = "Migration scripts tested in staging";
    let env = ctx.env;
    let start = Instant::now();
    let configured = env.settings.preflight.staging.clone();
    let staging = match configured {
        Some(s) => s,
        None if env.name == "development" || env.name == "staging" => {
            return Check::skip(
                name.into(),
                DATABASE,
                env.name.clone(),
                format!("`{}` is where migrations are tried first", env.name),
            )
        }
        None if ctx.ops.names().contains(&"staging") => "staging".into(),
        None => {
            return Check::manual(
                name.into(),
                DATABASE,
                env.name.clone(),
                "no staging environment in ops.toml".into(),
                format!(
                    "set preflight.staging in [environments.{}] to the environment migrations are tested on",
                    env.name
                ),
            )
        }
    };
    if env.settings.database.is_none() {
        return Check::skip(
            name.into(),
            DATABASE,
            staging,
            "no [database] in ops.toml".into(),
        );
    }
    let fail = |got: String, next: String| {
        Check::fail(
            name.into(),
            DATABASE,
            staging.clone(),
            "every migration pending here applied on staging",
            got,
            next,
            start.elapsed(),
        )
    };
    let here = match pending(env) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                format!("{e:#}"),
                format!("`cargo xtask migrate status {}`", env.name),
            )
        }
    };
    if here.is_empty() {
        return Check::pass(
            name.into(),
            DATABASE,
            staging,
            format!("nothing pending in `{}`", env.name),
            start.elapsed(),
        );
    }
    let staging_env = match ctx.ops.resolve(&staging) {
        Ok(s) => s,
        Err(e) => return fail(format!("{e:#}"), "fix preflight.staging in ops.toml".into()),
    };
    session::protect(&staging_env);
    let there = match applied(&staging_env) {
        Ok(a) => a,
        Err(e) => {
            return fail(
                format!("{e:#}"),
                format!("is `{staging}` running? `cargo xtask health {staging}`"),
            )
        }
    };
    let missing: Vec<&String> = here.iter().filter(|m| !there.contains(*m)).collect();
    if missing.is_empty() {
        Check::pass(
            name.into(),
            DATABASE,
            staging.clone(),
            format!("{} pending here, all applied on `{staging}`", here.len()),
            start.elapsed(),
        )
    } else {
        fail(
            format!(
                "{} not applied on `{staging}`: {}",
                missing.len(),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("deploy to staging first: `cargo xtask deploy {staging}`"),
        )
    }
}

/// Migrations on disk that the environment's database has not applied.
fn pending(env: &Env) -> Result<Vec<String>> {
    let dir = env.dir.join(&env.settings.migrations.dir);
    let mut local = Vec::new();
    if dir.exists() {
        for entry in dir
            .read_dir_utf8()
            .with_context(|| format!("reading the migrations folder {dir}"))?
        {
            let entry = entry.with_context(|| format!("reading {dir}"))?;
            if entry.path().join("migration.sql").exists() {
                local.push(entry.file_name().to_string());
            }
        }
    }
    local.sort();
    let done = applied(env)?;
    Ok(local.into_iter().filter(|m| !done.contains(m)).collect())
}

/// The migrations recorded as applied (Prisma's `_prisma_migrations`).
fn applied(env: &Env) -> Result<BTreeSet<String>> {
    let (url, schema) = database_migrations::split_schema(&env.database_url()?);
    let mut client = postgres::connect(&url, Duration::from_secs(5))?;
    let exists: bool = client
        .query_one(
            "SELECT count(*) > 0 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = '_prisma_migrations'",
            &[&schema],
        )
        .context("looking for _prisma_migrations")?
        .get(0);
    if !exists {
        return Ok(BTreeSet::new());
    }
    let table = format!("\"{}\"._prisma_migrations", schema.replace('"', "\"\""));
    let rows = client
        .query(
            &format!("SELECT migration_name FROM {table} WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL"),
            &[],
        )
        .context("reading _prisma_migrations")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// ---------------------------------------------------------------------------
// The backup manifests (`<backups.dir>/<env>/*.json`, written by `cargo
// xtask backup`), read here as plain JSON: only the fields needed.

#[derive(Deserialize)]
struct Manifest {
    file: String,
    size: u64,
    environment: String,
    started_unix: i64,
    #[serde(default)]
    verifications: Vec<Verification>,
}

#[derive(Deserialize)]
struct Verification {
    at: String,
    ok: bool,
}

/// The newest backup whose last verification passed.
struct Found {
    name: String,
    age: Duration,
    verified_at: String,
}

type Scan = Result<Option<Found>, String>;

fn backup_folder(env: &Env) -> Option<Utf8PathBuf> {
    let b = env.settings.backups.as_ref()?;
    Some(env.dir.join(&b.dir).join(&env.name))
}

fn newest_verified_backup(env: &Env) -> Scan {
    let Some(folder) = backup_folder(env) else {
        return Err(format!(
            "no [environments.{}.backups] in ops.toml",
            env.name
        ));
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot list {folder}: {e}")),
    };
    let now = clock::unix_secs(std::time::SystemTime::now());
    let mut best: Option<(i64, Found)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
            continue;
        };
        let dump = folder.join(&m.file);
        let complete = std::fs::metadata(&dump).is_ok_and(|d| d.len() == m.size);
        let Some(v) = m.verifications.last().filter(|v| v.ok) else {
            continue;
        };
        if m.environment != env.name || !complete {
            continue;
        }
        if best.as_ref().is_none_or(|(t, _)| m.started_unix > *t) {
            best = Some((
                m.started_unix,
                Found {
                    name: m.file.trim_end_matches(".dump").to_string(),
                    age: Duration::from_secs((now - m.started_unix).max(0) as u64),
                    verified_at: v.at.clone(),
                },
            ));
        }
    }
    Ok(best.map(|(_, f)| f))
}

fn hours(d: Duration) -> String {
    format!("{:.1} h", d.as_secs_f64() / 3600.0)
}

/// "Backup of production database created": verified, younger than the limit.
fn backup_created(ctx: &Ctx, scan: &Scan) -> Check {
    let env = ctx.env;
    let name = "Backup of production database created";
    let max = env.settings.preflight.backup_max_age_hours;
    let target = backup_folder(env)
        .map(|f| f.to_string())
        .unwrap_or_else(|| "(none)".into());
    let next = format!(
        "`cargo xtask backup create {0}` then `cargo xtask backup verify {0} latest`",
        env.name
    );
    let missing = |got: String, next: String| {
        if env.settings.protected {
            Check::fail(
                name.into(),
                DATABASE,
                target.clone(),
                &format!("a verified backup younger than {max} h"),
                got,
                next,
                Duration::ZERO,
            )
        } else {
            Check {
                next: Some(next),
                ..Check::warn(name.into(), DATABASE, target.clone(), got, Duration::ZERO)
            }
        }
    };
    let fresh = matches!(scan, Ok(Some(f)) if f.age.as_secs_f64() <= max * 3600.0);
    if ctx.deploying && !fresh && env.settings.protected {
        return Check::pass(
            name.into(),
            DATABASE,
            target,
            "the deploy's next step takes a backup and verifies it (a full restore) before any change".into(),
            Duration::ZERO,
        );
    }
    match scan {
        Err(why) => missing(
            why.clone(),
            format!(
                "configure [environments.{}.backups] (docs/ops-toml.md), then {next}",
                env.name
            ),
        ),
        Ok(None) => missing(format!("no verified backup in {target}"), next),
        Ok(Some(f)) if f.age.as_secs_f64() > max * 3600.0 => missing(
            format!(
                "the newest verified backup, {}, is {} old",
                f.name,
                hours(f.age)
            ),
            next,
        ),
        Ok(Some(f)) => Check::pass(
            name.into(),
            DATABASE,
            target,
            format!(
                "{}: {} old, verified {}",
                f.name,
                hours(f.age),
                f.verified_at
            ),
            Duration::ZERO,
        ),
    }
}

/// "Rollback plan documented": the application goes back to the kept
/// previous release (`cargo xtask rollback`, from the release journal), the
/// database to the newest verified backup (or the one the deploy takes).
fn rollback_plan(ctx: &Ctx, scan: &Scan) -> Check {
    let env = ctx.env;
    let name = "Rollback plan documented";
    let app = previous_release(env);
    let db = match scan {
        Ok(Some(f)) => Some(format!(
            "database: `cargo xtask restore {} {}` (verified {})",
            env.name, f.name, f.verified_at
        )),
        _ if ctx.deploying && env.settings.protected => Some(format!(
            "database: `cargo xtask rollback {} --with-db pre-deploy` (the backup this deploy takes)",
            env.name
        )),
        _ => None,
    };
    let app_text = match &app {
        Some(v) => format!(
            "application: `cargo xtask rollback {}` returns to {v}",
            env.name
        ),
        None => "application: no release in the journal to return to".to_string(),
    };
    match db {
        Some(db) => Check::pass(
            name.into(),
            DATABASE,
            env.name.clone(),
            format!("{db}; {app_text}"),
            Duration::ZERO,
        ),
        None if env.settings.protected => Check::fail(
            name.into(),
            DATABASE,
            env.name.clone(),
            "a verified backup to restore",
            format!("none; {app_text}"),
            format!(
                "`cargo xtask backup create {0}` then `cargo xtask backup verify {0} latest`",
                env.name
            ),
            Duration::ZERO,
        ),
        None => Check {
            next: Some(format!(
                "`cargo xtask backup create {0}` then `backup verify {0} latest`",
                env.name
            )),
            ..Check::warn(
                name.into(),
                DATABASE,
                env.name.clone(),
                format!("no verified backup to restore; {app_text}"),
                Duration::ZERO,
            )
        },
    }
}

/// The release `rollback` would return to after the next deploy (the live
/// one), when the environment has releases and a journal (read only:
/// never created here).
fn previous_release(env: &Env) -> Option<String> {
    env.settings.release.as_ref()?;
    let mut j = journal::Journal::existing(env).ok()??;
    let entries = j.entries().ok()?;
    journal::current(&entries).map(|e| e.version.clone())
}
