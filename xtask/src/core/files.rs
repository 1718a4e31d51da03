//! Files and randomness shared by every section: private files written
//! atomically, random tokens (`getrandom` and `hex`, already in the
//! dependency graph) and UUIDs (`uuid`).

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// Write a file readable by its owner only, through a temporary file and a
/// rename so that a crash never leaves half of it. Two writers at once each
/// use their own temporary file; the last rename wins.
pub fn write_private(path: &Utf8Path, text: &str) -> Result<()> {
    write_private_bytes(path, text.as_bytes())
}

pub fn write_private_bytes(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Write a file through a temporary file and a rename, with `mode` (e.g.
/// 0o644 for a Prometheus textfile that node_exporter reads as another user).
pub fn write_atomic(path: &Utf8Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = Utf8PathBuf::from(format!(
        "{path}.tmp-{}-{}",
        std::process::id(),
        random_hex(4)?
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {tmp}: is its folder writable?"))?;
    let written = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {tmp}: is the disk full?"));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {tmp} to {path}"))?;
    Ok(())
}

/// Whether this process may create files in `dir` (access(2), W_OK): a
/// question, not an attempt.
pub fn writable(dir: &Utf8Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_str()) else {
        return false;
    };
    // SAFETY: a valid C string; access(2) only reads it.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

/// Free and total bytes of the file system holding `path` (statvfs).
pub fn disk_space(path: &Utf8Path) -> Result<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_str()).context("a path with a NUL byte")?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed struct for the kernel to fill.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {path}: does it exist on this machine?"));
    }
    let frag = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frag, st.f_blocks as u64 * frag))
}

/// The bytes of every file under `dir` (0 when it does not exist).
pub fn folder_size(dir: &Utf8Path) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    walk(dir.as_std_path())
}

/// A private folder under the system's temporary directory with an
/// unguessable name (`mkdir` fails rather than follow a planted name),
/// removed with everything in it when dropped. `tempfile` would do this but
/// brings `rustix` into every cold build.
pub struct TempDir(Utf8PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let base = Utf8PathBuf::from_path_buf(std::env::temp_dir())
            .map_err(|p| anyhow::anyhow!("the temporary folder {} is not UTF-8", p.display()))?;
        TempDir::new_in(&base, prefix)
    }

    /// The same under `base` (e.g. beside large files, off a small /tmp).
    pub fn new_in(base: &Utf8Path, prefix: &str) -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = base.join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            random_hex(6)?
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {path}: is {base} writable?"))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Utf8Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    Ok(hex::encode(buf))
}

/// A random UUID v4, lowercase and hyphenated (Prisma's migration ids).
pub fn uuid_v4() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| anyhow::anyhow!("the system's random source failed: {e}"))?;
    Ok(uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_is_v4() {
        let u = super::uuid_v4().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
    }
}
