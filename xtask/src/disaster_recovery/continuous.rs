//! Disaster Recovery, Backup Strategy to the minute: continuous archiving.
//! Base backups (`pg_basebackup`) and every WAL segment (`pg_receivewal`
//! on a replication slot, flushing each write as it arrives), both run in
//! containers started from the database container's own image, on its
//! network, writing into the environment's archive
//! (`<backups.dir>/<env>/archive/`: `base/<UTC>/` and `wal/`).

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::adapters::clock::Utc;
use crate::adapters::docker::{Docker, Job, Template};
use crate::adapters::output::Output;
use crate::core::files::{random_hex, write_private};
use crate::core::wait::{self, Poll, Waited};

use super::pg_tools::Target;

/// Where the database keeps its files inside its container (both the
/// official image and the demo's).
pub(super) const PGDATA: &str = "/var/lib/postgresql/data";
/// Where the archive is mounted in the helper containers.
const MOUNT: &str = "/mre-archive";
/// What stands for the database password in a saved container template.
const PASSWORD_MARK: &str = "{mre-ops: the database password}";
/// The pg_hba.conf line that lets the archiver connect over the network.
const HBA_LINE: &str = "host replication all all scram-sha-256";
const LABEL: &str = "org.mre-ops.wal-archiver";

/// One environment's archive and the containers that feed it.
pub(super) struct Archive<'t, 'a> {
    pub(super) t: &'t Target<'a>,
    pub(super) root: Utf8PathBuf,
    /// The database container, whose image, network and name the helpers use.
    pub(super) container: String,
    pub(super) archiver: String,
    pub(super) slot: String,
}

/// What `base.json` records about one base backup.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct Base {
    pub(super) name: String,
    pub(super) started_at: String,
    pub(super) started_unix: i64,
    pub(super) finished_unix: i64,
    /// The same to the millisecond (records before it: None).
    #[serde(default)]
    pub(super) finished_ms: Option<i64>,
    pub(super) bytes: u64,
    pub(super) timeline: u32,
    pub(super) start_lsn: String,
    pub(super) end_lsn: String,
    pub(super) segment_bytes: u64,
    /// How the database container was created (the password replaced by a
    /// mark): what a restore recreates when the container is gone.
    pub(super) container: Template,
}

/// A WAL file in the archive.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) file: String,
    pub(super) timeline: u32,
    pub(super) segno: u64,
    pub(super) partial: bool,
    pub(super) modified_unix: i64,
}

pub(super) fn lsn_value(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// `00000001000000000000000A` → (timeline, segment number) for segments of
/// `seg` bytes.
pub(super) fn parse_segment(name: &str, seg: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let low = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log * (0x1_0000_0000 / seg) + low))
}

pub(super) fn segment_name(tli: u32, segno: u64, seg: u64) -> String {
    let per = 0x1_0000_0000 / seg;
    format!("{tli:08X}{:08X}{:08X}", segno / per, segno % per)
}

impl<'t, 'a> Archive<'t, 'a> {
    pub(super) fn new(t: &'t Target<'a>) -> Result<Archive<'t, 'a>> {
        let Some(container) = t.container.clone() else {
            return Err(crate::config::config_error(format!(
                "continuous archiving of `{}` needs environments.{}.database.container (the database \
                 container: its image and network run pg_receivewal)",
                t.env.name, t.env.name
            )));
        };
        let slot: String = format!("mre_ops_{}", t.env.name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Archive {
            t,
            root: t.folder.join("archive"),
            archiver: format!("{container}-wal-archiver"),
            container,
            slot,
        })
    }

    pub(super) fn wal_dir(&self) -> Utf8PathBuf {
        self.root.join("wal")
    }

    /// The archive folder as the engine mounts it (absolute), created.
    fn mount_source(&self) -> Result<Utf8PathBuf> {
        std::fs::create_dir_all(self.wal_dir())
            .and_then(|()| std::fs::create_dir_all(self.root.join("base")))
            .with_context(|| format!("creating the archive folder {}", self.root))?;
        let abs = self
            .root
            .canonicalize_utf8()
            .with_context(|| format!("resolving {}", self.root))?;
        Ok(abs)
    }

    /// The helpers run as the archive folder's owner: the files they write
    /// are the operator's to list, copy and prune.
    fn owner(&self) -> Result<String> {
        let m = std::fs::metadata(&self.root).with_context(|| format!("reading {}", self.root))?;
        Ok(format!("{}:{}", m.uid(), m.gid()))
    }

