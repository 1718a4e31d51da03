//! Disaster Recovery Procedures, Backup Strategy: "Storage: secure,
//! off-site location", on another host. Each new backup is encrypted here
//! with age (to `offsite_recipients`: the host never sees a key), streamed
//! over SSH (the system's OpenSSH client, host key verified) into
//! `PATH/ENV/NAME.dump.age`, hashed on both ends, with its manifest beside
//! it (`NAME.json`: sizes, hashes and row counts, no data). `backup fetch`
//! brings one back and decrypts it (the identity from
//! `offsite_identity_env`), checked against the manifest's SHA-256; `backup
//! prune` applies `offsite_keep_days` there; `drill --from-offsite`
//! rehearses a restore from that copy alone.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::adapters::ssh::Master;
use crate::config::{config_error, OffsiteTarget};
use crate::core::files::{write_private, TempDir};

use super::manifest::{hex, open_private, sync_dir, Backup, HashingWriter, Manifest, Offsite};
use super::pg_tools::Target;
use super::store::retention;

/// An open connection to the off-site host, at the environment's folder.
pub(super) struct Vault {
    master: Master,
    /// `PATH/ENV` on the host.
    dir: String,
    /// `ssh://HOST/PATH/ENV`, for messages.
    pub(super) label: String,
}

/// `'...'` for a POSIX shell.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Vault {
    /// `sh -c SCRIPT` on the host: `input` streamed to its stdin, its
    /// stdout into `output`.
    fn sh(
        &self,
        what: &str,
        script: &str,
        input: Option<&mut (dyn Read + Send)>,
        output: &mut dyn Write,
    ) -> Result<()> {
        let mut child = self.master.spawn(script)?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (fed, err, copied) = std::thread::scope(|s| {
            let feeder = s.spawn(move || -> std::io::Result<()> {
                if let Some(r) = input {
                    std::io::copy(r, &mut stdin)?;
                }
                drop(stdin);
                Ok(())
            });
            let errs = s.spawn(move || {
                let mut e = String::new();
                let _ = stderr.read_to_string(&mut e);
                e
            });
            let copied = std::io::copy(&mut stdout, output);
            (
                feeder.join().expect("ssh input"),
                errs.join().expect("ssh stderr"),
                copied,
            )
        });
        let status = child
            .wait()
            .with_context(|| format!("{what} on {}", self.label))?;
        if !status.success() {
            bail!("{what} on {} failed ({status}): {}", self.label, err.trim());
        }
        fed.with_context(|| format!("{what}: sending to {}", self.label))?;
        copied.with_context(|| format!("{what}: reading from {}", self.label))?;
        Ok(())
    }

    fn read(&self, what: &str, script: &str) -> Result<String> {
        let mut out = Vec::new();
        self.sh(what, script, None, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The manifests kept there, newest first.
    pub(super) fn manifests(&self) -> Result<Vec<Manifest>> {
        let text = self.read(
            "listing the off-site backups",
            &format!(
                "cd {} 2>/dev/null || exit 0; for f in *.json; do [ -f \"$f\" ] || continue; tr -d '\\n' < \"$f\"; echo; done",
                sq(&self.dir)
            ),
        )?;
        let mut list = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let m: Manifest = serde_json::from_str(line)
                .with_context(|| format!("a manifest in {} is not valid JSON", self.label))?;
            list.push(m);
        }
        list.sort_by(|a, b| {
            b.started_unix
                .cmp(&a.started_unix)
                .then(b.file.cmp(&a.file))
        });
        Ok(list)
    }
}

impl<'a> Target<'a> {
    /// The off-site host, when `offsite` is `ssh://...`.
    pub(super) fn offsite_ssh(&self) -> Result<Option<(String, Option<u16>, String)>> {
        let env = &self.env.name;
        match self.settings.offsite_target() {
            Ok(Some(OffsiteTarget::Ssh {
                destination,
                port,
                path,
            })) => Ok(Some((destination, port, path))),
            Ok(_) => Ok(None),
            Err(e) => Err(config_error(format!("environments.{env}.backups: {e}"))),
        }
    }

    pub(super) fn open_vault(&self) -> Result<Vault> {
        let Some((destination, port, path)) = self.offsite_ssh()? else {
            return Err(config_error(format!(
                "environments.{}.backups.offsite is not another host (`ssh://[user@]host[:port]/path`)",
                self.env.name
            )));
        };
        let config = self
            .settings
            .offsite_ssh_config
            .as_ref()
            .map(|c| self.env.dir.join(c));
        let dir = self
            .env
            .tunnel_dir()
            .with_file_name(format!("offsite-{}", self.env.name));
        let master = Master::open(&destination, port, config.as_deref(), &dir, &|| {
            crate::core::interrupt::pending().is_some()
        })
        .with_context(|| format!("the off-site host of `{}` (backups.offsite)", self.env.name))?;
        Ok(Vault {
            master,
            dir: format!("{path}/{}", self.env.name),
            label: format!("ssh://{destination}{path}/{}", self.env.name),
        })
    }

