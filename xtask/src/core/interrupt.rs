//! Ctrl-C and SIGTERM while a plan runs: the signal is recorded, the running
//! step notices it (between steps, in waits and while a child process runs),
//! the undos run, and the process exits 130 (SIGINT) or 143 (SIGTERM) saying
//! what state things are in. Outside a plan the default behaviour stays: the
//! process dies at once, having changed nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

static ARMED: AtomicUsize = AtomicUsize::new(0);
static SHIELDS: AtomicUsize = AtomicUsize::new(0);

/// The handlers' state, installed by the first `arm`: the signal received
/// (0: none), and whether a signal takes its default action (dies) because
/// no plan is armed.
struct Handlers {
    signal: Arc<AtomicUsize>,
    default: Arc<AtomicBool>,
}

static HANDLERS: OnceLock<Handlers> = OnceLock::new();

fn handlers() -> &'static Handlers {
    HANDLERS.get_or_init(|| {
        let h = Handlers {
            signal: Arc::new(AtomicUsize::new(0)),
            default: Arc::new(AtomicBool::new(true)),
        };
        for sig in [SIGINT, SIGTERM] {
            // Outside a plan: the default action, as if nothing were installed.
            let _ = signal_hook::flag::register_conditional_default(sig, h.default.clone());
            let _ = signal_hook::flag::register_usize(sig, h.signal.clone(), sig as usize);
        }
        h
    })
}

/// The error a step returns when it was interrupted. `main` maps it to the
/// signal's exit code.
#[derive(Debug)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            SIGINT => "SIGINT (Ctrl-C)",
            SIGTERM => "SIGTERM",
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
    let h = handlers();
    if ARMED.fetch_add(1, Ordering::SeqCst) == 0 {
        h.default.store(false, Ordering::SeqCst);
    }
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        if ARMED.fetch_sub(1, Ordering::SeqCst) == 1 {
            handlers().default.store(true, Ordering::SeqCst);
        }
    }
}

/// The signal received, if any (and not shielded).
pub fn pending() -> Option<i32> {
    if SHIELDS.load(Ordering::SeqCst) > 0 {
        return None;
    }
    match HANDLERS.get()?.signal.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
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
