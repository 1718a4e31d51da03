//! Database Migration Procedures: Prisma migrations applied, checked, created,
//! reviewed and resolved (runbook: Migration Workflow, Migration Best
//! Practices, Migration Rollback). The bookkeeping is Prisma Migrate's own
//! (`_prisma_migrations`, advisory lock 72707369, checksums), so that
//! `npx prisma migrate deploy` and `cargo xtask migrate deploy` can take turns
//! on one database (shared/reference/prisma-migrate.md). Where it differs, it
//! is safer: each migration runs in a transaction when it can, and a lint
//! reviews the SQL before staging and production.
//!
//! This file holds the command line and what other sections call; the rest
//! is split by concern: `files` (the migrations on disk), `bookkeeping`
//! (`_prisma_migrations` and the lock), `state` (status), `apply` (deploy),
//! `run` (one migration's SQL and its row), `progress` and `resume` (a run
//! interrupted between statements), `prisma` (the prisma runner),
//! `authoring` (new, review, resolve), `lint` (the statement splitter, how a
//! file must run, the safety lint).

mod apply;
mod authoring;
mod bookkeeping;
mod files;
mod lint;
mod prisma;
mod progress;
mod resume;
mod run;
mod schema;
mod state;
mod watch;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Env, Ops, Runner};
use crate::core::session;
use crate::core::wait::{self, Poll, Waited};

pub use apply::deploy;
use apply::lint_pending;
use authoring::{new, resolve, review};
pub use bookkeeping::split_schema;
use bookkeeping::Db;
pub use schema::{fingerprint, pending, run_times, Pending};
use state::{read_state, status};

/// Apply, inspect, create, review and resolve Prisma migrations.
///
/// Runbook: Database Migration Procedures. Compatible with `npx prisma
/// migrate`: both read and write the same `_prisma_migrations` table.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    #[command(subcommand)]
    cmd: MigrateCmd,
}

#[derive(clap::Subcommand, Debug)]
enum MigrateCmd {
    /// Show applied, pending and failed migrations, and those edited after
    /// they were applied or missing on disk. Exit 1 when any is pending or failed.
    Status {
        /// Environment from ops.toml.
        #[arg(default_value = "development")]
        env: String,
        /// Also exit 1 on drift: an applied migration edited since, or
        /// recorded but gone from disk (a CI gate).
        #[arg(long)]
        strict: bool,
    },
    /// Apply pending migrations ("Apply migration"), each in a transaction
    /// when it can. On staging and production the lint must pass first, and
    /// a backup is taken when backups are configured or the environment is
    /// protected ("Backup database before migration").
    Deploy {
        #[arg(default_value = "development")]
        env: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
        /// Deploy even with unaccepted lint findings.
        #[arg(long)]
        allow_risky: bool,
    },
    /// Create prisma/migrations/<UTC timestamp>_NAME/migration.sql ("Create migration").
    New {
        /// Lowercase letters, digits and underscores (`add_lap_sector`).
        name: String,
        /// The environment whose migrations folder to use.
        #[arg(long, default_value = "development")]
        env: String,
    },
    /// Print each pending migration's SQL with the lint's findings ("Review
    /// migration SQL before production"). Exit 1 on an unaccepted finding.
    Review {
        #[arg(default_value = "development")]
        env: String,
        /// Review every migration on disk, not just the pending ones (no database needed).
        #[arg(long)]
        all: bool,
    },
    /// Record a migration as applied (baselining; a fix applied by hand) or
    /// as rolled back (after a failure, so that `deploy` applies it again).
    Resolve {
        /// Mark NAME applied without running it.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "rolled_back",
            required_unless_present = "rolled_back"
        )]
        applied: Option<String>,
        /// Mark the failed migration NAME rolled back.
        #[arg(long, value_name = "NAME")]
        rolled_back: Option<String>,
        /// Environment from ops.toml.
        #[arg(default_value = "development")]
        env: String,
        /// Print what would be recorded without recording it.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn migrate(ops: &Ops, out: &Output, args: &MigrateArgs) -> Result<()> {
    match &args.cmd {
        MigrateCmd::Status { env, strict } => status(&session::env(ops, out, env)?, out, *strict),
        MigrateCmd::Deploy {
            env,
            dry_run,
            allow_risky,
        } => {
            let env = session::env(ops, out, env)?;
            let backup = needs_backup(&env)?;
            // The environment's lock (beside Prisma's advisory lock, which
            // only orders migrators): no restore or release meanwhile.
            let _lock = if *dry_run {
                None
            } else {
                Some(crate::core::lock::acquire_waiting(
                    &env,
                    out,
                    &format!("migrate deploy {}", env.name),
                    Duration::from_secs(env.settings.migrations.lock_wait_secs),
                )?)
            };
            deploy(
                &env,
                out,
                &DeployOptions {
                    dry_run: *dry_run,
                    allow_risky: *allow_risky,
                    backup,
                    report: true,
                },
            )
        }
        MigrateCmd::New { name, env } => new(&session::env(ops, out, env)?, out, name),
        MigrateCmd::Review { env, all } => review(&session::env(ops, out, env)?, out, *all),
        MigrateCmd::Resolve {
            applied,
            rolled_back,
            env,
            dry_run,
        } => {
            let env = session::env(ops, out, env)?;
            let _lock = crate::core::lock::unless_dry_run(
                *dry_run,
                &env,
                out,
                &format!("migrate resolve {}", env.name),
            )?;
            match (applied, rolled_back) {
                (Some(name), None) => resolve(&env, out, name, true, *dry_run),
                (None, Some(name)) => resolve(&env, out, name, false, *dry_run),
                _ => Err(config_error(
                    "give one of --applied NAME or --rolled-back NAME",
                )),
            }
        }
    }
}

