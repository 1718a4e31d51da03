//! One lock per environment, taken by every command that changes it (deploy,
//! restore, migrate deploy/resolve, backup prune, recover). Two layers:
//! - on the target: a PostgreSQL session advisory lock in the environment's
//!   maintenance database, so two operators or two CI jobs on different
//!   machines exclude each other; the holder's details are its session's
//!   `application_name`, and a killed holder's lock goes with its session;
//! - on this machine: `flock` on `.mre-ops/locks/ENV.lock` beside ops.toml,
//!   which also covers an environment whose database does not exist yet (a
//!   first deploy); the file holds the holder's details, so a holder that
//!   died without releasing is reported as stale;
//! - on the server of an `ssh` environment: `flock` on
//!   `/var/lock/mre-ops-ENV.lock` held by a session over the SSH connection
//!   (released when its stdin closes, or when mre-ops dies), so two laptops
//!   and CI exclude each other before the database runs.
//!
//! A command run inside one that holds the lock (in-process, or a child
//! process through `MRE_OPS_LOCK_HELD`) runs under it instead of deadlocking.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wait::{Poll, Waited};
use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::adapters::postgres;
use crate::config::Env;

/// How long to wait for a held lock (`--lock-wait SECS`); 0: refuse at once.
static WAIT: OnceLock<Duration> = OnceLock::new();
static HELD: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
const CHILD_VAR: &str = "MRE_OPS_LOCK_HELD";

pub fn set_wait(secs: u64) {
    let _ = WAIT.set(Duration::from_secs(secs));
}

/// Who holds (or held) the lock.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Holder {
    pub operation: String,
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
}

