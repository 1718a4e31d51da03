//! Disaster Recovery Procedures (STUB: being written; see issue 4).

use anyhow::{bail, Result};
use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

use crate::adapters::output::Output;
use crate::deployment_architecture::{Env, Ops};

/// `[environments.NAME.backups]` in ops.toml.
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {}

/// Create, list, verify and prune database backups (runbook: Disaster Recovery).
#[derive(clap::Args, Debug)]
pub struct BackupArgs {}

/// Restore an environment's database from a backup (runbook: Database Rollback).
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {}

/// Rehearse recovery without touching anything live (runbook: Recovery Procedures).
#[derive(clap::Args, Debug)]
pub struct DrillArgs {}

pub fn backup(_ops: &Ops, _out: &Output, _args: &BackupArgs) -> Result<()> {
    bail!("not implemented yet")
}
pub fn restore(_ops: &Ops, _out: &Output, _args: &RestoreArgs) -> Result<()> {
    bail!("not implemented yet")
}
pub fn drill(_ops: &Ops, _out: &Output, _args: &DrillArgs) -> Result<()> {
    bail!("not implemented yet")
}

/// Take a verified-checksum backup of `env`'s database now (used by
/// `migrate deploy` and `deploy` on staging and production: "Backup database
/// before migration"). Returns the path of the backup written.
pub fn create_backup(_env: &Env, _out: &Output, _reason: &str) -> Result<Utf8PathBuf> {
    bail!("not implemented yet")
}