    fn password_env(&self) -> Vec<String> {
        self.t
            .password
            .iter()
            .map(|p| format!("PGPASSWORD={p}"))
            .collect()
    }

    fn mask(&self, mut t: Template) -> Template {
        let env = t
            .env()
            .into_iter()
            .map(|kv| match (&self.t.password, kv.split_once('=')) {
                (Some(p), Some((k, v))) if !p.is_empty() && v == p => {
                    format!("{k}={PASSWORD_MARK}")
                }
                _ => kv,
            })
            .collect();
        t.set_env(env);
        t
    }

    pub(super) fn unmask(&self, mut t: Template) -> Template {
        let p = self.t.password.clone().unwrap_or_default();
        let env = t
            .env()
            .into_iter()
            .map(|kv| kv.replace(PASSWORD_MARK, &p))
            .collect();
        t.set_env(env);
        t
    }

    /// Base backups, newest first.
    pub(super) fn bases(&self) -> Result<Vec<Base>> {
        let dir = self.root.join("base");
        let mut list = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
        };
        for e in entries {
            let e = e.with_context(|| format!("listing {dir}"))?;
            let file = Utf8PathBuf::try_from(e.path().join("base.json"))
                .context("a non UTF-8 path in the archive")?;
            if !file.is_file() {
                continue; // unfinished (`.partial`) or not ours
            }
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            let b: Base = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{file} is not a base backup record: move it away, or take a new base backup"
                )
            })?;
            list.push(b);
        }
        list.sort_by(|a, b| b.name.cmp(&a.name));
        Ok(list)
    }

    /// The WAL files in the archive (history files left out), by segment.
    pub(super) fn segments(&self, seg: u64) -> Result<Vec<Segment>> {
        let dir = self.wal_dir();
        let mut list = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
        };
        for e in entries {
            let e = e.with_context(|| format!("listing {dir}"))?;
            let file = e.file_name().to_string_lossy().into_owned();
            let (name, partial) = match file.strip_suffix(".partial") {
                Some(n) => (n, true),
                None => (file.as_str(), false),
            };
            let Some((timeline, segno)) = parse_segment(name, seg) else {
                continue;
            };
            let modified_unix = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .map(crate::adapters::clock::unix_secs)
                .unwrap_or(0);
            list.push(Segment {
                file,
                timeline,
                segno,
                partial,
                modified_unix,
            });
        }
        list.sort_by_key(|s| (s.segno, s.timeline, s.partial));
        Ok(list)
    }

    /// The segments missing between `from` and the newest one archived.
    pub(super) fn gaps(segments: &[Segment], from: u64) -> Vec<u64> {
        let have: std::collections::BTreeSet<u64> = segments.iter().map(|s| s.segno).collect();
        let Some(&last) = have.iter().next_back() else {
            return Vec::new();
        };
        (from..last).filter(|n| !have.contains(n)).collect()
    }

    /// The settings and rights archiving needs: refused early, with the fix.
    pub(super) fn check_server(&self) -> Result<()> {
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        let row = c
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int, \
                 (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            )
            .context("reading wal_level, max_wal_senders and the role's rights")?;
        let (level, senders, may): (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
        if level == "minimal" {
            bail!("the database has wal_level = minimal: set it to `replica` (the default) and restart it");
        }
        if senders < 2 {
            bail!("the database has max_wal_senders = {senders}: pg_basebackup and pg_receivewal need 2 (the default is 10); raise it and restart the database");
        }
        if !may {
            bail!(
                "the role `{}` may not replicate: `ALTER ROLE {} REPLICATION` as a superuser",
                self.t.user,
                self.t.user
            );
        }
        Ok(())
    }

    /// Whether pg_hba.conf lets replication connections in from the network.
    pub(super) fn hba_allows(&self) -> Result<bool> {
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_hba_file_rules WHERE type LIKE 'host%' \
                 AND 'replication' = ANY(database) AND coalesce(address, '') NOT IN ('127.0.0.1', '::1', '')",
                &[],
            )
            .context("reading pg_hba_file_rules")?
            .get(0);
        Ok(n > 0)
    }

    /// Add or remove `HBA_LINE` in the database container's pg_hba.conf,
    /// then reload the configuration.
    pub(super) fn set_hba(&self, on: bool) -> Result<()> {
        let script = if on {
            "printf '%s\\n' \"$1\" >> \"${PGDATA:-/var/lib/postgresql/data}/pg_hba.conf\""
        } else {
            "f=\"${PGDATA:-/var/lib/postgresql/data}/pg_hba.conf\"; grep -vxF \"$1\" \"$f\" > \"$f.mre\"; cat \"$f.mre\" > \"$f\"; rm -f \"$f.mre\""
        };
        let outcome = self.t.docker()?.exec(
            &self.container,
            &["sh", "-c", script, "sh", HBA_LINE],
            &[],
            None,
            &mut std::io::sink(),
        )?;
        if outcome.exit_code != 0 {
            bail!(
                "editing pg_hba.conf in {} failed: {}; add `{HBA_LINE}` to it by hand and reload",
                self.container,
                outcome.stderr
            );
        }
        self.t
            .connect(&self.t.settings.maintenance_db)?
            .batch_execute("SELECT pg_reload_conf()")
            .context("reloading the database's configuration")
    }

    /// Whether the slot exists.
    pub(super) fn slot_exists(&self) -> Result<bool> {
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        Ok(c.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&self.slot],
        )
        .context("reading pg_replication_slots")?
        .is_some())
    }

    pub(super) fn create_slot(&self) -> Result<()> {
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        c.execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&self.slot],
        )
        .with_context(|| format!("creating replication slot `{}`", self.slot))
        .map(drop)
    }

    pub(super) fn drop_slot(&self) -> Result<()> {
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        c.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&self.slot],
        )
        .with_context(|| {
            format!(
                "dropping replication slot `{}` (is the archiver still connected? `cargo xtask backup continuous stop {}`)",
                self.slot, self.t.env.name
            )
        })
        .map(drop)
    }

    /// Run `job` as container `name` until it exits; its exit code and
    /// last lines. The container is removed in every case.
    fn run_to_end(
        &self,
        docker: &Docker,
        out: &Output,
        name: &str,
        job: &Job,
        what: &str,
        limit: Duration,
    ) -> Result<()> {
        docker.start_job(name, job)?;
        let waited = wait::until(out, what, limit, Duration::from_millis(200), || {
            Ok(match docker.container(name)? {
                Some(c) if c.state == "exited" || c.state == "dead" => {
                    Poll::Ready(c.exit_code.unwrap_or(-1))
                }
                Some(c) => Poll::Pending(c.state),
                None => Poll::Ready(-1),
            })
        });
        let logs = docker.log_tail(name, 20).unwrap_or_default();
        let _ = docker.remove_container(name);
        match waited? {
            Waited::Ready(0) => Ok(()),
            Waited::Ready(code) => bail!("{what} failed (exit code {code}):\n{}", logs.trim()),
            Waited::TimedOut(_) => bail!(
                "{what} did not finish within {} s; its last lines:\n{}",
                limit.as_secs(),
                logs.trim()
            ),
        }
    }

    /// `pg_basebackup -Ft -X stream` into `base/<UTC>/`, with `base.json`.
    pub(super) fn base_backup(&self, out: &Output) -> Result<Base> {
        let docker = self.t.docker()?;
        let template = docker.template(&self.container)?.with_context(|| {
            format!(
                "the database container `{}` does not exist: start the database (`cargo xtask status {}`)",
                self.container, self.t.env.name
            )
        })?;
        let source = self.mount_source()?;
        let started = Utc::now();
        let name = started.compact();
        let dir = self.root.join("base").join(&name);
        if dir.exists() {
            bail!("{dir} exists: a base backup was taken this very second; try again");
        }
        let partial = format!("{name}.partial");
        let job = Job {
            image: template.image(),
            entrypoint: vec!["pg_basebackup".into()],
            cmd: [
                "-h",
                &self.container,
                "-p",
                &self.t.settings.container_port.to_string(),
                "-U",
                &self.t.user,
                "-D",
                &format!("{MOUNT}/base/{partial}"),
                "-Ft",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-password",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: self.password_env(),
            user: Some(self.owner()?),
            binds: vec![format!("{source}:{MOUNT}")],
            network: template.network(),
            labels: vec![(LABEL.into(), self.t.env.name.clone())],
            keep_running: false,
        };
        let runner = format!("{}-base-backup-{}", self.container, random_hex(3)?);
        let partial_dir = self.root.join("base").join(&partial);
        let result = self.run_to_end(
            &docker,
            out,
            &runner,
            &job,
            "pg_basebackup",
            Duration::from_secs(6 * 3600),
        );
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&partial_dir);
            return Err(e.context(format!(
                "the base backup of `{}` failed; nothing was kept",
                self.t.env.name
            )));
        }
        let manifest_file = partial_dir.join("backup_manifest");
        let manifest: serde_json::Value = std::fs::read_to_string(&manifest_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .with_context(|| {
                format!("reading {manifest_file} (pg_basebackup wrote no manifest?)")
            })?;
        let range = &manifest["WAL-Ranges"][0];
        let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
        let segment_bytes: i64 = c
            .query_one(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'",
                &[],
            )
            .context("reading wal_segment_size")?
            .get(0);
        let finished = Utc::now();
        let base = Base {
            name: name.clone(),
            started_at: started.rfc3339(),
            started_unix: started.unix(),
            finished_unix: finished.unix(),
            finished_ms: Some(finished.unix_ms()),
            bytes: crate::core::files::folder_size(&partial_dir),
            timeline: range["Timeline"].as_u64().unwrap_or(1) as u32,
            start_lsn: range["Start-LSN"].as_str().unwrap_or_default().to_string(),
            end_lsn: range["End-LSN"].as_str().unwrap_or_default().to_string(),
            segment_bytes: segment_bytes as u64,
            container: self.mask(template),
        };
        write_private(
            &partial_dir.join("base.json"),
            &serde_json::to_string_pretty(&base).context("writing base.json")?,
        )?;
        std::fs::rename(&partial_dir, &dir)
            .with_context(|| format!("renaming {partial_dir} to {dir}"))?;
        Ok(base)
    }

    /// Whether the archiver container runs.
    pub(super) fn archiver_running(&self, docker: &Docker) -> Result<bool> {
        Ok(docker
            .container(&self.archiver)?
            .is_some_and(|c| c.state == "running"))
    }

    /// Start `pg_receivewal` (restarted by the engine unless stopped), and
    /// wait until it holds the slot.
    pub(super) fn start_archiver(&self, out: &Output) -> Result<()> {
        let docker = self.t.docker()?;
        let template = docker.template(&self.container)?.with_context(|| {
            format!("the database container `{}` does not exist", self.container)
        })?;
        let source = self.mount_source()?;
        docker.remove_container(&self.archiver)?;
        let job = Job {
            image: template.image(),
            entrypoint: vec!["pg_receivewal".into()],
            cmd: [
                "-h",
                &self.container,
                "-p",
                &self.t.settings.container_port.to_string(),
                "-U",
                &self.t.user,
                "-D",
                &format!("{MOUNT}/wal"),
                "-S",
                &self.slot,
                "--synchronous",
                "--no-password",
                "--status-interval=1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            env: self.password_env(),
            user: Some(self.owner()?),
            binds: vec![format!("{source}:{MOUNT}")],
            network: template.network(),
            labels: vec![(LABEL.into(), self.t.env.name.clone())],
            keep_running: true,
        };
        docker.start_job(&self.archiver, &job)?;
        let waited = wait::until(
            out,
            "pg_receivewal to stream from the slot",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let mut c = self.t.connect(&self.t.settings.maintenance_db)?;
                let active: Option<bool> = c
                    .query_opt(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                        &[&self.slot],
                    )
                    .context("reading pg_replication_slots")?
                    .map(|r| r.get(0));
                Ok(match active {
                    Some(true) => Poll::Ready(()),
                    Some(false) => Poll::Pending("the slot is not in use yet".into()),
                    None => Poll::Pending(format!("there is no slot `{}`", self.slot)),
                })
            },
        )?;
        if let Waited::TimedOut(why) = waited {
            let logs = docker.log_tail(&self.archiver, 20).unwrap_or_default();
            bail!(
                "pg_receivewal ({}) did not start streaming within 30 s ({why}); its last lines:\n{}",
                self.archiver,
                logs.trim()
            );
        }
        Ok(())
    }

    pub(super) fn stop_archiver(&self) -> Result<()> {
        self.t.docker()?.remove_container(&self.archiver)
    }
}

/// The archive folder set aside (kept) once a restore began a new history.
pub(super) fn set_aside(root: &Utf8Path) -> Result<Option<Utf8PathBuf>> {
    if !root.exists() {
        return Ok(None);
    }
    let to = root.with_file_name(format!("archive-before-restore-{}", Utc::now().compact()));
    std::fs::rename(root, &to).with_context(|| format!("renaming {root} to {to}"))?;
    Ok(Some(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let seg = 16 * 1024 * 1024;
        assert_eq!(parse_segment("000000010000000000000003", seg), Some((1, 3)));
        assert_eq!(
            parse_segment("0000000200000001000000FF", seg),
            Some((2, 511))
        );
        assert_eq!(segment_name(2, 511, seg), "0000000200000001000000FF");
        assert_eq!(parse_segment("00000001000000000000000", seg), None);
        assert_eq!(lsn_value("1/2000028"), Some(0x1_0200_0028));
    }
}
