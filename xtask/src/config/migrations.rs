//! Database Migration Procedures settings: `[environments.NAME.migrations]`
//! in ops.toml. Pure data.

use serde::{Deserialize, Serialize};

/// `[environments.NAME.migrations]` in ops.toml.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct MigrationSettings {
    /// The Prisma migrations folder, relative to ops.toml.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// `native` (mre-ops applies them) or `prisma` (`npx prisma migrate
    /// deploy` inside the app container, as the runbook does).
    #[serde(default)]
    pub runner: Runner,
    /// The container the `prisma` runner executes in (default: the
    /// container of service `mre-app`).
    pub container: Option<String>,
    /// How long to wait for another migrator (ours or Prisma's) to finish.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_secs: u64,
    /// Whether an unaccepted lint finding blocks `deploy`. Default: `block`,
    /// except in the environment named `development` (`warn`).
    pub lint: Option<LintMode>,
    /// Integrity checks a release rehearsal runs on the copy before and
    /// after the migrations: each a `SELECT` returning one boolean, which
    /// must be true (`SELECT count(*) = 0 FROM laps WHERE driver = ''`).
    #[serde(default)]
    pub checks: Vec<String>,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            dir: default_dir(),
            runner: Runner::Native,
            container: None,
            lock_wait_secs: default_lock_wait(),
            lint: None,
            checks: Vec::new(),
        }
    }
}

fn default_dir() -> String {
    "prisma/migrations".into()
}
fn default_lock_wait() -> u64 {
    60
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    #[default]
    Native,
    Prisma,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LintMode {
    Block,
    Warn,
}
