//! The one way to wait for something: poll a condition with a limit, say
//! what is awaited (a progress line on a terminal), and stop at once on
//! Ctrl-C or SIGTERM, whichever step is waiting.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::interrupt;
use crate::adapters::output::Output;

/// What one look at the condition found.
pub enum Poll<T> {
    /// It holds: the wait is over.
    Ready(T),
    /// Not yet, and why (shown while waiting, and in the timeout).
    Pending(String),
}

/// How a wait ended without an error.
pub enum Waited<T> {
    Ready(T),
    /// The limit passed; the last reason the condition did not hold.
    TimedOut(String),
}

/// Sleep `d`, waking at once for a signal (`Err(Interrupted)` then).
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        interrupt::check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Look at `probe` every `every` until it is ready or `limit` passed (it is
/// always looked at once, and once more at the limit). `what` names the
/// wait in the progress line: "waiting for {what} (12s): {reason}". An error
/// from `probe` ends the wait with that error.
pub fn until<T>(
    out: &Output,
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Poll<T>>,
) -> Result<Waited<T>> {
    let start = Instant::now();
    let result = loop {
        interrupt::check()?;
        let why = match probe() {
            Ok(Poll::Ready(v)) => break Ok(Waited::Ready(v)),
            Ok(Poll::Pending(why)) => why,
            Err(e) => break Err(e),
        };
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break Ok(Waited::TimedOut(why));
        }
        out.progress(&format!(
            "waiting for {what} ({:.0}s){}{why}",
            elapsed.as_secs_f64(),
            if why.is_empty() { "" } else { ": " }
        ));
        if let Err(e) = sleep(every.min(limit - elapsed)) {
            break Err(e);
        }
    };
    out.progress_done();
    result
}