    /// Encrypt `backup` to the recipients and keep it on the off-site host,
    /// hashed on both ends; the manifest goes beside it.
    pub(super) fn copy_offsite_ssh(&self, backup: &mut Backup, out: &Output) -> Result<()> {
        let vault = self.open_vault()?;
        let name = backup.name.clone();
        let (partial, file) = (
            format!(
                "{}/.{name}.dump.age.partial-{}",
                vault.dir,
                std::process::id()
            ),
            format!("{}/{name}.dump.age", vault.dir),
        );
        let mut args = vec!["--encrypt".to_string()];
        for r in &self.settings.offsite_recipients {
            args.extend(["-r".into(), r.clone()]);
        }
        let dump = std::fs::File::open(&backup.path)
            .with_context(|| format!("opening {}", backup.path))?;
        let mut age = Command::new("age")
            .args(&args)
            .stdin(dump)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context(
                "running `age` to encrypt the off-site copy: install it (`apt-get install age`)",
            )?;
        let mut cipher = HashingReader {
            inner: age.stdout.take().expect("piped"),
            hasher: Sha256::new(),
        };
        let sent = vault.sh(
            "writing the encrypted copy",
            &format!(
                "set -e; umask 077; mkdir -p {}; cat > {}",
                sq(&vault.dir),
                sq(&partial)
            ),
            Some(&mut cipher),
            &mut std::io::sink(),
        );
        let status = age.wait().context("waiting for age")?;
        let mut age_err = String::new();
        if let Some(mut e) = age.stderr.take() {
            let _ = e.read_to_string(&mut age_err);
        }
        let cleanup = |vault: &Vault| {
            let _ = vault.read(
                "removing the partial copy",
                &format!("rm -f {}", sq(&partial)),
            );
        };
        if !status.success() {
            cleanup(&vault);
            bail!(
                "age could not encrypt the off-site copy ({status}): {} — check environments.{}.backups.offsite_recipients",
                age_err.trim(),
                self.env.name
            );
        }
        if let Err(e) = sent {
            cleanup(&vault);
            return Err(e);
        }
        let here = hex(&cipher.hasher.finalize());
        let there = vault.read(
            "keeping the encrypted copy",
            &format!(
                "set -e; mv {p} {f}; sync; sha256sum {f} | cut -d' ' -f1",
                p = sq(&partial),
                f = sq(&file)
            ),
        )?;
        if there.trim() != here {
            let _ = vault.read("removing a damaged copy", &format!("rm -f {}", sq(&file)));
            bail!(
                "the off-site copy at {} arrived damaged (SHA-256 {} there, {here} sent): it was removed; the local backup {} is fine",
                vault.label,
                there.trim(),
                backup.path
            );
        }
        let mut m = backup.manifest.clone().expect("written");
        m.offsite = Some(Offsite {
            path: format!("{}/{name}.dump.age", vault.label),
            sha256_ok: true,
            at: Utc::now().rfc3339(),
        });
        let text = serde_json::to_string_pretty(&m).expect("manifest serialises") + "\n";
        vault.sh(
            "writing the manifest",
            &format!(
                "set -e; umask 077; cat > {d}/.{name}.json.partial; mv {d}/.{name}.json.partial {d}/{name}.json",
                d = sq(&vault.dir)
            ),
            Some(&mut text.as_bytes()),
            &mut std::io::sink(),
        )?;
        backup.save_manifest(&m)?;
        backup.manifest = Some(m);
        out.detail(&format!(
            "encrypted with age and copied to {} (SHA-256 checked there)",
            vault.label
        ));
        vault.master.close();
        Ok(())
    }

