//! Disaster Recovery Procedures, Backup Strategy: backups kept on the
//! database's server (`backup create --keep-on-server`), for databases too
//! large to copy to this machine each day. `pg_dump` writes into
//! `backups.server_dir`, a folder inside the database container that is a
//! volume or bind mount of the server's own disk; only the manifest comes
//! here. Verify, restore, drill and prune work on the file where it is,
//! through the same `docker exec` as the dump (over SSH for a remote).

use anyhow::{bail, Context, Result};

use crate::config::{config_error, Method};
use crate::core::steps::Plan;

use super::create::CreateState;
use super::manifest::Backup;
use super::pg_tools::{why_failed, Target, Tool};

impl<'a> Target<'a> {
    /// The folder inside the database container where `--keep-on-server`
    /// dumps stay, checked against the configuration.
    pub(super) fn server_dir(&self) -> Result<String> {
        let env = &self.env.name;
        let Some(dir) = self.settings.server_dir.as_deref() else {
            return Err(config_error(format!(
                "`--keep-on-server` needs environments.{env}.backups.server_dir in ops.toml: a folder inside the \
                 database container on a volume or bind mount of the server's disk (e.g. `/backups`, with \
                 `- /var/backups/mre:/backups` under the database service's volumes). docs/remote.md"
            )));
        };
        if !dir.starts_with('/') || dir.contains("..") || dir.contains('\'') {
            return Err(config_error(format!(
                "environments.{env}.backups.server_dir = \"{dir}\" must be an absolute path inside the database container, without `..` or quotes"
            )));
        }
        if self.method != Method::Container {
            return Err(config_error(format!(
                "`--keep-on-server` runs pg_dump in the database container: environment `{env}` uses \
                 backups.method = \"host\"; set method = \"container\" (and database.container)"
            )));
        }
        Ok(dir.trim_end_matches('/').to_string())
    }

    /// A dump left in the container's own layer would go with the
    /// container: refuse a `server_dir` that is not on a mount.
    fn check_mounted(&self, dir: &str) -> Result<()> {
        let container = self.container.as_deref().expect("checked in Target::new");
        let names = [container.to_string()];
        let spec = self.docker()?.specs(&names).pop().expect("one name")?;
        let Some(spec) = spec else {
            bail!(
                "the database container `{container}` does not exist: start the stack (`cargo xtask up {}`) first",
                self.env.name
            );
        };
        let on_mount = spec.mounts.iter().any(|m| {
            let m = m.trim_end_matches('/');
            dir == m || dir.starts_with(&format!("{m}/"))
        });
        if !on_mount {
            return Err(config_error(format!(
                "backups.server_dir = \"{dir}\" is not on a volume or bind mount of `{container}` (its mounts: {}): \
                 a dump there would be lost with the container. Mount the server's backup folder there \
                 (`- /var/backups/mre:{dir}` under the database service's volumes) and recreate the container",
                if spec.mounts.is_empty() {
                    "none".to_string()
                } else {
                    spec.mounts.join(", ")
                }
            )));
        }
        Ok(())
    }

    /// `sh -c SCRIPT sh ARGS...` in the database container; its output.
    pub(super) fn server_sh(&self, what: &str, script: &str, args: &[&str]) -> Result<String> {
        let container = self.container.as_deref().expect("checked in Target::new");
        let mut argv = vec!["sh", "-c", script, "sh"];
        argv.extend_from_slice(args);
        let env: Vec<String> = self
            .password
            .iter()
            .map(|p| format!("PGPASSWORD={p}"))
            .collect();
        let mut stdout = Vec::new();
        let outcome = self
            .docker()?
            // As root: the server's backup folder is usually root's, and the
            // files stay readable for the restore whatever the image's user.
            .exec_as(Some("0"), container, &argv, &env, None, &mut stdout)
            .with_context(|| format!("{what} in container {container}"))?;
        if outcome.exit_code != 0 {
            bail!(
                "{what} in container {container} failed (exit code {}): {}",
                outcome.exit_code,
                why_failed(outcome.exit_code, outcome.stderr.trim())
            );
        }
        Ok(String::from_utf8_lossy(&stdout).trim().to_string())
    }

    /// SHA-256 and size of a file in the database container.
    pub(super) fn server_sha256(&self, path: &str) -> Result<(String, u64)> {
        let text = self.server_sh(
            &format!("hashing {path}"),
            "test -f \"$1\" || { echo \"no such file: $1\" >&2; exit 2; }; \
             sha256sum \"$1\" | cut -d' ' -f1; wc -c < \"$1\"",
            &[path],
        )?;
        let mut lines = text.lines();
        let sha = lines.next().unwrap_or("").trim().to_string();
        let size = lines.next().and_then(|s| s.trim().parse().ok());
        match size {
            Some(size) if sha.len() == 64 => Ok((sha, size)),
            _ => bail!("could not read the SHA-256 and size of {path} in the database container: got `{text}`"),
        }
    }

