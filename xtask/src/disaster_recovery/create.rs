//! Disaster Recovery Procedures, Backup Strategy: `backup create` (and the
//! backup taken before migrations and releases): `pg_dump -Fc` written
//! atomically with its manifest, copied off-site ("Storage: secure, off-site
//! location").

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::adapters::postgres::{self, describe_url};
use crate::config::{Env, OffsiteTarget};
use crate::core::files::write_private;
use crate::core::steps::Plan;

use super::manifest::{
    create_dir_private, git_commit, manifest_path, open_private, sha256_file, starts_with_magic,
    sync_dir, Backup, HashingWriter, Manifest, Offsite, FORMAT,
};
use super::pg_tools::{count_rows, list_tables, Target};

/// What the steps of `backup create` hand on.
#[derive(Default)]
pub(super) struct CreateState {
    pub(super) client: Option<postgres::Client>,
    pub(super) start: Option<Utc>,
    pub(super) snapshot: String,
    pub(super) server_version: String,
    pub(super) pg_dump_version: String,
    pub(super) tables: Vec<String>,
    pub(super) counts: BTreeMap<String, i64>,
    pub(super) name: String,
    pub(super) tmp: Option<Utf8PathBuf>,
    pub(super) path: Option<Utf8PathBuf>,
    pub(super) sha256: String,
    pub(super) size: u64,
    pub(super) backup: Option<Backup>,
    /// `--keep-on-server`: the partial and the kept dump, in the database container.
    pub(super) server_partial: Option<String>,
    pub(super) server_path: Option<String>,
}

