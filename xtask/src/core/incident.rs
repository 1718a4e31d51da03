//! Disaster Recovery, "Document incident": what every `restore`, `recover`
//! and `rollback --with-db` did, written when it ends (success or not): a
//! row of `mre_ops_incidents` beside the release journal (the maintenance
//! database, which survives a restore) and a markdown file under the
//! environment's backup folder, `incidents/`. Every text passes through the
//! output's redaction first: no secret reaches either.

use std::time::Duration;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

use crate::adapters::clock::Utc;
use crate::adapters::output::{redact, Output};
use crate::adapters::postgres;
use crate::config::Env;
use crate::core::files::write_private;
use crate::core::steps::Timing;

/// A table of its own: creating it never touches the journal's existing
/// tables, so an older journal needs no migration (and an older mre-ops
/// ignores it).
const DDL: &str = "CREATE TABLE IF NOT EXISTS mre_ops_incidents (
    id            bigserial PRIMARY KEY,
    environment   text NOT NULL,
    operation     text NOT NULL,
    result        text NOT NULL,
    reason        text NOT NULL,
    who           text NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    restored      text,
    point_in_time text,
    data_window   jsonb NOT NULL DEFAULT '{}',
    steps         jsonb NOT NULL DEFAULT '[]',
    detail        text,
    file          text
)";

/// One incident, as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Incident {
    /// `restore`, `recover`, `rollback --with-db to VERSION`.
    pub operation: String,
    /// `success`, `failed` (with `detail`), `interrupted`.
    pub result: String,
    /// The operator's `--reason`, or what stood in for it.
    pub reason: String,
    /// `user@host`, as the lock holder details say it.
    pub who: String,
    pub started_at: String,
    pub finished_at: String,
    /// The backup put back (its name), or what was recovered.
    pub restored: Option<String>,
    /// The point in time the data reflects afterwards.
    pub point_in_time: Option<String>,
    /// What the data lost: `from`, `to`, `seconds`, per table the rows
    /// `before` (the replaced state) and `after` (restored) and their
    /// `change` (`tables`, only those that differ), and where the replaced
    /// data is kept (`kept_in`).
    pub data_window: serde_json::Value,
    pub steps: Vec<Timing>,
    pub detail: Option<String>,
}

impl Incident {
    /// A new record of `operation`, started now by this user on this host.
    pub fn begin(operation: &str, reason: Option<&str>, yes: bool) -> Incident {
        let (user, host) = crate::core::lock::who();
        Incident {
            operation: operation.to_string(),
            result: "running".into(),
            reason: reason.map(str::to_string).unwrap_or_else(|| {
                if yes {
                    "not given (confirmed with --yes)".into()
                } else {
                    "not given".into()
                }
            }),
            who: format!("{user}@{host}"),
            started_at: Utc::now().rfc3339(),
            data_window: serde_json::json!({}),
            ..Incident::default()
        }
    }