impl Holder {
    fn me(operation: &str) -> Holder {
        Holder {
            operation: operation.to_string(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .or_else(|_| std::env::var("GITHUB_ACTOR"))
                .unwrap_or_else(|_| account_name()),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            pid: std::process::id(),
            since: Utc::now().rfc3339(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "`{}` by {}@{} (pid {}) since {}",
            self.operation, self.user, self.host, self.pid, self.since
        )
    }
}

/// The account this process runs as, from the password database (root in
/// a container often has no $USER).
fn account_name() -> String {
    // SAFETY: getpwuid returns NULL or a pointer to a static entry whose
    // pw_name is a NUL-terminated string; it is copied at once.
    unsafe {
        let uid = libc::geteuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid-{uid}");
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Who runs this command, as a lock holder is described: (user, host).
pub fn who() -> (String, String) {
    let me = Holder::me("");
    (me.user, me.host)
}

/// The held lock; released on drop (also on error and on signals, which
/// unwind through the step runner).
pub struct EnvLock {
    env: String,
    file: Option<(std::fs::File, Utf8PathBuf)>,
    _db: Option<postgres::Client>,
    /// The session holding the server's lock (`ssh` environments).
    server: Option<std::process::Child>,
    nested: bool,
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        if self.nested {
            if let Some(n) = HELD.lock().unwrap().get_mut(&self.env) {
                *n = n.saturating_sub(1);
            }
            return;
        }
        HELD.lock().unwrap().remove(&self.env);
        // Child processes started from now on no longer run under it.
        if std::env::var(CHILD_VAR).is_ok_and(|v| v == self.env) {
            std::env::remove_var(CHILD_VAR);
        }
        if let Some((f, _)) = &mut self.file {
            // Empty file = released cleanly; the flock goes with the fd.
            let _ = f.set_len(0);
        }
        if let Some(mut child) = self.server.take() {
            // EOF: the server's script empties the holder file and exits,
            // releasing its flock.
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

pub fn lock_file(env: &Env) -> Utf8PathBuf {
    env.dir
        .join(".mre-ops")
        .join("locks")
        .join(format!("{}.lock", env.name))
}

fn key(env: &Env) -> i64 {
    let d = Sha256::digest(format!("mre-ops:env:{}", env.name).as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Take the environment's lock for `operation`, waiting up to `--lock-wait`.
pub fn acquire(env: &Env, out: &Output, operation: &str) -> Result<EnvLock> {
    acquire_waiting(env, out, operation, Duration::ZERO)
}

/// The lock, unless this is a dry run (which changes nothing).
pub fn unless_dry_run(
    dry_run: bool,
    env: &Env,
    out: &Output,
    operation: &str,
) -> Result<Option<EnvLock>> {
    if dry_run {
        return Ok(None);
    }
    acquire(env, out, operation).map(Some)
}

/// The same, waiting at least `at_least` (`migrate deploy` waits its
/// `migrations.lock_wait_secs`, as it always waited for another migrator).
pub fn acquire_waiting(
    env: &Env,
    out: &Output,
    operation: &str,
    at_least: Duration,
) -> Result<EnvLock> {
    {
        let mut held = HELD.lock().unwrap();
        if let Some(n) = held.get_mut(&env.name) {
            *n += 1;
            return Ok(nested(env));
        }
        if std::env::var(CHILD_VAR).is_ok_and(|v| v == env.name) {
            out.detail(&format!(
                "running under the lock of `{}` held by the parent process",
                env.name
            ));
            held.insert(env.name.clone(), 1);
            return Ok(nested(env));
        }
    }
    let wait = WAIT.get().copied().unwrap_or_default().max(at_least);
    let start = Instant::now();
    let me = Holder::me(operation);

    let path = lock_file(env);
    std::fs::create_dir_all(path.parent().expect("a folder")).with_context(|| {
        format!(
            "creating {}: is the folder of ops.toml writable?",
            path.parent().unwrap()
        )
    })?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {path}"))?;
    let mut said = false;
    loop {
        // flock(2) (std's file lock on Linux): released with the descriptor,
        // also when the process is killed.
        if file.try_lock().is_ok() {
            break;
        }
        let holder = read_holder(&mut file);
        if start.elapsed() >= wait {
            bail!(
                "`{}` is locked: {} is running on this machine. Wait for it to finish (or pass --lock-wait SECS); \
                 `cargo xtask lock status {}` shows the holder",
                env.name,
                holder.map(|h| h.describe()).unwrap_or_else(|| "another mre-ops command".into()),
                env.name
            );
        }
        if !said {
            out.line(&format!(
                "Waiting for the lock of `{}`, held by {}; at most {} s",
                env.name,
                holder
                    .map(|h| h.describe())
                    .unwrap_or_else(|| "another mre-ops command".into()),
                wait.as_secs()
            ));
            said = true;
        }
        crate::core::wait::sleep(Duration::from_millis(250))?;
    }
    if let Some(old) = read_holder(&mut file) {
        out.warn(&format!(
            "the previous holder of `{}`'s lock, {}, ended without releasing it (killed?); {}",
            env.name,
            old.describe(),
            after_killed_holder(env, &old)
        ));
    }
    let text = serde_json::to_string(&me).expect("holder serialises");
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(text.as_bytes()))
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {path}"))?;

    let server = match server_lock(env, &me) {
        Ok(s) => s,
        Err(e) => {
            let _ = file.set_len(0);
            return Err(e);
        }
    };
    let db = match target_lock(env, &me, wait.saturating_sub(start.elapsed()), out) {
        Ok(db) => db,
        Err(e) => {
            let _ = file.set_len(0);
            return Err(e);
        }
    };
    HELD.lock().unwrap().insert(env.name.clone(), 1);
    // Child processes (pre-build hooks, prisma) run under this lock.
    std::env::set_var(CHILD_VAR, &env.name);
    Ok(EnvLock {
        env: env.name.clone(),
        file: Some((file, path)),
        _db: db,
        server,
        nested: false,
    })
}

/// The lock on the server of an `ssh` environment: `flock -n` held by a
/// shell over the connection that writes the holder beside it and waits for
/// its stdin to close. Refused at once (naming the holder) when another
/// operator, on any machine, holds it.
fn server_lock(env: &Env, me: &Holder) -> Result<Option<std::process::Child>> {
    use std::io::BufRead;
    let file = format!("/var/lock/mre-ops-{}.lock", env.name);
    let script = format!(
        "if [ ! -e {file} ] || [ -w {file} ]; then exec 9>>{file}; else exec 9<{file}; fi; \
         if ! flock -n 9; then echo HELD; cat {file}.holder 2>/dev/null; exit 75; fi; \
         IFS= read -r holder; printf '%s\\n' \"$holder\" > {file}.holder; echo LOCKED; \
         cat >/dev/null; : > {file}.holder"
    );
    let Some(mut child) = super::session::on_server(env, &script)? else {
        return Ok(None);
    };
    let mut stdin = child.stdin.take().expect("piped");
    let holder = serde_json::to_string(me).expect("holder serialises");
    writeln!(stdin, "{holder}").context("sending the lock holder to the server")?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    stdout
        .read_line(&mut first)
        .context("reading the server's lock answer")?;
    match first.trim() {
        "LOCKED" => {
            child.stdin = Some(stdin);
            Ok(Some(child))
        }
        "HELD" => {
            let mut rest = String::new();
            let _ = stdout.read_line(&mut rest);
            let _ = child.wait();
            let who = serde_json::from_str::<Holder>(rest.trim())
                .map(|h| h.describe())
                .unwrap_or_else(|_| "another mre-ops command".into());
            bail!(
                "`{}` is locked on its server by {who}. Wait for it to finish (or pass --lock-wait SECS); \
                 `cargo xtask lock status {}` shows the holder",
                env.name,
                env.name
            )
        }
        _ => {
            drop(stdin);
            let out = child.wait_with_output().ok();
            let err = out
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                .unwrap_or_default();
            bail!(
                "could not take the lock of `{}` on its server ({file}): {err}. Does the server have `flock` (util-linux) \
                 and a writable /var/lock?",
                env.name
            )
        }
    }
}

/// The command that helps after a holder was killed: `recover` when the
/// operation left a record of what it stopped or staged; for migrations,
/// which leave their story in `_prisma_migrations` instead, `migrate status`.
fn after_killed_holder(env: &Env, old: &Holder) -> String {
    let name = &env.name;
    if super::intent::pending(env).is_some() {
        format!("`cargo xtask recover {name}` finishes or undoes what it left")
    } else if old.operation.starts_with("migrate") || old.operation.starts_with("deploy") {
        format!(
            "it left no staged work to recover; if it was applying migrations, `cargo xtask migrate status {name}` says \
             what they left and `cargo xtask migrate deploy {name}` finishes them"
        )
    } else {
        format!(
            "it left no record of staged work (nothing for `recover` to do); `cargo xtask status {name}` shows \
             what runs now"
        )
    }
}

fn nested(env: &Env) -> EnvLock {
    EnvLock {
        env: env.name.clone(),
        file: None,
        _db: None,
        server: None,
        nested: true,
    }
}

fn read_holder(file: &mut std::fs::File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The advisory lock on the target's maintenance database, when it can be
/// reached (a first deploy has no database yet: the file lock stands alone).
fn target_lock(
    env: &Env,
    me: &Holder,
    wait: Duration,
    out: &Output,
) -> Result<Option<postgres::Client>> {
    let Ok(url) = env.database_url() else {
        return Ok(None);
    };
    let app = format!(
        "mre-ops lock {}: {} {}@{} {}",
        env.name, me.operation, me.user, me.host, me.pid
    );
    let app: String = app.chars().take(63).collect();
    let mut client = match postgres::connect_to(
        &url,
        &env.maintenance_db(),
        &app,
        Duration::from_secs(3),
    ) {
        Ok(c) => c,
        Err(e) => {
            out.detail(&format!(
                "the lock of `{}` is held on this machine only: the database is not reachable yet ({e:#})",
                env.name
            ));
            return Ok(None);
        }
    };
    let k = key(env);
    let what = format!("the lock of `{}` on its database server", env.name);
    let waited = super::wait::until(out, &what, wait, Duration::from_millis(250), || {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
            .context("taking the environment's advisory lock")?
            .get(0);
        Ok(if got {
            Poll::Ready(())
        } else {
            Poll::Pending(target_holder(&mut client, k).unwrap_or_else(|| "another session".into()))
        })
    })?;
    match waited {
        Waited::Ready(()) => Ok(Some(client)),
        Waited::TimedOut(who) => bail!(
            "`{}` is locked on its database server by {who}. Wait for it to finish (or pass --lock-wait SECS); \
             `cargo xtask lock status {}` shows the holder",
            env.name,
            env.name
        ),
    }
}

fn target_holder(client: &mut postgres::Client, k: i64) -> Option<String> {
    let classid = (k >> 32) as u32 as i64;
    let objid = k & 0xffff_ffff;
    let row = client
        .query_opt(
            "SELECT a.application_name, coalesce(host(a.client_addr), 'local socket'), \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&classid, &objid],
        )
        .ok()??;
    let app: String = row.get(0);
    let from: String = row.get(1);
    let since: String = row.get(2);
    Some(format!("`{app}` (from {from}, since {since})"))
}

/// What `lock status` reports: the local holder and the target's.
pub fn status(env: &Env) -> Result<(Option<Holder>, bool, Option<String>)> {
    let path = lock_file(env);
    let mut local = None;
    let mut stale = false;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        local = read_holder(&mut f);
        let free = f.try_lock().is_ok();
        stale = free && local.is_some();
    }
    let target = env.database_url().ok().and_then(|url| {
        let mut c = postgres::connect_to(
            &url,
            &env.maintenance_db(),
            "mre-ops lock status",
            Duration::from_secs(3),
        )
        .ok()?;
        target_holder(&mut c, key(env))
    });
    Ok((local, stale, target))
}

/// Who holds the lock on the server of an `ssh` environment, if anyone.
pub fn server_status(env: &Env) -> Option<String> {
    let file = format!("/var/lock/mre-ops-{}.lock", env.name);
    let script = format!(
        "exec 9<{file} 2>/dev/null || exit 0; if flock -n 9; then exit 0; fi; \
         echo HELD; cat {file}.holder 2>/dev/null"
    );
    let child = super::session::on_server(env, &script).ok()??;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    (lines.next()? == "HELD").then(|| {
        lines
            .next()
            .and_then(|l| serde_json::from_str::<Holder>(l).ok())
            .map(|h| h.describe())
            .unwrap_or_else(|| "another mre-ops command".into())
    })
}

/// `lock release --force`: end the target session holding the lock and
/// clear a stale local record. A live local holder is never forced: its
/// process must be stopped (the lock goes with it).
pub fn force_release(env: &Env) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let (local, stale, _) = status(env)?;
    if stale {
        std::fs::write(lock_file(env), b"").context("clearing the stale lock file")?;
        done.push(format!(
            "cleared the stale record of {}",
            local.map(|h| h.describe()).unwrap_or_default()
        ));
    } else if let Some(h) = local {
        bail!(
            "{} is alive and holds the lock of `{}` on this machine: stop that process (Ctrl-C runs its undo steps) rather than force it",
            h.describe(),
            env.name
        );
    }
    if let Ok(url) = env.database_url() {
        let mut c = postgres::connect_to(
            &url,
            &env.maintenance_db(),
            "mre-ops lock release",
            Duration::from_secs(3),
        )?;
        let k = key(env);
        let rows = c
            .query(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&((k >> 32) as u32 as i64), &(k & 0xffff_ffff)],
            )
            .context("ending the session that holds the lock")?;
        if !rows.is_empty() {
            done.push("ended the database session holding the lock".into());
        }
    }
    Ok(done)
}