impl<'a> Target<'a> {
    /// `backup create` as a plan: what `--dry-run` prints is what runs.
    pub(super) fn create_plan<'p>(
        &'p self,
        out: &'p Output,
        reason: &'p str,
    ) -> Plan<'p, CreateState> {
        let mut plan: Plan<CreateState> = Plan::new(format!("backup create {}", self.env.name));
        plan.step(
            "Export a snapshot",
            format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_export_snapshot()   (on {})",
                describe_url(&self.url)
            ),
            move |st: &mut CreateState| {
                create_dir_private(&self.folder)?;
                st.pg_dump_version = self.pg_dump_version().context("asking pg_dump for its version")?;
                let mut client = self.connect(&self.database)?;
                st.start = Some(Utc::now());
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .context("starting the snapshot transaction")?;
                let row = client
                    .query_one("SELECT pg_export_snapshot(), current_setting('server_version')", &[])
                    .context("exporting a snapshot (pg_export_snapshot)")?;
                st.snapshot = row.get(0);
                st.server_version = row.get(1);
                st.tables = list_tables(&mut client)?;
                st.client = Some(client);
                Ok(())
            },
        );
        if self.on_server {
            self.server_dump_steps(&mut plan);
        } else {
            self.local_dump_steps(&mut plan, out);
        }
        plan.step(
            "Write the manifest",
            format!(
                "{}/{}-TIMESTAMP.json (SHA-256, size, versions, row counts)",
                self.folder, self.database
            ),
            move |st: &mut CreateState| {
                let start = st.start.expect("snapshot exported");
                let finished = Utc::now();
                let manifest = Manifest {
                    format: FORMAT.into(),
                    file: format!("{}.dump", st.name),
                    sha256: st.sha256.clone(),
                    size: st.size,
                    environment: self.env.name.clone(),
                    database: self.database.clone(),
                    server_version: st.server_version.clone(),
                    pg_dump_version: st.pg_dump_version.clone(),
                    method: self.method,
                    reason: reason.into(),
                    started_at: start.rfc3339(),
                    started_unix: start.unix(),
                    finished_at: finished.rfc3339(),
                    git_commit: git_commit(&self.env.dir),
                    tables: std::mem::take(&mut st.counts),
                    verifications: Vec::new(),
                    offsite: None,
                    on_server: st.server_path.clone(),
                };
                let mut backup = Backup {
                    path: st.path.clone().expect("kept"),
                    name: st.name.clone(),
                    manifest: None,
                };
                backup.save_manifest(&manifest)?;
                backup.manifest = Some(manifest);
                st.backup = Some(backup);
                Ok(())
            },
        );
        match self.settings.offsite_target() {
            Ok(Some(OffsiteTarget::Folder(dest))) if !self.on_server => {
                let root = self.env.dir.join(dest);
                plan.step(
                    "Copy off-site and re-check the SHA-256 there",
                    format!("{root}/{}/", self.env.name),
                    move |st: &mut CreateState| {
                        let backup = st.backup.as_mut().expect("written");
                        self.copy_offsite(backup, &root, out)
                    },
                );
            }
            Ok(Some(OffsiteTarget::Ssh {
                destination, path, ..
            })) if !self.on_server => {
                plan.step(
                    "Encrypt with age and copy to the off-site host",
                    format!(
                        "$ age --encrypt -r RECIPIENT... < DUMP | ssh {destination} 'cat > {path}/{}/NAME.dump.age' (SHA-256 of the ciphertext checked there; the manifest beside it)",
                        self.env.name
                    ),
                    move |st: &mut CreateState| {
                        let backup = st.backup.as_mut().expect("written");
                        self.copy_offsite_ssh(backup, out)
                    },
                );
            }
            _ => {}
        }
        plan
    }

    /// `pg_dump` streamed into this machine's backup folder.
    fn local_dump_steps<'p>(&'p self, plan: &mut Plan<'p, CreateState>, out: &'p Output) {
        let tool = self.tool(
            "pg_dump",
            &["-Fc".into(), "--snapshot=SNAPSHOT".into()],
            &self.database,
        );
        plan.step(
            "Dump, and count rows in the same snapshot meanwhile",
            format!(
                "{}   (and SELECT count(*) of every table in the snapshot, concurrently)",
                self.show(
                    &tool,
                    None,
                    Some(&format!(
                        "{}/.{}-TIMESTAMP.dump.partial-PID",
                        self.folder, self.database
                    ))
                )
            ),
            move |st: &mut CreateState| {
                let start = st.start.expect("snapshot exported");
                let mut name = format!("{}-{}", self.database, start.compact());
                let mut n = 1;
                while self.folder.join(format!("{name}.dump")).exists() {
                    n += 1;
                    name = format!("{}-{}-{n}", self.database, start.compact());
                }
                // Never ends in .dump: an interrupted dump cannot pass for a backup.
                let tmp = self
                    .folder
                    .join(format!(".{name}.dump.partial-{}", std::process::id()));
                st.name = name;
                st.tmp = Some(tmp.clone());
                let tool = self.tool(
                    "pg_dump",
                    &["-Fc".into(), format!("--snapshot={}", st.snapshot)],
                    &self.database,
                );
                out.detail(&self.show(&tool, None, Some(tmp.as_str())));
                let file = open_private(&tmp)?;
                let mut sink = HashingWriter::new(file);
                let mut client = st.client.take().expect("snapshot exported");
                let tables = &st.tables;
                let (dumped, counts) = std::thread::scope(|s| {
                    let counter = s.spawn(|| count_rows(&mut client, tables));
                    let dumped = self.run_hashed(&tool, &mut sink);
                    (dumped, counter.join().expect("row count thread"))
                });
                let _ = client.batch_execute("COMMIT");
                let server_sha = dumped.with_context(|| format!("dumping database `{}`", self.database))?;
                st.counts = counts.context("counting rows in the dump's snapshot")?;
                let (file, sha, size) = sink.finish();
                // Checksummed on both ends: what pg_dump wrote in the
                // container is what arrived here (over SSH, too).
                if let Some(server) = server_sha {
                    if server != sha {
                        bail!(
                            "the dump was damaged on its way here: SHA-256 {server} in the container, {sha} here; nothing was kept. \
                             Run `cargo xtask backup create` again"
                        );
                    }
                    out.detail(&format!("SHA-256 {sha}, the same in the container and here"));
                }
                if size < 5 {
                    bail!("pg_dump wrote {size} bytes: not an archive");
                }
                file.sync_all().with_context(|| format!("fsync {tmp}"))?;
                st.sha256 = sha;
                st.size = size;
                Ok(())
            },
        )
        .undo(
            "remove the partial file (nothing is kept)",
            move |st: &mut CreateState| {
                if let Some(tmp) = st.tmp.take() {
                    let _ = std::fs::remove_file(&tmp);
                }
                Ok(())
            },
        );
        plan.step(
            "Check the archive and keep it",
            format!("PGDMP magic, then rename to {}/{}-TIMESTAMP.dump (mode 0600) and fsync the folder", self.folder, self.database),
            move |st: &mut CreateState| {
                let tmp = st.tmp.clone().expect("dumped");
                if !starts_with_magic(&tmp)? {
                    bail!("pg_dump's output does not start with PGDMP: not a custom-format archive; nothing was kept");
                }
                let path = self.folder.join(format!("{}.dump", st.name));
                std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp} to {path}"))?;
                st.tmp = None;
                sync_dir(&self.folder)?;
                st.path = Some(path);
                Ok(())
            },
        );
    }

    /// `pg_dump -Fc` with its manifest, written atomically.
    pub(super) fn create(&self, out: &Output, reason: &str) -> Result<Backup> {
        let mut st = CreateState::default();
        self.create_plan(out, reason)
            .execute_with(out, false, &mut st)
            .map_err(|e| {
                e.context(format!(
                    "the backup of `{}` failed; nothing was kept (the partial file was removed)",
                    self.env.name
                ))
            })?;
        Ok(st.backup.expect("the plan writes it"))
    }

    pub(super) fn copy_offsite(
        &self,
        backup: &mut Backup,
        root: &Utf8Path,
        out: &Output,
    ) -> Result<()> {
        let dest_dir = root.join(&self.env.name);
        create_dir_private(&dest_dir)
            .with_context(|| format!("the off-site location {root} (backups.offsite)"))?;
        let dest = dest_dir.join(backup.path.file_name().expect("a file"));
        let tmp = dest_dir.join(format!(".{}.partial-{}", backup.name, std::process::id()));
        let copied = (|| -> Result<String> {
            let mut from = std::fs::File::open(&backup.path)
                .with_context(|| format!("opening {}", backup.path))?;
            let mut to = open_private(&tmp)?;
            std::io::copy(&mut from, &mut to).with_context(|| format!("copying to {tmp}"))?;
            to.sync_all().with_context(|| format!("fsync {tmp}"))?;
            drop(to);
            sha256_file(&tmp)
        })();
        let m = backup.manifest.clone().expect("just written");
        match copied {
            Ok(sha) if sha == m.sha256 => {}
            Ok(sha) => {
                let _ = std::fs::remove_file(&tmp);
                bail!(
                    "the off-site copy at {dest} has SHA-256 {sha}, expected {}: the copy was not kept; \
                     the local backup {} is fine",
                    m.sha256,
                    backup.path
                );
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!(
                    "copying the backup off-site to {dest}; the local backup {} is fine",
                    backup.path
                )));
            }
        }
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {tmp} to {dest}"))?;
        sync_dir(&dest_dir)?;
        let mut m = m;
        m.offsite = Some(Offsite {
            path: dest.to_string(),
            sha256_ok: true,
            at: Utc::now().rfc3339(),
        });
        backup.save_manifest(&m)?;
        let text = serde_json::to_string_pretty(&m).expect("manifest serialises") + "\n";
        write_private(&manifest_path(&dest), &text)?;
        backup.manifest = Some(m);
        out.detail(&format!("copied off-site to {dest} (SHA-256 checked)"));
        Ok(())
    }

    // -- checking

    /// SHA-256 and size against the manifest.
    pub(super) fn check_checksum(&self, backup: &Backup) -> Result<()> {
        let m = backup.manifest()?;
        if let Some(p) = &m.on_server {
            let (sha, size) = self.server_sha256(p).with_context(|| {
                format!("reading the backup kept on the server at {p} (backups.server_dir)")
            })?;
            if size != m.size || sha != m.sha256 {
                bail!(
                    "{p} on the server was altered: its SHA-256 is {sha} ({size} bytes), the manifest says {} ({} bytes). \
                     Do not restore it; pick another (`cargo xtask backup list {}`)",
                    m.sha256,
                    m.size,
                    self.env.name
                );
            }
            return Ok(());
        }
        let size = std::fs::metadata(&backup.path)
            .with_context(|| format!("reading {}", backup.path))?
            .len();
        if size < m.size {
            bail!(
                "{} is truncated: {size} bytes, the manifest says {}. Do not restore it; pick another (`cargo xtask backup list {}`)",
                backup.path,
                m.size,
                self.env.name
            );
        }
        let sha = sha256_file(&backup.path)?;
        if size != m.size || sha != m.sha256 {
            bail!(
                "{} was altered: its SHA-256 is {sha} ({size} bytes), the manifest says {} ({} bytes). \
                 Do not restore it; pick another (`cargo xtask backup list {}`)",
                backup.path,
                m.sha256,
                m.size,
                self.env.name
            );
        }
        Ok(())
    }
}

/// Take a verified-checksum backup of `env`'s database now (used by
/// `migrate deploy` and `deploy` on staging and production: "Backup database
/// before migration"). Returns the path of the backup written.
pub fn create_backup(env: &Env, out: &Output, reason: &str) -> Result<Utf8PathBuf> {
    let t = Target::new(env, None)?;
    let b = t.create(out, reason)?;
    t.check_checksum(&b)
        .context("re-reading the backup just written")?;
    out.line(&format!("Backup of `{}` written: {}", env.name, b.path));
    Ok(b.path)
}
