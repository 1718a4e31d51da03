//! What an operation is about to leave half-done, written before it stops
//! anything: the containers it stopped and the scratch databases it made.
//! A run that ends (success, failure, Ctrl-C) removes the record after its
//! undos; a run killed with -9 leaves it, and the next command on the
//! environment says so, and `cargo xtask recover ENV` (or the next restore)
//! starts what was stopped and drops what was staged.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

use crate::adapters::clock::Utc;
use crate::config::Env;
use crate::core::files::write_private;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Intent {
    pub operation: String,
    pub pid: u32,
    pub since: String,
    /// Containers the operation stopped and that must run again.
    pub stopped: Vec<String>,
    /// Databases the operation created and that must be dropped if it did
    /// not finish (never the live one).
    pub scratch_databases: Vec<String>,
    /// Containers it made for a while (a point-in-time restore's replay).
    #[serde(default)]
    pub scratch_containers: Vec<String>,
    /// Volumes it made that hold nothing live yet.
    #[serde(default)]
    pub scratch_volumes: Vec<String>,
    /// `[name, renamed to]`: a container set aside; put back when nothing
    /// took its name.
    #[serde(default)]
    pub renamed: Vec<[String; 2]>,
    /// What `recover` cannot do itself: the next commands to run.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Intent {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.stopped.is_empty() {
            parts.push(format!("stopped {}", self.stopped.join(", ")));
        }
        if !self.scratch_databases.is_empty() {
            parts.push(format!(
                "left the database(s) {}",
                self.scratch_databases.join(", ")
            ));
        }
        if !self.renamed.is_empty() || !self.scratch_containers.is_empty() {
            let names: Vec<&str> = self
                .renamed
                .iter()
                .map(|[from, _]| from.as_str())
                .chain(self.scratch_containers.iter().map(String::as_str))
                .collect();
            parts.push(format!("left the container(s) {}", names.join(", ")));
        }
        if parts.is_empty() {
            parts.push("changed nothing yet".into());
        }
        format!(
            "an unfinished `{}` (pid {}, since {}) {}",
            self.operation,
            self.pid,
            self.since,
            parts.join(" and ")
        )
    }
}

pub fn path(env: &Env) -> Utf8PathBuf {
    env.dir
        .join(".mre-ops")
        .join("locks")
        .join(format!("{}.intent.json", env.name))
}

/// The record an earlier run left, if any.
pub fn pending(env: &Env) -> Option<Intent> {
    let text = std::fs::read_to_string(path(env)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The record of a running operation; kept on disk at every change.
pub struct Record {
    path: Utf8PathBuf,
    pub intent: Intent,
}

impl Record {
    /// Start recording (under the environment's lock).
    pub fn begin(env: &Env, operation: &str) -> Result<Record> {
        let r = Record {
            path: path(env),
            intent: Intent {
                operation: operation.to_string(),
                pid: std::process::id(),
                since: Utc::now().rfc3339(),
                ..Intent::default()
            },
        };
        r.save()?;
        Ok(r)
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }
        let text = serde_json::to_string_pretty(&self.intent).expect("intent serialises");
        write_private(&self.path, &text)
    }

    /// Call before stopping `container`.
    pub fn stopping(&mut self, container: &str) -> Result<()> {
        if !self.intent.stopped.iter().any(|c| c == container) {
            self.intent.stopped.push(container.to_string());
        }
        self.save()
    }

    /// Call once `container` runs again.
    pub fn started(&mut self, container: &str) -> Result<()> {
        self.intent.stopped.retain(|c| c != container);
        self.save()
    }

    /// Call before creating the scratch database `name`.
    pub fn creating_database(&mut self, name: &str) -> Result<()> {
        if !self.intent.scratch_databases.iter().any(|c| c == name) {
            self.intent.scratch_databases.push(name.to_string());
        }
        self.save()
    }

    /// Call once `name` is dropped, or has become the live database.
    pub fn database_done(&mut self, name: &str) -> Result<()> {
        self.intent.scratch_databases.retain(|c| c != name);
        self.save()
    }

    /// Call before creating `name`, a container that goes at the end.
    pub fn scratch_container(&mut self, name: &str) -> Result<()> {
        self.intent.scratch_containers.push(name.to_string());
        self.save()
    }

    /// Call once that container is removed.
    pub fn container_done(&mut self, name: &str) -> Result<()> {
        self.intent.scratch_containers.retain(|c| c != name);
        self.save()
    }

    /// Call before creating the volume `name` (nothing live on it yet).
    pub fn scratch_volume(&mut self, name: &str) -> Result<()> {
        self.intent.scratch_volumes.push(name.to_string());
        self.save()
    }

    /// Call once the volume is removed, or holds the live data.
    pub fn volume_done(&mut self, name: &str) -> Result<()> {
        self.intent.scratch_volumes.retain(|v| v != name);
        self.save()
    }

    /// Call before renaming container `from` to `to`.
    pub fn renaming(&mut self, from: &str, to: &str) -> Result<()> {
        self.intent.renamed.push([from.to_string(), to.to_string()]);
        self.save()
    }

    /// Call once `from` holds its name again, or its place was taken for good.
    pub fn renamed_done(&mut self, from: &str) -> Result<()> {
        self.intent.renamed.retain(|[f, _]| f != from);
        self.save()
    }

    /// A next step for the operator should this run be killed.
    pub fn note(&mut self, text: &str) -> Result<()> {
        self.intent.notes.push(text.to_string());
        self.save()
    }

    pub fn note_done(&mut self, text: &str) -> Result<()> {
        self.intent.notes.retain(|n| n != text);
        self.save()
    }

    /// The operation ended and everything it stopped runs again.
    pub fn finish(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path))
            }
            _ => Ok(()),
        }
    }
}

