//! Database Migration Procedures (STUB: being written; see issue 3).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::adapters::output::Output;
use crate::deployment_architecture::Ops;

/// `[environments.NAME.migrations]` in ops.toml.
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct MigrationSettings {}

/// Apply, inspect and create Prisma migrations (runbook: Database Migration Procedures).
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {}

pub fn migrate(_ops: &Ops, _out: &Output, _args: &MigrateArgs) -> Result<()> {
    bail!("not implemented yet")
}
