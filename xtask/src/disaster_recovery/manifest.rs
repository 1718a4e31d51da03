//! Disaster Recovery Procedures: what a backup is. The dump and its
//! manifest (SHA-256, size, versions, per-table row counts from the dump's
//! own snapshot), and the private, atomic, hashed file writing they need.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{anyhow, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::adapters::clock::{self};
use crate::adapters::process::Command;
use crate::config::Method;
use crate::core::files::write_private;

pub(super) const FORMAT: &str = "mre-ops-backup/1";

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub format: String,
    /// The dump's file name, beside this manifest.
    pub file: String,
    pub sha256: String,
    pub size: u64,
    pub environment: String,
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    pub method: Method,
    /// Why it was taken: `manual`, `before migrate deploy`, `safety before restore`...
    pub reason: String,
    /// When the dump's snapshot was taken: the point in time it reflects.
    pub started_at: String,
    pub started_unix: i64,
    pub finished_at: String,
    /// The commit deployed, when known (MRE_DEPLOYED_COMMIT, GITHUB_SHA, or
    /// the git HEAD of ops.toml's folder).
    pub git_commit: Option<String>,
    /// `schema.table` -> rows, counted in the dump's snapshot.
    pub tables: BTreeMap<String, i64>,
    #[serde(default)]
    pub verifications: Vec<Verification>,
    #[serde(default)]
    pub offsite: Option<Offsite>,
    /// `backup create --keep-on-server`: the dump's path inside the
    /// database container (on the server's disk); none is kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_server: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Verification {
    pub at: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Offsite {
    pub path: String,
    pub sha256_ok: bool,
    pub at: String,
}

impl Manifest {
    pub fn verified(&self) -> Option<bool> {
        self.verifications.last().map(|v| v.ok)
    }
}

/// One backup on disk.
#[derive(Clone, Debug)]
pub struct Backup {
    pub path: Utf8PathBuf,
    pub name: String,
    pub manifest: Option<Manifest>,
}

impl Backup {
    pub(super) fn manifest_path(&self) -> Utf8PathBuf {
        manifest_path(&self.path)
    }
    pub(super) fn manifest(&self) -> Result<&Manifest> {
        self.manifest.as_ref().ok_or_else(|| {
            anyhow!(
                "{} has no manifest ({}): it is incomplete or was not made by mre-ops, and is not trusted as a backup",
                self.path,
                self.manifest_path()
            )
        })
    }
    pub(super) fn save_manifest(&self, m: &Manifest) -> Result<()> {
        let text = serde_json::to_string_pretty(m).expect("manifest serialises") + "\n";
        write_private(&self.manifest_path(), &text)
    }
}

pub(super) fn manifest_path(dump: &Utf8Path) -> Utf8PathBuf {
    dump.with_extension("json")
}

pub(super) fn load(path: &Utf8Path) -> Result<Backup> {
    let name = path.file_stem().unwrap_or_default().to_string();
    let mpath = manifest_path(path);
    let manifest = if mpath.exists() {
        let text = std::fs::read_to_string(&mpath).with_context(|| format!("reading {mpath}"))?;
        Some(
            serde_json::from_str::<Manifest>(&text)
                .with_context(|| format!("{mpath} is not a valid backup manifest"))?,
        )
    } else {
        None
    };
    Ok(Backup {
        path: path.to_owned(),
        name,
        manifest,
    })
}

pub(super) struct HashingWriter {
    pub(super) file: std::fs::File,
    pub(super) hasher: Sha256,
    pub(super) bytes: u64,
}

impl HashingWriter {
    pub(super) fn new(file: std::fs::File) -> Self {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    pub(super) fn finish(self) -> (std::fs::File, String, u64) {
        (self.file, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub fn sha256_file(path: &Utf8Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {path}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(super) fn starts_with_magic(path: &Utf8Path) -> Result<bool> {
    let mut head = [0u8; 5];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    Ok(f.read_exact(&mut head).is_ok() && &head == b"PGDMP")
}

pub(super) fn open_private(path: &Utf8Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {path}"))
}

pub(super) fn create_dir_private(dir: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the backup folder {dir}"))
}

pub(super) fn sync_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {dir}"))
}

pub(super) fn git_commit(dir: &Utf8Path) -> Option<String> {
    for key in ["MRE_DEPLOYED_COMMIT", "GITHUB_SHA"] {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    Command::new("git", ["-C", dir.as_str(), "rev-parse", "HEAD"])
        .read()
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub(super) fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

pub(super) fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else if secs < 172800 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}d", secs / 86400)
    }
}

pub(super) fn now_unix() -> i64 {
    clock::unix_secs(std::time::SystemTime::now())
}
