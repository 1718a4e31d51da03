//! `mre-demo`: a small stand-in for the MRE stack (`app` = web app, `ingestion` = lap writer).

mod app;
mod auth;
mod db;
mod http;
mod ingestion;

use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: mre-demo <app|ingestion>

  app        HTTP API on 0.0.0.0:$PORT (default 3001); env DATABASE_URL, MRE_DEMO_HEALTH_FAULT,
             MRE_DEMO_AUTH_FAULT (none|open|login), MRE_DEMO_SESSION_HOURS (24)
  ingestion  lap writer + /health on 0.0.0.0:$PORT (default 8000); env DATABASE_URL, MRE_INGEST_RATE";

/// A subcommand: runs with (port, DATABASE_URL).
type Command = fn(u16, String) -> Result<(), String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (default_port, run): (u16, Command) = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["app"] => (3001, app::run),
        ["ingestion"] => (8000, ingestion::run),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return;
        }
        _ => fail(USAGE),
    };
    install_signal_handlers();
    let port = match std::env::var("PORT") {
        Ok(p) if !p.trim().is_empty() => p
            .trim()
            .parse()
            .unwrap_or_else(|_| fail(&format!("invalid PORT {p:?}"))),
        _ => default_port,
    };
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    if url.is_empty() {
        fail("DATABASE_URL is not set");
    }
    if let Err(e) = run(port, url) {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("mre-demo: {msg}");
    std::process::exit(2)
}

/// Exit immediately on SIGTERM/SIGINT. As PID 1 in a container the default action would be
/// ignored, so an explicit handler is required for a prompt `docker stop`.
fn install_signal_handlers() {
    extern "C" fn on_signal(_: libc::c_int) {
        // Only async-signal-safe calls here.
        unsafe { libc::_exit(0) };
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installing a handler that only calls the async-signal-safe `_exit`.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// One log line on stdout, prefixed with the UTC time.
pub fn log(msg: &str) {
    println!("{} {msg}", format_rfc3339(SystemTime::now()));
}

/// `2025-01-27T13:45:01.123Z` (UTC, milliseconds), computed without a date library.
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(format_rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(at(1_737_936_000, 7)),
            "2025-01-27T00:00:00.007Z"
        );
        assert_eq!(
            format_rfc3339(at(951_825_599, 999)),
            "2000-02-29T11:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339(at(4_102_444_799, 0)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
