//! Application Rollback: the release journal, on the target (a table in the
//! environment's maintenance database, which survives a restore of the
//! application's database): who released what, when, from which version,
//! the steps with their durations and the result. One row per deploy or
//! rollback, written when it starts and completed when it ends; a row left
//! `running` by a killed run reads as interrupted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::adapters::postgres;
use crate::config::Env;

const DDL: &str = "CREATE TABLE IF NOT EXISTS mre_ops_releases (
    id          bigserial PRIMARY KEY,
    environment text NOT NULL,
    action      text NOT NULL,
    version     text NOT NULL,
    previous    text,
    images      jsonb NOT NULL,
    who         text NOT NULL,
    host        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result      text NOT NULL DEFAULT 'running',
    detail      text,
    steps       jsonb NOT NULL DEFAULT '[]',
    backup      text
);
ALTER TABLE mre_ops_releases ADD COLUMN IF NOT EXISTS preflight text;
ALTER TABLE mre_ops_releases ADD COLUMN IF NOT EXISTS schema text;
ALTER TABLE mre_ops_releases ADD COLUMN IF NOT EXISTS migrations jsonb NOT NULL DEFAULT '[]';
ALTER TABLE mre_ops_releases ADD COLUMN IF NOT EXISTS rehearsal jsonb";

