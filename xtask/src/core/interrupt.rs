//! Ctrl-C and SIGTERM while a plan runs: the signal is recorded, the running
//! step notices it (between steps, in waits and while a child process runs),
//! the undos run, and the process exits 130 (SIGINT) or 143 (SIGTERM) saying
//! what state things are in. Outside a plan the default behaviour stays: the
//! process dies at once, having changed nothing.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);
static ARMED: AtomicUsize = AtomicUsize::new(0);
static SHIELDS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record(sig: libc::c_int) {
    // Async-signal-safe: one atomic store.
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// The error a step returns when it was interrupted. `main` maps it to the
/// signal's exit code.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGINT => "SIGINT (Ctrl-C)",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    pub fn exit_code(&self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

/// While the guard lives, SIGINT and SIGTERM are recorded instead of killing
/// the process.
pub struct Armed(());

pub fn arm() -> Armed {
    if ARMED.fetch_add(1, Ordering::SeqCst) == 0 {
        // SAFETY: `record` only stores to an atomic.
        unsafe {
            libc::signal(
                libc::SIGINT,
                record as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
            libc::signal(
                libc::SIGTERM,
                record as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        if ARMED.fetch_sub(1, Ordering::SeqCst) == 1 {
            // SAFETY: restoring the default disposition.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
            }
        }
    }
}

/// The signal received, if any (and not shielded).
pub fn pending() -> Option<i32> {
    if SHIELDS.load(Ordering::SeqCst) > 0 {
        return None;
    }
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(Interrupted)` once a signal arrived: call it between units of work.
pub fn check() -> anyhow::Result<()> {
    match pending() {
        Some(sig) => Err(anyhow::Error::new(Interrupted(sig))),
        None => Ok(()),
    }
}

/// While undos run, a signal does not abort them.
pub struct Shield(());

pub fn shield() -> Shield {
    SHIELDS.fetch_add(1, Ordering::SeqCst);
    Shield(())
}

impl Drop for Shield {
    fn drop(&mut self) {
        SHIELDS.fetch_sub(1, Ordering::SeqCst);
    }
}
