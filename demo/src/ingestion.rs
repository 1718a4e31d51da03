//! `mre-demo ingestion`: writes laps with a gap-free `seq` at a fixed rate, serves `/health`.

use crate::auth;
use crate::db::{self, DbError};
use crate::http::{serve, Response};
use postgres::{Client, Config};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const SERVICE: &str = "mre-liverc-ingestion-service";
const EVENT_NAME: &str = "Demo Race";
const UNHEALTHY_AFTER: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const DRIVERS: [&str; 6] = ["Ayrton", "Alain", "Michael", "Mika", "Lewis", "Max"];

#[derive(Default)]
struct Status {
    laps_written: u64,
    last_write: Option<SystemTime>,
    /// Set while the database is unreachable: since when, and the last error.
    down: Option<(Instant, String)>,
}

pub fn run(port: u16, url: String) -> Result<(), String> {
    let rate: u32 = match std::env::var("MRE_INGEST_RATE") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("invalid MRE_INGEST_RATE {v:?}"))?,
        _ => 5,
    };
    let cfg = db::config(&url)?;
    crate::log(&format!(
        "{SERVICE} listening on 0.0.0.0:{port} (database {}, {rate} laps/s)",
        db::redact(&url)
    ));
    let status = Arc::new(Mutex::new(Status::default()));
    let writer_status = status.clone();
    std::thread::spawn(move || writer(cfg, rate, &writer_status));
    serve(port, move |req| {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/health") => health(&status.lock().unwrap_or_else(|p| p.into_inner())),
            _ => Response::json(404, &json!({"error": "not found"})),
        }
    })
}

fn health(s: &Status) -> Response {
    match &s.down {
        Some((since, e)) if since.elapsed() > UNHEALTHY_AFTER => Response::json(
            503,
            &json!({"status": "unhealthy", "service": SERVICE,
                    "error": format!("database unreachable: {e}")}),
        ),
        _ => Response::json(
            200,
            &json!({"status": "healthy", "service": SERVICE, "laps_written": s.laps_written,
                    "last_write": s.last_write.map(crate::format_rfc3339)}),
        ),
    }
}

/// Where the writer stands once connected and the schema exists.
struct Cursor {
    event_id: String,
    next_seq: i64,
}

/// The writer loop: one batch per second; reconnects with backoff; never gives up.
fn writer(cfg: Config, rate: u32, status: &Mutex<Status>) {
    let set = |f: &dyn Fn(&mut Status)| f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
    let mut client: Option<Client> = None;
    let mut cursor: Option<Cursor> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_schema_log: Option<Instant> = None;
    let mut next_tick = Instant::now();
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = None;
            match db::connect(&cfg) {
                Ok(c) => {
                    crate::log("ingestion: connected to database");
                    client = Some(c);
                }
                Err(e) => {
                    let msg = match e {
                        DbError::Unavailable(m) | DbError::Other(m) => m,
                        other => format!("{other:?}"),
                    };
                    crate::log(&format!(
                        "ingestion: database error: {msg} (retry in {backoff:?})"
                    ));
                    set(&|s| {
                        let since = s.down.as_ref().map_or_else(Instant::now, |d| d.0);
                        s.down = Some((since, msg.clone()));
                    });
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        match step(c, rate, &mut cursor) {
            Ok(n) => {
                backoff = Duration::from_millis(100);
                set(&|s| {
                    s.down = None;
                    if n > 0 {
                        s.laps_written += n;
                        s.last_write = Some(SystemTime::now());
                    }
                });
                next_tick += Duration::from_secs(1);
                let now = Instant::now();
                if next_tick > now {
                    std::thread::sleep(next_tick - now);
                } else {
                    next_tick = now; // fell behind (e.g. after an outage): don't burst
                }
            }
            Err(e) => match DbError::classify(&e) {
                DbError::SchemaNotReady => {
                    cursor = None;
                    set(&|s| s.down = None);
                    if last_schema_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                        crate::log(
                            "ingestion: waiting for schema (run `cargo xtask migrate deploy`)",
                        );
                        last_schema_log = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    next_tick = Instant::now();
                }
                DbError::Conflict => {
                    // Someone else wrote our seq (or a commit's ack was lost): re-read max(seq).
                    crate::log(&format!(
                        "ingestion: seq conflict ({e}); re-reading max(seq)"
                    ));
                    cursor = None;
                }
                _ => {
                    crate::log(&format!(
                        "ingestion: database error: {e} (retry in {backoff:?})"
                    ));
                    let msg = e.to_string();
                    set(&|s| {
                        let since = s.down.as_ref().map_or_else(Instant::now, |d| d.0);
                        s.down = Some((since, msg.clone()));
                    });
                    client = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }
}

/// One tick: set up the cursor if needed, then insert one batch. Returns laps written.
fn step(c: &mut Client, rate: u32, cursor: &mut Option<Cursor>) -> Result<u64, postgres::Error> {
    if cursor.is_none() {
        let event_id: String = match c.query_opt(
            "SELECT id FROM events WHERE name = $1 ORDER BY created_at LIMIT 1",
            &[&EVENT_NAME],
        )? {
            Some(row) => row.get(0),
            None => {
                let id = auth::new_id();
                c.execute(
                    "INSERT INTO events (id, name, track, starts_at) VALUES ($1, $2, $3, now())",
                    &[&id, &EVENT_NAME, &"Demo Raceway"],
                )?;
                id
            }
        };
        let max: i64 = c
            .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM laps", &[])?
            .get(0);
        crate::log(&format!(
            "ingestion: writing laps for event {event_id} from seq {}",
            max + 1
        ));
        *cursor = Some(Cursor {
            event_id,
            next_seq: max + 1,
        });
    }
    let cur = cursor.as_mut().expect("set above");
    if rate == 0 {
        c.simple_query("SELECT 1")?; // writer disabled: still track database health
        return Ok(0);
    }
    let seqs: Vec<i64> = (cur.next_seq..cur.next_seq + i64::from(rate)).collect();
    let drivers: Vec<String> = seqs
        .iter()
        .map(|s| DRIVERS[*s as usize % DRIVERS.len()].to_string())
        .collect();
    let lap_numbers: Vec<i32> = seqs
        .iter()
        .map(|s| (*s as usize / DRIVERS.len() + 1) as i32)
        .collect();
    let lap_times: Vec<i32> = seqs
        .iter()
        .map(|s| 60_000 + (s.wrapping_mul(7919) % 5000) as i32)
        .collect();
    c.execute(
        "INSERT INTO laps (event_id, seq, driver, lap_number, lap_time_ms) \
         SELECT $1, * FROM unnest($2::BIGINT[], $3::TEXT[], $4::INT[], $5::INT[])",
        &[&cur.event_id, &seqs, &drivers, &lap_numbers, &lap_times],
    )?;
    cur.next_seq += i64::from(rate);
    Ok(u64::from(rate))
}
