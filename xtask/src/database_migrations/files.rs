//! Database Migration Procedures: the migrations on disk (Prisma's layout:
//! `<dir>/<timestamp>_<name>/migration.sql`, `migration_lock.toml`) and their
//! checksums.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use crate::config::{config_error, Env};

pub(super) struct Local {
    pub(super) name: String,
    pub(super) dir: Utf8PathBuf,
    /// None: `migration.sql` is missing (Prisma: P3015).
    pub(super) sql: Option<Vec<u8>>,
}

impl Local {
    pub(super) fn checksum(&self) -> Option<String> {
        self.sql.as_deref().map(sha256_hex)
    }
    /// The script as it is sent: UTF-8 (`read_local` refused anything else),
    /// without a leading byte order mark, which psql skips too.
    pub(super) fn text(&self) -> String {
        let text = String::from_utf8_lossy(self.sql.as_deref().unwrap_or_default());
        text.strip_prefix(super::lint::BOM)
            .unwrap_or(&text)
            .to_string()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Prisma accepts the file's hash, the hash with CRLF turned to LF, and
/// with LF turned to CRLF.
pub(super) fn checksum_matches(bytes: &[u8], recorded: &str) -> bool {
    if sha256_hex(bytes) == recorded {
        return true;
    }
    let text = String::from_utf8_lossy(bytes);
    let lf = text.replace("\r\n", "\n");
    sha256_hex(lf.as_bytes()) == recorded
        || sha256_hex(lf.replace('\n', "\r\n").as_bytes()) == recorded
}

pub(super) fn migrations_dir(env: &Env) -> Utf8PathBuf {
    env.dir.join(&env.settings.migrations.dir)
}

pub(super) fn read_local(env: &Env) -> Result<Vec<Local>> {
    let dir = migrations_dir(env);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    check_lock_file(&dir)?;
    let mut list = Vec::new();
    for entry in dir
        .read_dir_utf8()
        .with_context(|| format!("reading the migrations folder {dir}"))?
    {
        let entry = entry.with_context(|| format!("reading the migrations folder {dir}"))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let path = entry.path().to_owned();
        let file = path.join("migration.sql");
        let sql = if file.exists() {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            // Refused whole, wherever the bad byte is: decoding it with U+FFFD
            // would change a string literal's value while the checksum (of
            // the raw bytes) showed nothing. (psql only fails on the bytes it
            // sends: it drops a `--` comment before a statement, bad bytes and
            // all. Prisma reads the file as UTF-8 and refuses it too.)
            if let Err(e) = std::str::from_utf8(&bytes) {
                let at = e.valid_up_to();
                let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
                bail!(
                    "{file} is not valid UTF-8: byte {at} (line {line}) is 0x{:02x}. PostgreSQL migrations are UTF-8 text: \
                     re-save the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`); nothing was applied",
                    bytes[at]
                );
            }
            Some(bytes)
        } else {
            None
        };
        list.push(Local {
            name: entry.file_name().to_string(),
            dir: path,
            sql,
        });
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(list)
}

pub(super) fn check_lock_file(dir: &Utf8Path) -> Result<()> {
    let path = dir.join("migration_lock.toml");
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let value: toml::Table = toml::from_str(&text)
        .map_err(|e| config_error(format!("{path} is not valid TOML: {}", e.message())))?;
    match value.get("provider").and_then(|v| v.as_str()) {
        Some("postgresql") | Some("postgres") | None => Ok(()),
        Some(other) => Err(config_error(format!(
            "{path} says provider = \"{other}\", but this database is PostgreSQL (Prisma: P3019). \
             These migrations were written for another database: regenerate them for PostgreSQL"
        ))),
    }
}