    /// The markdown file's text.
    pub fn markdown(&self, env: &str) -> String {
        let mut md = format!(
            "# Incident: `{}` on `{env}`\n\n\
             | | |\n|---|---|\n\
             | operation | `{}` |\n| result | {} |\n| why | {} |\n| who | {} |\n\
             | started | {} |\n| finished | {} |\n",
            self.operation,
            self.operation,
            self.result,
            self.reason.replace('|', "\\|").replace('\n', " "),
            self.who,
            self.started_at,
            self.finished_at
        );
        if let Some(r) = &self.restored {
            md.push_str(&format!("| restored | `{r}` |\n"));
        }
        if let Some(p) = &self.point_in_time {
            md.push_str(&format!("| data as of | {p} |\n"));
        }
        if let Some(d) = &self.detail {
            md.push_str(&format!(
                "| detail | {} |\n",
                d.replace('|', "\\|").replace('\n', " ")
            ));
        }
        let w = &self.data_window;
        if let Some(from) = w["from"].as_str() {
            md.push_str(&format!(
                "\n## Data window lost\n\nWrites between {from} and {} ({}) are no longer in the live database",
                w["to"].as_str().unwrap_or("?"),
                human_secs(w["seconds"].as_i64().unwrap_or(0)),
            ));
            match w["kept_in"].as_str() {
                Some(k) => md.push_str(&format!("; they are kept in {k}.\n")),
                None => md.push_str(".\n"),
            }
            if let Some(tables) = w["tables"].as_object().filter(|t| !t.is_empty()) {
                md.push_str(
                    "\nRows per table that changed (before: the replaced database, as its safety backup \
                     holds it; after: the restored one; a negative change is rows lost):\n\n\
                     | table | before | after | change |\n|---|---:|---:|---:|\n",
                );
                for (t, v) in tables {
                    md.push_str(&format!(
                        "| {t} | {} | {} | {:+} |\n",
                        v["before"],
                        v["after"],
                        v["change"].as_i64().unwrap_or(0)
                    ));
                }
            }
        }
        if !self.steps.is_empty() {
            md.push_str("\n## Steps\n\n| step | seconds | ok |\n|---|---:|---|\n");
            for s in &self.steps {
                md.push_str(&format!(
                    "| {} | {:.1} | {} |\n",
                    s.title,
                    s.seconds,
                    if s.ok { "yes" } else { "FAILED" }
                ));
            }
        }
        md.push_str(&format!(
            "\nWritten by mre-ops; `cargo xtask incidents {env}` lists every incident.\n"
        ));
        md
    }

    /// Finish the record with `result` and write it: the markdown file
    /// first (it needs no server), then the journal row. A journal that
    /// cannot be reached is a warning, never the operation's failure.
    pub fn write(mut self, env: &Env, out: &Output, result: &Result<()>) -> Option<Utf8PathBuf> {
        self.finished_at = Utc::now().rfc3339();
        match result {
            Ok(()) => self.result = "success".into(),
            Err(e) => {
                let interrupted = e
                    .chain()
                    .any(|c| c.is::<crate::core::interrupt::Interrupted>());
                self.result = if interrupted { "interrupted" } else { "failed" }.into();
                self.detail = Some(format!("{e:#}"));
            }
        }
        // Redacted once, here: the file and the row carry the same text.
        let text = redact(&serde_json::to_string(&self).expect("incident serialises"));
        let this: Incident = serde_json::from_str(&text).unwrap_or_else(|_| {
            // A secret that spans JSON syntax: redact the free texts alone.
            let r = |s: &Option<String>| s.as_deref().map(redact);
            Incident {
                reason: redact(&self.reason),
                restored: r(&self.restored),
                detail: r(&self.detail),
                ..self.clone()
            }
        });
        let dir = folder(env);
        let stem = format!("{}-{}", Utc::now().compact(), slug(&this.operation));
        let file = (1..)
            .map(|n| match n {
                1 => dir.join(format!("{stem}.md")),
                n => dir.join(format!("{stem}-{n}.md")),
            })
            .find(|f| !f.exists())
            .expect("a free name");
        let written = std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {dir}"))
            .and_then(|()| write_private(&file, &this.markdown(&env.name)));
        let file = match written {
            Ok(()) => Some(file),
            Err(e) => {
                out.warn(&format!(
                    "the incident record could not be written to {dir}: {e:#}; its text:\n{}",
                    this.markdown(&env.name)
                ));
                None
            }
        };
        if let Err(e) = record(env, &this, file.as_ref()) {
            out.warn(&format!(
                "the incident was not recorded in the journal (mre_ops_incidents): {e:#}. \
                 The markdown file {} holds it",
                file.as_ref()
                    .map(|f| f.as_str())
                    .unwrap_or("(not written either)")
            ));
        }
        if let Some(f) = &file {
            out.line(&format!("Incident record: {f}"));
        }
        file
    }
}

/// `<backups dir>/<env>/incidents`.
pub fn folder(env: &Env) -> Utf8PathBuf {
    let dir = env
        .settings
        .backups
        .as_ref()
        .map(|b| b.dir.clone())
        .unwrap_or_else(|| crate::config::BackupSettings::default().dir);
    env.dir.join(dir).join(&env.name).join("incidents")
}

