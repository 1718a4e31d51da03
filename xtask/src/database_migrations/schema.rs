//! Database Migration Procedures, for Application Rollback: which schema a
//! database is on, as the set of migrations applied to it. The release
//! journal records it for every release, so that `rollback` knows whether
//! the release it returns to ran (or was proven to run) on the schema the
//! database has now.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Env;

use super::bookkeeping::Db;
use super::state::read_state;

/// A migration on disk that the database has not applied.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    pub name: String,
    pub checksum: String,
}

/// The migrations `migrate deploy` would apply to `env`'s database now.
pub fn pending(env: &Env) -> Result<Vec<Pending>> {
    let mut db = Db::open(env)?;
    let state = read_state(env, &mut db)?;
    Ok(state
        .pending()
        .into_iter()
        .map(|l| Pending {
            name: l.name.clone(),
            checksum: l.checksum().unwrap_or_default(),
        })
        .collect())
}

/// A fingerprint of the schema as migrations made it: SHA-256 (first 16
/// hex digits) of the name and checksum of every migration applied and not
/// rolled back, in name order. None: no `_prisma_migrations` table.
pub fn fingerprint(env: &Env) -> Result<Option<String>> {
    let mut db = Db::open(env)?;
    if !db.table_exists()? {
        return Ok(None);
    }
    let mut applied: Vec<(String, String)> = db
        .rows()?
        .into_iter()
        .filter(|r| r.finished_at.is_some() && r.rolled_back_at.is_none())
        .map(|r| (r.migration_name, r.checksum))
        .collect();
    applied.sort();
    applied.dedup();
    Ok(Some(fingerprint_of(&applied)))
}

fn fingerprint_of(applied: &[(String, String)]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, checksum) in applied {
        h.update(format!("{name} {checksum}\n").as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// When each of `names` ran on `env`'s database: (name, started, finished)
/// in seconds since the epoch, as the server's clock says.
pub fn run_times(env: &Env, names: &[String]) -> Result<Vec<(String, f64, f64)>> {
    let mut db = Db::open(env)?;
    let rows = db
        .client
        .query(
            "SELECT migration_name, extract(epoch FROM started_at)::float8, \
             extract(epoch FROM finished_at)::float8 FROM _prisma_migrations \
             WHERE migration_name = ANY($1) AND finished_at IS NOT NULL AND rolled_back_at IS NULL \
             ORDER BY started_at",
            &[&names],
        )
        .context("reading when the migrations ran (_prisma_migrations)")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_names_and_checksums() {
        let a = vec![("1_init".to_string(), "aa".to_string())];
        let b = vec![("1_init".to_string(), "ab".to_string())];
        assert_eq!(fingerprint_of(&a).len(), 16);
        assert_ne!(fingerprint_of(&a), fingerprint_of(&b));
        assert_eq!(fingerprint_of(&a), fingerprint_of(&a.clone()));
    }
}