/// Forget a pending record after it was recovered.
pub fn clear(env: &Env) -> Result<()> {
    match std::fs::remove_file(path(env)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path(env)))
        }
        _ => Ok(()),
    }
}

/// Finish what an interrupted operation left, from its record: drop the
/// scratch databases it made (never the live one), start the containers it
/// stopped, forget the record. `None` when there was nothing to do.
pub fn recover(env: &Env, out: &crate::adapters::output::Output) -> Result<Option<Intent>> {
    let Some(pending) = pending(env) else {
        return Ok(None);
    };
    let live = env.settings.database.as_ref().map(|d| d.name.clone());
    for db in &pending.scratch_databases {
        if Some(db) == live.as_ref() {
            anyhow::bail!(
                "the record {} names the live database `{db}` as scratch: refusing to drop it; check it and remove the file by hand",
                path(env)
            );
        }
        let maintenance = env.maintenance_db();
        let mut c = crate::adapters::postgres::connect_to(
            &env.database_url()?,
            &maintenance,
            "mre-ops recover",
            std::time::Duration::from_secs(5),
        )?;
        // The killed run's server session may still be executing (a CREATE
        // DATABASE finishes after its client died): end the sessions that
        // work on this database or create it, and wait until they are gone,
        // or the drop below could run first and the database appear after.
        let start = std::time::Instant::now();
        loop {
            let busy: i64 = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND (datname = $1 OR position($1 in query) > 0)",
                    &[db],
                )
                .context("ending the interrupted run's sessions")?
                .get(0);
            if busy == 0 || start.elapsed() > std::time::Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            db.replace('"', "\"\"")
        ))
        .with_context(|| format!("dropping the staged database {db}"))?;
        out.line(&format!("Dropped {db}, staged by {}.", pending.operation));
    }
    if !pending.scratch_containers.is_empty()
        || !pending.renamed.is_empty()
        || !pending.scratch_volumes.is_empty()
    {
        let docker = crate::core::session::docker(env)?;
        for c in &pending.scratch_containers {
            docker.remove_container(c)?;
            out.line(&format!("Removed {c}, made by {}.", pending.operation));
        }
        // A container set aside whose name nothing took (the swap did not
        // happen): back, and running. Where a new one holds the name, the
        // swap was done: the set-aside one stays, kept.
        for [from, to] in &pending.renamed {
            if docker.container(from)?.is_none() && docker.container(to)?.is_some() {
                docker.rename_container(to, from)?;
                docker.start_container(from)?;
                out.line(&format!("Renamed {to} back to {from} and started it."));
            }
        }
        for v in &pending.scratch_volumes {
            match docker.remove_volume(v) {
                Ok(()) => out.line(&format!(
                    "Removed the volume {v}, made by {}.",
                    pending.operation
                )),
                Err(e) => out.warn(&format!("kept the volume {v}: {e:#}")),
            }
        }
    }
    if !pending.stopped.is_empty() {
        let docker = crate::core::session::docker(env)?;
        for c in &pending.stopped {
            docker.start_container(c)?;
            out.line(&format!("Started {c}, stopped by {}.", pending.operation));
        }
    }
    for n in &pending.notes {
        out.line(&format!("Next: {n}"));
    }
    clear(env)?;
    Ok(Some(pending))
}
