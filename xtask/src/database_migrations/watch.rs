//! Database Migration Procedures, "Monitor migration progress": while a
//! migration runs longer than a few seconds, say how long, and what it
//! waits for: the sessions blocking it (`pg_blocking_pids`, with their
//! application, state, since when and their query), asked from a second
//! connection. A progress line on a terminal, a line every 10 s in a pipe,
//! JSON events on stderr with `--json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::adapters::output::Output;
use crate::adapters::postgres;

/// Say nothing for a migration quicker than this.
const QUIET_FOR: Duration = Duration::from_secs(3);

/// Watches one migration until dropped.
pub(super) struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watch the session `pid` (the migrator's) on `url` while migration `name` runs.
pub(super) fn watch(out: &Output, url: &str, pid: i32, name: &str) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let (json, quiet, verbose, tty) = (out.json, out.quiet, out.verbose, out.tty);
    let (url, name, flag) = (url.to_string(), name.to_string(), stop.clone());
    let thread = std::thread::spawn(move || {
        let out = Output::new(json, quiet, verbose);
        let start = Instant::now();
        let stopped = || flag.load(Ordering::SeqCst);
        while start.elapsed() < QUIET_FOR {
            if stopped() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Ok(mut client) = postgres::connect(&url, Duration::from_secs(5))
            .map_err(|e| out.detail(&format!("{e:#}")))
        else {
            return;
        };
        let mut last_line = Instant::now() - Duration::from_secs(60);
        while !stopped() {
            let blocking = blockers(&mut client, pid);
            let secs = start.elapsed().as_secs();
            let text = match &blocking {
                Ok(b) if b.is_empty() => format!("migration {name}: {secs} s, running"),
                Ok(b) => format!(
                    "migration {name}: {secs} s, waiting for a lock held by {}",
                    b.iter()
                        .map(Blocker::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Err(e) => format!("migration {name}: {secs} s (its locks could not be read: {e})"),
            };
            if json {
                let event = serde_json::json!({
                    "event": "migration_progress", "migration": name, "elapsed_secs": secs,
                    "blocked_by": blocking.as_ref().map(|b| b.iter().map(Blocker::json).collect::<Vec<_>>()).unwrap_or_default(),
                });
                eprintln!("{event}");
            } else if tty {
                out.progress(&text);
            } else if last_line.elapsed() >= Duration::from_secs(10) {
                out.line(&text);
                last_line = Instant::now();
            }
            for _ in 0..10 {
                if stopped() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        out.progress_done();
    });
    Watch {
        stop,
        thread: Some(thread),
    }
}

struct Blocker {
    pid: i32,
    application: String,
    state: String,
    since: String,
    query: String,
}

impl Blocker {
    fn describe(&self) -> String {
        format!(
            "pid {} ({}{}, since {}: {}); `SELECT pg_terminate_backend({})` ends it",
            self.pid,
            if self.application.is_empty() {
                "no application name"
            } else {
                &self.application
            },
            if self.state.is_empty() {
                String::new()
            } else {
                format!(", {}", self.state)
            },
            self.since,
            self.query,
            self.pid
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "pid": self.pid, "application": self.application, "state": self.state,
            "since": self.since, "query": self.query,
        })
    }
}

fn blockers(client: &mut postgres::Client, pid: i32) -> Result<Vec<Blocker>, String> {
    let rows = client
        .query(
            "SELECT b.pid, coalesce(b.application_name, ''), coalesce(b.state, ''), \
             coalesce(to_char(b.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '?'), \
             left(regexp_replace(coalesce(b.query, ''), '\\s+', ' ', 'g'), 80) \
             FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids($1))",
            &[&pid],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| Blocker {
            pid: r.get(0),
            application: r.get(1),
            state: r.get(2),
            since: r.get(3),
            query: r.get(4),
        })
        .collect())
}
