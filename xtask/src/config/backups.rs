//! Disaster Recovery settings: `[environments.NAME.backups]` in ops.toml.
//! Pure data.

use serde::{Deserialize, Serialize};

/// `[environments.NAME.backups]` in ops.toml. Every key is optional.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// The backup folder, relative to ops.toml; backups go in `<dir>/<env>/`.
    #[serde(default = "default_dir")]
    pub dir: String,
    /// Where pg_dump and pg_restore run: `container` (inside the database
    /// container, through the Docker Engine API) or `host` (PostgreSQL
    /// client tools on this machine, through the connection URL). Default:
    /// `container` when `database.container` is set, else `host`.
    pub method: Option<Method>,
    /// Retention: backups younger than this many days are kept.
    #[serde(default = "default_keep_days")]
    pub keep_days: u64,
    /// Retention: at least this many backups are kept, whatever their age.
    #[serde(default = "default_keep_min")]
    pub keep_min: usize,
    /// A second location (a directory, e.g. a mounted share) each new
    /// backup is copied to and checked at.
    pub offsite: Option<String>,
    /// `backup create --keep-on-server`: a folder inside the database
    /// container, on a volume or bind mount of the server's disk, where the
    /// dump stays (only its manifest comes to this machine).
    pub server_dir: Option<String>,
    /// Folder of pg_dump/pg_restore for `method = "host"` (default:
    /// /usr/lib/postgresql/15/bin when present, else PATH).
    pub pg_bin: Option<String>,
    /// How many databases replaced by `restore` (`<db>__mre_replaced_*`)
    /// `backup prune` keeps, newest first.
    #[serde(default = "default_keep_replaced")]
    pub keep_replaced: usize,
    /// The database to connect to for CREATE/DROP/RENAME DATABASE.
    #[serde(default = "default_maintenance_db")]
    pub maintenance_db: String,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: default_dir(),
            method: None,
            keep_days: default_keep_days(),
            keep_min: default_keep_min(),
            offsite: None,
            pg_bin: None,
            server_dir: None,
            keep_replaced: default_keep_replaced(),
            maintenance_db: default_maintenance_db(),
        }
    }
}

fn default_dir() -> String {
    "backups".into()
}
fn default_keep_days() -> u64 {
    30
}
fn default_keep_min() -> usize {
    7
}
fn default_keep_replaced() -> usize {
    2
}
fn default_maintenance_db() -> String {
    "postgres".into()
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Container,
    Host,
}

// ---------------------------------------------------------------------------
