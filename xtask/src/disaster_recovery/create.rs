//! Disaster Recovery Procedures, Backup Strategy: `backup create` (and the
//! backup taken before migrations and releases): `pg_dump -Fc` written
//! atomically with its manifest, copied off-site ("Storage: secure, off-site
//! location").

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::config::Env;
use crate::core::files::write_private;

// Siblings: the module's parts share their items (pub(super)).
#[allow(unused_imports)]
use super::*;

impl<'a> Target<'a> {
    pub(super) fn create(&self, out: &Output, reason: &str) -> Result<Backup> {
        create_dir_private(&self.folder)?;
        let pg_dump_version = self
            .pg_dump_version()
            .context("asking pg_dump for its version")?;
        let mut client = self.connect(&self.database)?;
        let start = Utc::now();
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .context("starting the snapshot transaction")?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), current_setting('server_version')",
                &[],
            )
            .context("exporting a snapshot (pg_export_snapshot)")?;
        let snapshot: String = row.get(0);
        let server_version: String = row.get(1);
        let tables: Vec<String> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1",
                &[],
            )
            .context("listing the tables")?
            .iter()
            .map(|r| r.get(0))
            .collect();

        let mut name = format!("{}-{}", self.database, start.compact());
        let mut n = 1;
        while self.folder.join(format!("{name}.dump")).exists() {
            n += 1;
            name = format!("{}-{}-{n}", self.database, start.compact());
        }
        let path = self.folder.join(format!("{name}.dump"));
        // Never ends in .dump: an interrupted dump cannot pass for a backup.
        let tmp = self
            .folder
            .join(format!(".{name}.dump.partial-{}", std::process::id()));
        let tool = self.tool(
            "pg_dump",
            &["-Fc".into(), format!("--snapshot={snapshot}")],
            &self.database,
        );
        out.detail(&self.show(&tool, None, Some(tmp.as_str())));

        let written = (|| -> Result<(String, u64, BTreeMap<String, i64>)> {
            let file = open_private(&tmp)?;
            let mut sink = HashingWriter::new(file);
            // Count rows in the snapshot while pg_dump reads it.
            let (dumped, counts) = std::thread::scope(|s| {
                let counter = s.spawn(|| count_rows(&mut client, &tables));
                let dumped = self.run(&tool, None, &mut sink);
                (dumped, counter.join().expect("row count thread"))
            });
            dumped.with_context(|| format!("dumping database `{}`", self.database))?;
            let counts = counts.context("counting rows in the dump's snapshot")?;
            let (file, sha, size) = sink.finish();
            if size < 5 {
                bail!("pg_dump wrote {size} bytes: not an archive");
            }
            file.sync_all().with_context(|| format!("fsync {tmp}"))?;
            Ok((sha, size, counts))
        })();
        let _ = client.batch_execute("COMMIT");
        let (sha256, size, tables) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!(
                    "the backup of `{}` failed; nothing was kept (the partial file was removed)",
                    self.env.name
                )));
            }
        };
        if !starts_with_magic(&tmp)? {
            let _ = std::fs::remove_file(&tmp);
            bail!("pg_dump's output does not start with PGDMP: not a custom-format archive; nothing was kept");
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp} to {path}"))?;
        sync_dir(&self.folder)?;
        let finished = Utc::now();
        let manifest = Manifest {
            format: FORMAT.into(),
            file: format!("{name}.dump"),
            sha256,
            size,
            environment: self.env.name.clone(),
            database: self.database.clone(),
            server_version,
            pg_dump_version,
            method: self.method,
            reason: reason.into(),
            started_at: start.rfc3339(),
            started_unix: start.unix(),
            finished_at: finished.rfc3339(),
            git_commit: git_commit(&self.env.dir),
            tables,
            verifications: Vec::new(),
            offsite: None,
        };
        let mut backup = Backup {
            path,
            name,
            manifest: None,
        };
        backup.save_manifest(&manifest)?;
        backup.manifest = Some(manifest);
        if let Some(dest) = &self.settings.offsite {
            self.copy_offsite(&mut backup, &self.env.dir.join(dest), out)?;
        }
        Ok(backup)
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