    /// Bring an off-site backup (`latest` or a name) into `into`, decrypted
    /// and checked against its manifest's SHA-256.
    pub(super) fn fetch_offsite(
        &self,
        which: &str,
        into: &Utf8Path,
        out: &Output,
    ) -> Result<Backup> {
        let identity = self.identity()?;
        let vault = self.open_vault()?;
        let manifests = vault.manifests()?;
        let m = if which == "latest" {
            manifests.iter().find(|m| m.verified() != Some(false))
        } else {
            let want = which.trim_end_matches(".dump");
            manifests
                .iter()
                .find(|m| m.file.trim_end_matches(".dump") == want)
        }
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = manifests.iter().map(|m| m.file.as_str()).collect();
            config_error(format!(
                "no off-site backup `{which}` at {}: there are {}",
                vault.label,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })?;
        let name = m.file.trim_end_matches(".dump").to_string();
        let path = into.join(&m.file);
        if path.exists() {
            bail!(
                "{path} is here already: `cargo xtask backup verify {} {name}` checks it",
                self.env.name
            );
        }
        let tmp = into.join(format!(".{name}.dump.fetch-{}", std::process::id()));
        let file = open_private(&tmp)?;
        let fetched = (|| -> Result<(String, u64)> {
            let mut age = Command::new("age")
                .args(["--decrypt", "-i", identity.path.as_str()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running `age` to decrypt: install it (`apt-get install age`)")?;
            let mut age_in = age.stdin.take().expect("piped");
            let mut age_out = age.stdout.take().expect("piped");
            let mut sink = HashingWriter::new(file);
            let (sent, wrote) = std::thread::scope(|s| {
                let w = s.spawn(|| std::io::copy(&mut age_out, &mut sink));
                let sent = vault.sh(
                    "reading the encrypted copy",
                    &format!("cat {}/{}", sq(&vault.dir), sq(&format!("{name}.dump.age"))),
                    None,
                    &mut age_in,
                );
                drop(age_in);
                (sent, w.join().expect("age output"))
            });
            let status = age.wait().context("waiting for age")?;
            let mut err = String::new();
            if let Some(mut e) = age.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            if !status.success() {
                bail!(
                    "age could not decrypt {name} from {} ({}): is ${} the identity of one of offsite_recipients?",
                    vault.label,
                    err.trim(),
                    self.settings.offsite_identity_env.as_deref().unwrap_or("?")
                );
            }
            sent?;
            wrote.context("writing the decrypted backup")?;
            let (file, sha, size) = sink.finish();
            file.sync_all().with_context(|| format!("fsync {tmp}"))?;
            Ok((sha, size))
        })();
        let (sha, size) = match fetched {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if sha != m.sha256 || size != m.size {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "the off-site copy of {name} decrypts to SHA-256 {sha} ({size} bytes), its manifest says {} ({} bytes): \
                 it is damaged; nothing was kept. Try an older one (`cargo xtask backup fetch {} NAME`)",
                m.sha256,
                m.size,
                self.env.name
            );
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp} to {path}"))?;
        let backup = Backup {
            path,
            name,
            manifest: Some(m.clone()),
        };
        backup.save_manifest(&m)?;
        sync_dir(into)?;
        out.detail(&format!(
            "fetched from {}, decrypted, SHA-256 as in its manifest",
            vault.label
        ));
        vault.master.close();
        Ok(backup)
    }

    /// The age identity from `offsite_identity_env`: a key (written to a
    /// private file for age, removed after) or the path of a file.
    fn identity(&self) -> Result<Identity> {
        let env = &self.env.name;
        let Some(var) = self.settings.offsite_identity_env.as_deref() else {
            return Err(config_error(format!(
                "decrypting an off-site backup needs environments.{env}.backups.offsite_identity_env: the variable \
                 holding the age identity (`AGE-SECRET-KEY-1...`, or the path of its file)"
            )));
        };
        let Some(value) = self.env.var(var).filter(|v| !v.trim().is_empty()) else {
            return Err(config_error(format!(
                "${var} is not set: put the age identity of the off-site copies there (or the path of its file); \
                 it is never stored on the off-site host"
            )));
        };
        if value.trim_start().starts_with("AGE-SECRET-KEY-") {
            let dir = TempDir::new("mre-ops-age")?;
            let path = dir.path().join("identity");
            write_private(&path, &format!("{}\n", value.trim()))?;
            return Ok(Identity {
                path,
                _dir: Some(dir),
            });
        }
        let path = Utf8PathBuf::from(value.trim());
        if !path.is_file() {
            return Err(config_error(format!(
                "${var} is neither an age identity (`AGE-SECRET-KEY-1...`) nor a file: {path}"
            )));
        }
        Ok(Identity { path, _dir: None })
    }

    /// Retention at the off-site host: `offsite_keep_days` (else
    /// `keep_days`), at least `keep_min`. Returns the names deleted (or
    /// that would be).
    pub(super) fn prune_offsite(&self, out: &Output, dry_run: bool) -> Result<Vec<String>> {
        let vault = self.open_vault()?;
        let manifests = vault.manifests()?;
        let now = super::manifest::now_unix();
        let input: Vec<(String, i64, bool)> = manifests
            .iter()
            .map(|m| {
                (
                    m.file.trim_end_matches(".dump").to_string(),
                    now - m.started_unix,
                    m.verified() == Some(true),
                )
            })
            .collect();
        let days = self
            .settings
            .offsite_keep_days
            .unwrap_or(self.settings.keep_days);
        let mut deleted = Vec::new();
        for d in retention(&input, days, self.settings.keep_min) {
            if d.keep {
                continue;
            }
            if dry_run {
                out.line(&format!(
                    "would delete {}/{}.dump.age off-site ({})",
                    vault.label, d.name, d.why
                ));
            } else {
                vault.read(
                    "deleting an off-site backup",
                    &format!(
                        "cd {} && rm -f {n}.dump.age {n}.json",
                        sq(&vault.dir),
                        n = sq(&d.name)
                    ),
                )?;
                out.line(&format!(
                    "deleted {}/{}.dump.age off-site ({})",
                    vault.label, d.name, d.why
                ));
            }
            deleted.push(d.name);
        }
        vault.master.close();
        Ok(deleted)
    }
}

/// The identity file age reads; a temporary one goes when this does.
struct Identity {
    path: Utf8PathBuf,
    _dir: Option<TempDir>,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