/// The newest incident file, for `releases` and `backup list`.
pub fn latest(env: &Env) -> Option<Utf8PathBuf> {
    files(env).into_iter().next()
}

/// A line pointing to the newest incident (for `releases` and `backup
/// list`), and its file.
pub fn pointer(env: &Env) -> Option<(String, String)> {
    let f = latest(env)?;
    let ago = f
        .file_name()
        .unwrap_or_default()
        .split('-')
        .next()
        .and_then(Utc::parse_compact)
        .map(|t| format!(", {} ago", human_secs(Utc::now().unix() - t.unix())))
        .unwrap_or_default();
    Some((
        format!(
            "Latest incident: {f}{ago} (`cargo xtask incidents {}` lists them)",
            env.name
        ),
        f.to_string(),
    ))
}

/// The incident files, newest first (their names start with the time).
pub fn files(env: &Env) -> Vec<Utf8PathBuf> {
    let dir = folder(env);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".md"))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by(|a, b| b.cmp(a));
    names.into_iter().map(|n| dir.join(n)).collect()
}

fn connect(env: &Env) -> Result<postgres::Client> {
    let mut c = postgres::connect_to(
        &env.database_url()?,
        &env.maintenance_db(),
        "mre-ops incidents",
        Duration::from_secs(10),
    )
    .context("opening the journal (the database server's maintenance database)")?;
    c.batch_execute(DDL)
        .context("creating the incident table mre_ops_incidents")?;
    Ok(c)
}

fn record(env: &Env, i: &Incident, file: Option<&Utf8PathBuf>) -> Result<()> {
    let mut c = connect(env)?;
    let window = i.data_window.to_string();
    let steps = serde_json::to_string(&i.steps).expect("timings serialise");
    c.execute(
        "INSERT INTO mre_ops_incidents (environment, operation, result, reason, who, started_at, \
         finished_at, restored, point_in_time, data_window, steps, detail, file) \
         VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz, $7::text::timestamptz, $8, $9, \
         $10::text::jsonb, $11::text::jsonb, $12, $13)",
        &[
            &env.name,
            &i.operation,
            &i.result,
            &i.reason,
            &i.who,
            &i.started_at,
            &i.finished_at,
            &i.restored,
            &i.point_in_time,
            &window,
            &steps,
            &i.detail,
            &file.map(|f| f.to_string()),
        ],
    )
    .context("writing the incident to mre_ops_incidents")?;
    Ok(())
}

/// A journal row.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub id: i64,
    pub operation: String,
    pub result: String,
    pub reason: String,
    pub who: String,
    pub started_at: String,
    pub finished_at: String,
    pub restored: Option<String>,
    pub point_in_time: Option<String>,
    pub data_window: serde_json::Value,
    pub file: Option<String>,
}

/// The environment's incidents in the journal, newest first.
pub fn rows(env: &Env) -> Result<Vec<Row>> {
    let mut c = connect(env)?;
    let rows = c
        .query(
            "SELECT id, operation, result, reason, who, \
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    restored, point_in_time, data_window::text, file \
             FROM mre_ops_incidents WHERE environment = $1 ORDER BY id DESC",
            &[&env.name],
        )
        .context("reading mre_ops_incidents")?;
    Ok(rows
        .iter()
        .map(|r| Row {
            id: r.get(0),
            operation: r.get(1),
            result: r.get(2),
            reason: r.get(3),
            who: r.get(4),
            started_at: r.get(5),
            finished_at: r.get(6),
            restored: r.get(7),
            point_in_time: r.get(8),
            data_window: serde_json::from_str(r.get::<_, &str>(9)).unwrap_or_default(),
            file: r.get(10),
        })
        .collect())
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(60).collect()
}

pub fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172800 => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} days", s as f64 / 86400.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slug_keeps_names_readable() {
        assert_eq!(
            super::slug("rollback --with-db to v1.2"),
            "rollback-with-db-to-v1.2"
        );
    }
}
