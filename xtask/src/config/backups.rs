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
    /// A second location each new backup is copied to and checked at: a
    /// directory (e.g. a mounted share, relative to ops.toml), or another
    /// host over SSH, `ssh://[user@]host[:port]/absolute/path`, where the
    /// copy is encrypted with age (`offsite_recipients`).
    pub offsite: Option<String>,
    /// `-F` for the off-site host's SSH connection (relative to ops.toml).
    pub offsite_ssh_config: Option<String>,
    /// age recipients (`age1...` public keys) the off-site copy over SSH is
    /// encrypted to; its key never goes to that host.
    #[serde(default)]
    pub offsite_recipients: Vec<String>,
    /// The variable holding the age identity (`AGE-SECRET-KEY-1...`, or
    /// the path of a file with it) that `backup fetch` and `drill
    /// --from-offsite` decrypt with.
    pub offsite_identity_env: Option<String>,
    /// Retention at the off-site location (default: `keep_days`); at least
    /// `keep_min` stay there too.
    pub offsite_keep_days: Option<u64>,
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
    /// Continuous archiving (`backup continuous start`): base backups and
    /// every WAL segment, streamed by `pg_receivewal` in a helper container
    /// beside `database.container`, into `<dir>/<env>/archive/`.
    #[serde(default)]
    pub continuous: bool,
    /// `backup status` and `monitor` alert when the archive is further
    /// behind the database than this (`"1m"`, `"30s"`, seconds).
    #[serde(default = "default_max_archive_lag")]
    pub max_archive_lag: String,
    /// The port the database listens on inside its container, as the
    /// archiver (on the same Docker network) reaches it.
    #[serde(default = "default_container_port")]
    pub container_port: u16,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: default_dir(),
            method: None,
            keep_days: default_keep_days(),
            keep_min: default_keep_min(),
            offsite: None,
            offsite_ssh_config: None,
            offsite_recipients: Vec::new(),
            offsite_identity_env: None,
            offsite_keep_days: None,
            pg_bin: None,
            server_dir: None,
            keep_replaced: default_keep_replaced(),
            maintenance_db: default_maintenance_db(),
            continuous: false,
            max_archive_lag: default_max_archive_lag(),
            container_port: default_container_port(),
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
fn default_max_archive_lag() -> String {
    "1m".into()
}
fn default_container_port() -> u16 {
    5432
}

/// Where the off-site copies go (`offsite`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsiteTarget {
    /// A directory, as written (relative to ops.toml).
    Folder(String),
    /// Another host, over SSH.
    Ssh {
        destination: String,
        port: Option<u16>,
        path: String,
    },
}

impl BackupSettings {
    /// `offsite` read: None when unset; Err names what is wrong with it.
    pub fn offsite_target(&self) -> Result<Option<OffsiteTarget>, String> {
        let Some(o) = self.offsite.as_deref() else {
            return Ok(None);
        };
        let Some(rest) = o.strip_prefix("ssh://") else {
            return Ok(Some(OffsiteTarget::Folder(o.to_string())));
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || path.len() < 2 {
            return Err(format!(
                "offsite = \"{o}\" is not `ssh://[user@]host[:port]/absolute/path`"
            ));
        }
        if path.contains(['\'', '\n']) || path.split('/').any(|c| c == "..") {
            return Err(format!(
                "offsite = \"{o}\": the path may not hold quotes, newlines or `..`"
            ));
        }
        let (destination, port) = match host.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), Some(p)),
                Err(_) => return Err(format!("offsite = \"{o}\": `{p}` is not a port")),
            },
            None => (host.to_string(), None),
        };
        if self.offsite_recipients.is_empty() {
            return Err(format!(
                "offsite = \"{o}\" is another host: set offsite_recipients = [\"age1...\"] (the public key \
                 of `age-keygen`) so that the copy is encrypted before it leaves; the host never sees the key"
            ));
        }
        Ok(Some(OffsiteTarget::Ssh {
            destination,
            port,
            path: path.trim_end_matches('/').to_string(),
        }))
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Container,
    Host,
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offsite: &str, recipients: &[&str]) -> BackupSettings {
        BackupSettings {
            offsite: Some(offsite.into()),
            offsite_recipients: recipients.iter().map(|r| r.to_string()).collect(),
            ..BackupSettings::default()
        }
    }

    #[test]
    fn offsite_is_a_folder_or_an_ssh_url_with_recipients() {
        assert_eq!(
            with("/mnt/share", &[]).offsite_target(),
            Ok(Some(OffsiteTarget::Folder("/mnt/share".into())))
        );
        assert_eq!(
            with("ssh://backup@vault:2222/srv/mre/", &["age1x"]).offsite_target(),
            Ok(Some(OffsiteTarget::Ssh {
                destination: "backup@vault".into(),
                port: Some(2222),
                path: "/srv/mre".into()
            }))
        );
        assert!(with("ssh://vault/srv", &[])
            .offsite_target()
            .unwrap_err()
            .contains("offsite_recipients"));
        assert!(with("ssh://vault", &["age1x"]).offsite_target().is_err());
        assert!(with("ssh://vault/srv/../etc", &["age1x"])
            .offsite_target()
            .is_err());
        assert!(with("ssh://vault:x/srv", &["age1x"])
            .offsite_target()
            .is_err());
    }
}
