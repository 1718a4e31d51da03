//! Runnable documentation: the fixture the steps are read from. A private
//! folder beside nothing live: a copy of ops.toml, links to the folders it
//! names (Compose files, build contexts, migrations), fixed placeholder
//! secrets, one placeholder backup, and a Docker socket that does not exist,
//! so that every dry run describes a first release on an empty target, the
//! same on every machine.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::adapters::process::Command;
use crate::config::Ops;
use crate::core::files::write_private;

/// The placeholder backup's name (what `restore ENV latest` finds).
pub const BACKUP: &str = "pacetracer-20260101T000000Z";

pub struct Fixture {
    pub dir: Utf8PathBuf,
    pub config: Utf8PathBuf,
}

impl Fixture {
    pub fn new(ops: &Ops) -> Result<Fixture> {
        let dir = crate::config::workspace_root()
            .join(format!("target/mre-ops-runbook-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        let f = Fixture {
            config: dir.join("ops.toml"),
            dir,
        };
        std::fs::copy(&ops.path, &f.config)
            .with_context(|| format!("copying {} into {}", ops.path, f.dir))?;
        // Everything beside ops.toml but the state mre-ops keeps there.
        for entry in std::fs::read_dir(&ops.dir).with_context(|| format!("listing {}", ops.dir))? {
            let entry = entry.with_context(|| format!("listing {}", ops.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let skip = name == "ops.toml"
                || name.starts_with(".env")
                || name.starts_with(".git")
                || matches!(name.as_str(), "backups" | "target" | ".mre-ops");
            if !skip {
                std::os::unix::fs::symlink(entry.path(), f.dir.join(&name))
                    .with_context(|| format!("linking {name} into {}", f.dir))?;
            }
        }
        for (name, env) in &ops.file.environments {
            // Environments that generate their secrets show that step;
            // the others get placeholders, as an operator provides them.
            if !env.generate_secrets.is_empty() {
                continue;
            }
            let Some(file) = &env.env_file else { continue };
            let mut text = String::new();
            if let Some(var) = env.database.as_ref().and_then(|d| d.password_env.as_ref()) {
                text.push_str(&format!("{var}=runbook-placeholder\n"));
            }
            write_private(&f.dir.join(file), &text)
                .with_context(|| format!("the placeholder secrets of `{name}`"))?;
            let folder = env
                .backups
                .as_ref()
                .map(|b| b.dir.clone())
                .unwrap_or_else(|| "backups".into());
            f.placeholder_backup(&f.dir.join(folder).join(name), name)?;
        }
        Ok(f)
    }

    /// A backup with its manifest, for the steps of restore, verify and drill.
    fn placeholder_backup(&self, folder: &Utf8Path, env: &str) -> Result<()> {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {folder}"))?;
        let dump = "PGDMP placeholder";
        write_private(&folder.join(format!("{BACKUP}.dump")), dump)?;
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(dump.as_bytes()));
        let manifest = serde_json::json!({
            "format": "mre-ops-backup/1", "file": format!("{BACKUP}.dump"),
            "sha256": sha, "size": dump.len(), "environment": env,
            "database": "pacetracer", "server_version": "15", "pg_dump_version": "15",
            "method": "container", "reason": "runbook placeholder",
            "started_at": "2026-01-01T00:00:00Z", "started_unix": 1767225600,
            "finished_at": "2026-01-01T00:00:00Z", "git_commit": null, "tables": {},
        });
        write_private(
            &folder.join(format!("{BACKUP}.json")),
            &(serde_json::to_string_pretty(&manifest).expect("json") + "\n"),
        )
    }

    /// `cargo xtask --json ARGS` on the fixture: the plan it prints.
    pub fn dry_run(&self, args: &[&str]) -> Result<serde_json::Value> {
        let exe = std::env::current_exe().context("finding the xtask binary")?;
        let exe = Utf8PathBuf::from_path_buf(exe).map_err(|p| {
            anyhow::anyhow!("the xtask binary's path is not UTF-8: {}", p.display())
        })?;
        let mut argv = vec![
            "--config".to_string(),
            self.config.to_string(),
            "--json".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let text = Command::new(exe.as_str(), argv)
            .dir(&self.dir)
            .clean_env()
            .envs(&[
                (
                    "DOCKER_HOST".to_string(),
                    "unix:///nonexistent/mre-ops-runbook.sock".to_string(),
                ),
                ("MRE_SMOKE_EMAIL".into(), "smoke@example.com".into()),
                ("MRE_SMOKE_PASSWORD".into(), "runbook-placeholder".into()),
            ])
            .read()
            .with_context(|| {
                format!("`cargo xtask {} ` on the runbook's fixture", args.join(" "))
            })?;
        serde_json::from_str(&text)
            .with_context(|| format!("reading the plan of `cargo xtask {}`", args.join(" ")))
    }

    /// Machine- and run-specific text made stable: the fixture's folder,
    /// the Compose program found here, random and time-stamped names.
    pub fn normalise(&self, text: &str, compose: &str) -> String {
        let mut t = text.replace(self.dir.as_str(), ".");
        if !compose.is_empty() && compose != "docker compose" {
            t = t.replace(&format!("{compose} "), "docker compose ");
        }
        for (prefix, len) in [
            ("__mre_restore_", 8),
            ("__mre_replaced_", 18),
            ("__mre_safety_", 16),
        ] {
            t = mask_after(&t, prefix, len);
        }
        t
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replace the `len` characters after each `prefix` with `X`s.
fn mask_after(text: &str, prefix: &str, len: usize) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        out.push_str(&rest[..i + prefix.len()]);
        rest = &rest[i + prefix.len()..];
        let n = rest
            .char_indices()
            .take(len)
            .take_while(|(_, c)| c.is_ascii_alphanumeric())
            .count();
        out.push_str(&"X".repeat(n));
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks() {
        assert_eq!(
            super::mask_after("db__mre_restore_1a2b3c4d rest", "__mre_restore_", 8),
            "db__mre_restore_XXXXXXXX rest"
        );
    }
}