#[derive(Serialize, Clone, Debug)]
pub struct Entry {
    pub id: i64,
    pub action: String,
    pub version: String,
    pub previous: Option<String>,
    /// Released service → image reference.
    pub images: BTreeMap<String, String>,
    pub who: String,
    pub host: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running` (or interrupted), `success`, `failed`, `rolled-back`.
    pub result: String,
    pub detail: Option<String>,
    pub steps: serde_json::Value,
    pub backup: Option<String>,
    /// The pre-deployment checklist's outcome (`passed: …`), or
    /// `skipped: REASON` when the operator skipped it.
    pub preflight: Option<String>,
    /// The schema the database was on when this run ended (the
    /// fingerprint of its applied migrations), for a successful one.
    pub schema: Option<String>,
    /// The migrations this run applied: `[{name, checksum}]`.
    pub migrations: serde_json::Value,
    /// The rehearsal's result: timings, locks, integrity, and `proofs`:
    /// `[{version, schema, ok, why}]`, each release started on the
    /// migrated copy.
    pub rehearsal: Option<serde_json::Value>,
}

/// Whether a release is known to run on a schema.
#[derive(Debug, PartialEq)]
pub enum Proof {
    /// It ran there (released on it), or a rehearsal proved it: how.
    Proven(String),
    /// A rehearsal started it on that schema and it failed: why.
    Fails(String),
    /// Nothing known.
    Unknown,
}

/// What the journal knows of `version` running on `schema`, newest first.
pub fn proof(entries: &[Entry], version: &str, schema: &str) -> Proof {
    for e in entries.iter().rev() {
        if e.version == version && e.result == "success" && e.schema.as_deref() == Some(schema) {
            return Proof::Proven(format!("it ran on this schema (journal #{})", e.id));
        }
        let proofs = e
            .rehearsal
            .as_ref()
            .and_then(|r| r["proofs"].as_array().cloned())
            .unwrap_or_default();
        for p in proofs {
            if p["version"] == version && p["schema"] == schema {
                return if p["ok"] == true {
                    Proof::Proven(format!(
                        "the rehearsal of {} started it on this schema and it passed (journal #{})",
                        e.version, e.id
                    ))
                } else {
                    Proof::Fails(format!(
                        "the rehearsal of {} started it on this schema and it failed (journal #{}): {}",
                        e.version,
                        e.id,
                        p["why"].as_str().unwrap_or("?")
                    ))
                };
            }
        }
    }
    Proof::Unknown
}

pub struct Journal {
    client: postgres::Client,
    env: String,
}

impl Journal {
    pub fn open(env: &Env) -> Result<Journal> {
        Self::connect(env, true).map(|j| j.expect("created"))
    }

    /// The journal when one exists, for readers that must not create it on
    /// an environment that never had a release (the checklist).
    pub fn existing(env: &Env) -> Result<Option<Journal>> {
        Self::connect(env, false)
    }

    fn connect(env: &Env, create: bool) -> Result<Option<Journal>> {
        let url = env.database_url()?;
        let maintenance = env.maintenance_db();
        let mut client = postgres::connect_to(
            &url,
            &maintenance,
            "mre-ops journal",
            Duration::from_secs(10),
        )
        .context(
            "opening the release journal (a table in the database server's maintenance database)",
        )?;
        if !create {
            let found: Option<String> = client
                .query_one("SELECT to_regclass('mre_ops_releases')::text", &[])
                .context("looking for the release journal table mre_ops_releases")?
                .get(0);
            if found.is_none() {
                return Ok(None);
            }
        }
        // Idempotent: it also adds the columns a newer mre-ops records.
        client
            .batch_execute(DDL)
            .context("creating the release journal table mre_ops_releases")?;
        Ok(Some(Journal {
            client,
            env: env.name.clone(),
        }))
    }

    /// Every entry, oldest first.
    pub fn entries(&mut self) -> Result<Vec<Entry>> {
        let rows = self
            .client
            .query(
                "SELECT id, action, version, previous, images::text, who, host, \
                        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        result, detail, steps::text, backup, preflight, schema, migrations::text, rehearsal::text \
                 FROM mre_ops_releases WHERE environment = $1 ORDER BY id",
                &[&self.env],
            )
            .context("reading the release journal")?;
        let env = &self.env;
        fn json<T: serde::de::DeserializeOwned>(
            env: &str,
            id: i64,
            field: &str,
            text: &str,
        ) -> Result<T> {
            serde_json::from_str(text).with_context(|| {
                format!(
                    "release journal entry {id} of `{env}`: its `{field}` is not the JSON mre-ops writes ({text:?}); \
                     was the table mre_ops_releases edited by hand? Fix or delete that row"
                )
            })
        }
        rows.into_iter()
            .map(|r| {
                let id: i64 = r.get(0);
                Ok(Entry {
                    id,
                    action: r.get(1),
                    version: r.get(2),
                    previous: r.get(3),
                    images: json(env, id, "images", r.get::<_, &str>(4))?,
                    who: r.get(5),
                    host: r.get(6),
                    started_at: r.get(7),
                    finished_at: r.get(8),
                    result: r.get(9),
                    detail: r.get(10),
                    steps: json(env, id, "steps", r.get::<_, &str>(11))?,
                    backup: r.get(12),
                    preflight: r.get(13),
                    schema: r.get(14),
                    migrations: json(env, id, "migrations", r.get::<_, &str>(15))?,
                    rehearsal: r
                        .get::<_, Option<&str>>(16)
                        .map(|t| json(env, id, "rehearsal", t))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Start an entry (who: $GITHUB_ACTOR or $USER, on this host); its id.
    pub fn begin(
        &mut self,
        action: &str,
        version: &str,
        previous: Option<&str>,
        images: &BTreeMap<String, String>,
        preflight: Option<&str>,
    ) -> Result<i64> {
        let (who, host) = whoami();
        let images = serde_json::to_string(images).expect("images serialise");
        let row = self
            .client
            .query_one(
                "INSERT INTO mre_ops_releases (environment, action, version, previous, images, who, host, preflight) \
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8) RETURNING id",
                &[&self.env, &action, &version, &previous, &images, &who, &host, &preflight],
            )
            .context("writing the release journal")?;
        Ok(row.get(0))
    }

    pub fn finish(
        &mut self,
        id: i64,
        result: &str,
        detail: Option<&str>,
        steps: &serde_json::Value,
        backup: Option<&str>,
    ) -> Result<()> {
        let steps = steps.to_string();
        self.client
            .execute(
                "UPDATE mre_ops_releases SET finished_at = now(), result = $2, detail = $3, \
                 steps = $4::text::jsonb, backup = $5 WHERE id = $1",
                &[&id, &result, &detail, &steps, &backup],
            )
            .context("completing the release journal entry")?;
        Ok(())
    }
}

impl Journal {
    /// What a run learnt about the schema: where it left it, the
    /// migrations it applied, its rehearsal.
    pub fn record_schema(
        &mut self,
        id: i64,
        schema: Option<&str>,
        migrations: &serde_json::Value,
        rehearsal: Option<&serde_json::Value>,
    ) -> Result<()> {
        let migrations = migrations.to_string();
        let rehearsal = rehearsal.map(|r| r.to_string());
        self.client
            .execute(
                "UPDATE mre_ops_releases SET schema = $2, migrations = $3::text::jsonb, \
                 rehearsal = $4::text::jsonb WHERE id = $1",
                &[&id, &schema, &migrations, &rehearsal],
            )
            .context("recording the schema in the release journal")?;
        Ok(())
    }
}

/// The live release: the newest successful entry.
pub fn current(entries: &[Entry]) -> Option<&Entry> {
    entries.iter().rev().find(|e| e.result == "success")
}

/// The release before the live one (another version, successful).
pub fn previous(entries: &[Entry]) -> Option<&Entry> {
    let cur = current(entries)?;
    entries
        .iter()
        .rev()
        .filter(|e| e.result == "success" && e.id < cur.id && e.version != cur.version)
        .find(|_| true)
}

/// The versions kept for rollback: the `keep` newest distinct successful ones.
pub fn kept(entries: &[Entry], keep: usize) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for e in entries.iter().rev().filter(|e| e.result == "success") {
        if !versions.contains(&e.version) {
            versions.push(e.version.clone());
        }
        if versions.len() >= keep {
            break;
        }
    }
    versions
}

fn whoami() -> (String, String) {
    let user = std::env::var("GITHUB_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    (user, host)
}