    /// The dump and check steps of `backup create --keep-on-server`.
    pub(super) fn server_dump_steps<'p>(&'p self, plan: &mut Plan<'p, CreateState>) {
        let dir = self.settings.server_dir.clone().unwrap_or_default();
        let tool = self.tool(
            "pg_dump",
            &["-Fc".into(), "--snapshot=SNAPSHOT".into()],
            &self.database,
        );
        let shown = self.show(
            &tool,
            None,
            Some(&format!("{dir}/.{}-TIMESTAMP.dump.partial", self.database)),
        );
        plan.step(
            "Dump on the server, and count rows in the same snapshot meanwhile",
            format!("{shown}   (then sha256sum there; only the manifest comes here)"),
            move |st: &mut CreateState| {
                let dir = self.server_dir()?;
                self.check_mounted(&dir)?;
                let start = st.start.expect("snapshot exported");
                let name = format!("{}-{}", self.database, start.compact());
                let partial = format!("{dir}/.{name}.dump.partial-{}", std::process::id());
                let Tool::Container(argv) = self.tool(
                    "pg_dump",
                    &["-Fc".into(), format!("--snapshot={}", st.snapshot)],
                    &self.database,
                ) else {
                    unreachable!("server_dir checks the method")
                };
                st.name = name;
                st.server_partial = Some(partial.clone());
                let mut args = vec![partial.as_str()];
                args.extend(argv.iter().map(String::as_str));
                let mut client = st.client.take().expect("snapshot exported");
                let tables = &st.tables;
                let (dumped, counts) = std::thread::scope(|s| {
                    let counter = s.spawn(|| super::pg_tools::count_rows(&mut client, tables));
                    let dumped = self.server_sh(
                        "pg_dump into the server's backup folder",
                        "set -e; umask 077; mkdir -p \"$(dirname \"$1\")\"; f=\"$1\"; shift; \"$@\" > \"$f\"; \
                         sha256sum \"$f\" | cut -d' ' -f1; wc -c < \"$f\"",
                        &args,
                    );
                    (dumped, counter.join().expect("row count thread"))
                });
                let _ = client.batch_execute("COMMIT");
                let text = dumped.with_context(|| format!("dumping database `{}` on the server", self.database))?;
                st.counts = counts.context("counting rows in the dump's snapshot")?;
                let mut lines = text.lines();
                st.sha256 = lines.next().unwrap_or("").trim().to_string();
                st.size = lines.next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
                if st.sha256.len() != 64 || st.size < 5 {
                    bail!("pg_dump on the server wrote {} bytes: not an archive; nothing was kept", st.size);
                }
                Ok(())
            },
        )
        .undo("remove the partial file on the server (nothing is kept)", move |st: &mut CreateState| {
            if let Some(p) = st.server_partial.take() {
                let _ = self.server_sh("removing the partial dump", "rm -f \"$1\"", &[&p]);
            }
            Ok(())
        });
        plan.step(
            "Check the archive and keep it on the server",
            format!("PGDMP magic, then rename to {dir}/{}-TIMESTAMP.dump there and sync", self.database),
            move |st: &mut CreateState| {
                let partial = st.server_partial.clone().expect("dumped");
                let dump = format!("{}/{}.dump", self.server_dir()?, st.name);
                self.server_sh(
                    "checking and keeping the dump",
                    "test \"$(head -c 5 \"$1\")\" = PGDMP || { echo \"pg_dump's output does not start with PGDMP\" >&2; exit 3; }; \
                     test ! -e \"$2\" || { echo \"$2 exists already\" >&2; exit 4; }; mv \"$1\" \"$2\" && sync",
                    &[&partial, &dump],
                )?;
                st.server_partial = None;
                st.server_path = Some(dump);
                st.path = Some(self.folder.join(format!("{}.dump", st.name)));
                Ok(())
            },
        );
    }

    /// Delete a backup kept on the server (the file there, then the manifest here).
    pub(super) fn delete_on_server(&self, backup: &Backup, path: &str) -> Result<()> {
        self.server_sh("deleting a backup on the server", "rm -f \"$1\"", &[path])?;
        std::fs::remove_file(backup.manifest_path())
            .with_context(|| format!("deleting {}", backup.manifest_path()))
    }
}