/// How `deploy` runs: for `migrate deploy`, the step of `cargo xtask
/// deploy`, the checklist's dry run and releases.
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

/// Whether `deploy` backs the database up first: when `[backups]` is
/// configured; a protected environment without it is refused.
pub fn needs_backup(env: &Env) -> Result<bool> {
    if env.settings.backups.is_some() {
        return Ok(true);
    }
    if env.settings.protected {
        return Err(config_error(format!(
            "`{}` is protected, and migrating it needs a backup first (runbook: \"Backup database before migration\"), \
             but ops.toml has no [environments.{}.backups]. Configure backups (docs/ops-toml.md), then run this again",
            env.name, env.name
        )));
    }
    Ok(false)
}

// ---------------------------------------------------------------------------
// Used by `cargo xtask deploy`.

/// Wait (bounded) until the database accepts connections.
pub fn wait_for_database(env: &Env, out: &Output, limit: Duration) -> Result<()> {
    let (url, _) = split_schema(&env.database_url()?);
    let waited = wait::until(
        out,
        "the database to accept connections",
        limit,
        Duration::from_millis(500),
        || {
            Ok(
                match crate::adapters::postgres::select_one(&url, Duration::from_secs(3)) {
                    Ok(()) => Poll::Ready(()),
                    Err(e) => Poll::Pending(format!("{e:#}")),
                },
            )
        },
    )?;
    match waited {
        Waited::Ready(()) => Ok(()),
        Waited::TimedOut(last) => bail!(
            "the database of `{}` did not accept connections within {} s: {last}",
            env.name,
            limit.as_secs()
        ),
    }
}

/// The "Back up the database" step of `cargo xtask deploy`: lints first (no
/// backup for a deploy the lint will refuse), backs up only when something
/// is pending.
pub fn backup_before_migrating(env: &Env, out: &Output, allow_risky: bool) -> Result<()> {
    if !lint_before_backup(env, out, allow_risky)? {
        out.line("No pending migrations: no backup needed.");
        return Ok(());
    }
    // create_backup prints the path it wrote.
    crate::disaster_recovery::create_backup(env, out, "before migration")?;
    Ok(())
}

/// The lint of the pending migrations, run before a backup is taken for
/// them (a deploy the lint refuses costs no backup). Ok(false) when nothing
/// is pending; with the `prisma` runner (which lints nothing) Ok(true).
pub fn lint_before_backup(env: &Env, out: &Output, allow_risky: bool) -> Result<bool> {
    if env.settings.migrations.runner != Runner::Native {
        return Ok(true);
    }
    let mut db = Db::open(env)?;
    let state = read_state(env, &mut db)?;
    let pending = state.pending();
    if pending.is_empty() {
        return Ok(false);
    }
    lint_pending(env, out, &mut db, &pending, allow_risky)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::files::{checksum_matches, sha256_hex};
    use super::*;

    #[test]
    fn schema_parameter() {
        assert_eq!(
            split_schema("postgres://u:p@h:1/d?schema=app&sslmode=disable"),
            ("postgres://u:p@h:1/d?sslmode=disable".into(), "app".into())
        );
        assert_eq!(
            split_schema("postgres://u@h/d"),
            ("postgres://u@h/d".into(), "public".into())
        );
    }

    #[test]
    fn crlf_variants_match() {
        let lf = b"CREATE TABLE a (x int);\n";
        let crlf = b"CREATE TABLE a (x int);\r\n";
        assert!(checksum_matches(crlf, &sha256_hex(lf)));
        assert!(checksum_matches(lf, &sha256_hex(crlf)));
        assert!(!checksum_matches(b"other", &sha256_hex(lf)));
    }
}
