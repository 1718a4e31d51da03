//! Monitoring and Alerting Setup: the runbook's recommended metrics measured
//! for real (metrics.rs), its recommended alerts with thresholds and `for`
//! durations from ops.toml (alerts.rs), and the Prometheus textfile
//! (prometheus.rs). One shot: a breach is exit 1. `--watch`: alerts go to a
//! webhook in Alertmanager's shape, and resolve when they clear.

mod alerts;
mod metrics;
mod prometheus;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;

use crate::adapters::clock;
use crate::adapters::http;
use crate::adapters::output::{register_secret, Output};
use crate::config::{config_error, parse_duration, Direction, Env, Ops};
use crate::core::check::{self, Check};
use crate::core::{files, interrupt, session};
use alerts::{Evaluation, Tracker};
use metrics::Sample;

/// Measure the recommended metrics and alert.
///
/// Measure and alert (runbook: Monitoring and Alerting Setup).
///
/// Measures the runbook's recommended metrics: response time p50/p95 and
/// error rate over monitor.probes requests to each health URL, request and
/// 5xx counts from the services' logs, each colour's requests, 5xx and
/// response time as HAProxy counts them, container CPU and memory (Docker
/// stats), database connections against max_connections, slow queries,
/// database size and replication lag, container health, and free disk of
/// the Docker data root and the backups folder. The recommended alerts
/// (health check failures, high error rate, database connection failures,
/// high memory/CPU, disk space low) use the thresholds in
/// [environments.ENV.monitor.alerts]; with backups.continuous, the WAL
/// archive's lag against backups.max_archive_lag (ArchiveLag). Once: exit 1 on a breach. With
/// --watch: a round every monitor.interval, alerts fire after their `for`
/// and are sent to monitor.webhook (Alertmanager's payload), then resolved.
#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Keep measuring for DURATION (`10m`, `24h`), alerting to the webhook;
    /// Ctrl-C stops early.
    #[arg(long, value_name = "DURATION")]
    pub watch: Option<String>,
    /// Write the metrics to FILE in Prometheus' text format (atomically,
    /// for node_exporter's textfile collector: name it `*.prom`).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<Utf8PathBuf>,
}

const APP: &str = "Application Metrics";
const DB: &str = "Database Metrics";
const INFRA: &str = "Infrastructure Metrics";
const ALERTS: &str = "Alerts";

pub fn monitor(ops: &Ops, out: &Output, args: &MonitorArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let watch = match &args.watch {
        None => None,
        Some(w) => Some(parse_duration(w).ok_or_else(|| {
            config_error(format!(
                "--watch {w}: not a duration; write e.g. 10m, 1h, 24h"
            ))
        })?),
    };
    let start = Instant::now();
    match watch {
        None => {
            let (sample, evals) = run_once(&env);
            if let Some(path) = &args.prometheus {
                write_textfile(&env, path, &sample, &evals)?;
            }
            let checks = checks(&env, &sample, &evals);
            report(out, &env, &checks, &sample, start.elapsed());
            let breached: Vec<String> = evals
                .iter()
                .filter(|e| e.breached)
                .map(|e| format!("{} on {}", e.alert, e.instance))
                .collect();
            if !breached.is_empty() {
                bail!(
                    "{} alert threshold(s) crossed in `{}`: {}. The thresholds are in [environments.{}.monitor.alerts]",
                    breached.len(),
                    env.name,
                    breached.join(", "),
                    env.name
                );
            }
            Ok(())
        }
        Some(total) => watch_loop(&env, out, total, args.prometheus.as_ref(), start),
    }
}

/// One round: the sample and every alert's evaluation. For callers such as
/// `deploy` ("Monitor logs and metrics" after a deployment).
pub fn run_once(env: &Env) -> (Sample, Vec<Evaluation>) {
    let sample = metrics::measure(env);
    let evals = alerts::evaluate(env, &sample);
    (sample, evals)
}

fn write_textfile(
    env: &Env,
    path: &Utf8PathBuf,
    sample: &Sample,
    evals: &[Evaluation],
) -> Result<()> {
    let text = prometheus::render(&env.settings.monitor.prefix, &env.name, sample, evals);
    files::write_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing the Prometheus textfile {path}: is its folder writable?"))
}

fn webhook(env: &Env) -> Result<Option<String>> {
    let m = &env.settings.monitor;
    if let Some(key) = &m.webhook_env {
        let Some(url) = env.var(key) else {
            return Err(config_error(format!(
                "monitor.webhook_env names ${key}, which is not set: export it or add it to {}",
                env.env_file_hint()
            )));
        };
        register_secret(&url);
        return Ok(Some(url));
    }
    Ok(m.webhook.clone())
}

fn watch_loop(
    env: &Env,
    out: &Output,
    total: Duration,
    textfile: Option<&Utf8PathBuf>,
    start: Instant,
) -> Result<()> {
    let interval =
        parse_duration(&env.settings.monitor.interval).unwrap_or(Duration::from_secs(30));
    let hook = webhook(env)?;
    if hook.is_none() {
        out.warn(&format!(
            "no monitor.webhook for `{}`: alerts are only printed here",
            env.name
        ));
    }
    let alerts_cfg = env.settings.monitor.alerts.resolved();
    let _armed = interrupt::arm();
    let mut tracker = Tracker::default();
    let mut failed_deliveries = 0;
    let mut rounds = 0;
    let last = loop {
        let round = Instant::now();
        let (sample, evals) = run_once(env);
        rounds += 1;
        if let Some(path) = textfile {
            if let Err(e) = write_textfile(env, path, &sample, &evals) {
                out.warn(&format!("{e:#}"));
            }
        }
        let now = clock::unix_secs(std::time::SystemTime::now());
        let t = tracker.step(&evals, &alerts_cfg, now);
        for (status, list) in [("firing", &t.firing), ("resolved", &t.resolved)] {
            if list.is_empty() {
                continue;
            }
            for (e, _) in list.iter() {
                let line = format!(
                    "{} {} on {} ({}): {}",
                    status.to_uppercase(),
                    e.alert,
                    e.instance,
                    env.name,
                    e.summary
                );
                if status == "firing" {
                    out.warn(&line);
                } else {
                    out.line(&line);
                }
            }
            if let Some(url) = &hook {
                let body = alerts::payload(env, status, list, now).to_string();
                match http::request("POST", url, &[], Some(&body), Duration::from_secs(10)) {
                    Ok(r) if (200..300).contains(&r.status) => {}
                    Ok(r) => {
                        failed_deliveries += 1;
                        out.warn(&format!(
                            "the webhook answered {} to a {status} notification",
                            r.status
                        ));
                    }
                    Err(why) => {
                        failed_deliveries += 1;
                        out.warn(&format!(
                            "the {status} notification was not delivered: {why}"
                        ));
                    }
                }
            }
        }
        let breached = evals.iter().filter(|e| e.breached).count();
        out.line(&format!(
            "round {rounds}: {breached} threshold(s) crossed, {} alert(s) firing",
            tracker.firing().len()
        ));
        let deadline = round + interval;
        loop {
            if interrupt::pending().is_some() || start.elapsed() >= total {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if interrupt::pending().is_some() || start.elapsed() >= total {
            break (sample, evals);
        }
    };
    let checks = checks(env, &last.0, &last.1);
    report(out, env, &checks, &last.0, start.elapsed());
    if failed_deliveries > 0 {
        bail!(
            "{failed_deliveries} alert notification(s) could not be delivered to the webhook: check monitor.webhook and the receiver"
        );
    }
    Ok(())
}

fn report(out: &Output, env: &Env, checks: &[Check], sample: &Sample, took: Duration) {
    check::checklist(
        out,
        "monitor",
        &format!("Monitoring `{}`", env.name),
        serde_json::json!({ "environment": env.name, "sample": sample }),
        checks,
        took,
    )
    .emit(out);
}

fn ms(secs: f64) -> String {
    format!("{:.0} ms", secs * 1000.0)
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

/// The sample as checks: each metric with its value (PASS, or WARN when it
/// could not be measured), then one check per alert (FAIL when crossed).
fn checks(env: &Env, s: &Sample, evals: &[Evaluation]) -> Vec<Check> {
    let z = Duration::ZERO;
    let mut c = Vec::new();
    for p in &s.probes {
        c.push(Check::pass(
            format!("{} response time", p.service),
            APP,
            p.url.clone(),
            format!(
                "p50 {}, p95 {}; errors {}/{} ({:.0}%)",
                ms(p.p50_seconds),
                ms(p.p95_seconds),
                p.errors,
                p.probes,
                p.error_ratio() * 100.0
            ),
            z,
        ));
    }
    for l in &s.logs {
        c.push(Check::pass(
            format!("{} requests", l.service),
            APP,
            l.container.clone(),
            format!(
                "{} requests, {} errors (5xx) in the last {}; {} and {} since start",
                l.window_requests,
                l.window_errors,
                env.settings.monitor.log_window,
                l.requests_total,
                l.errors_total
            ),
            z,
        ));
    }
    for p in &s.proxy {
        c.push(Check::pass(
            format!("{} {} (proxy)", p.service, p.colour),
            APP,
            format!("{}/{}", p.service, p.colour),
            format!(
                "{}: {} requests, {} 5xx, avg {} ms, {} in flight",
                p.status, p.requests, p.responses_5xx, p.avg_response_ms, p.active
            ),
            z,
        ));
    }
    for k in &s.containers {
        let usage = match (k.cpu_cores, k.memory_bytes, k.memory_limit_bytes) {
            (Some(cpu), Some(m), Some(l)) => format!(
                "CPU {cpu:.2} of {} cores, memory {} of {}",
                k.cpu_limit_cores.unwrap_or(0.0),
                mib(m),
                mib(l)
            ),
            _ => "no stats (not running)".into(),
        };
        c.push(Check::pass(
            format!("{} usage", k.container),
            APP,
            k.container.clone(),
            usage,
            z,
        ));
    }
    match &s.database {
        None => c.push(Check::skip(
            "database".into(),
            DB,
            "-".into(),
            "no [database] in ops.toml".into(),
        )),
        Some(db) if !db.up => c.push(Check::warn(
            "database".into(),
            DB,
            "-".into(),
            format!("not measured: {}", db.error.clone().unwrap_or_default()),
            z,
        )),
        Some(db) => {
            c.push(Check::pass(
                "connections".into(),
                DB,
                "pg_stat_activity".into(),
                format!(
                    "{} of max_connections {} ({:.0}%)",
                    db.connections,
                    db.max_connections,
                    db.connections as f64 * 100.0 / db.max_connections.max(1) as f64
                ),
                z,
            ));
            let slow = match db.slow_statements {
                Some(n) => Check::pass(
                    "slow queries".into(),
                    DB,
                    "pg_stat_statements".into(),
                    format!(
                        "{n} statements with mean above {} ms; {} running longer now",
                        env.settings.monitor.slow_query_ms, db.long_running
                    ),
                    z,
                ),
                None => Check::warn(
                    "slow queries".into(),
                    DB,
                    "pg_stat_activity".into(),
                    format!(
                        "{} running longer than {} ms now; pg_stat_statements is not installed, so past slow queries are not counted",
                        db.long_running, env.settings.monitor.slow_query_ms
                    ),
                    z,
                ),
            };
            c.push(slow);
            c.push(Check::pass(
                "database size".into(),
                DB,
                "pg_database_size".into(),
                mib(db.size_bytes.max(0) as u64),
                z,
            ));
            c.push(if db.replicas.is_empty() {
                Check::skip(
                    "replication lag".into(),
                    DB,
                    "pg_stat_replication".into(),
                    "no replica".into(),
                )
            } else {
                Check::pass(
                    "replication lag".into(),
                    DB,
                    "pg_stat_replication".into(),
                    db.replicas
                        .iter()
                        .map(|(n, l)| format!("{n}: {l:.1} s"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    z,
                )
            });
            if let Some(e) = &db.error {
                c.push(Check::warn(
                    "database queries".into(),
                    DB,
                    "-".into(),
                    e.clone(),
                    z,
                ));
            }
        }
    }
    for k in &s.containers {
        c.push(Check::pass(
            format!("container {}", k.container),
            INFRA,
            k.container.clone(),
            format!(
                "{}, health {}",
                if k.running { "running" } else { "not running" },
                k.health
            ),
            z,
        ));
    }
    for d in &s.disks {
        c.push(Check::pass(
            format!("disk {}", d.label),
            INFRA,
            d.path.clone(),
            format!(
                "{:.1} GiB free of {:.1} GiB ({:.0}%){}",
                d.free_bytes as f64 / (1u64 << 30) as f64,
                d.size_bytes as f64 / (1u64 << 30) as f64,
                d.free_ratio() * 100.0,
                d.used_by_folder_bytes
                    .map(|u| format!("; the folder holds {}", mib(u)))
                    .unwrap_or_default()
            ),
            z,
        ));
    }
    for n in &s.notes {
        c.push(Check::warn(
            "not measured".into(),
            INFRA,
            "-".into(),
            n.clone(),
            z,
        ));
    }
    for a in env.settings.monitor.alerts.resolved() {
        let mine: Vec<&Evaluation> = evals.iter().filter(|e| e.alert == a.name).collect();
        let word = match a.direction {
            Direction::Above => "above",
            Direction::Below => "below",
        };
        let target = format!("{} {word} {} for {}s", a.key, a.threshold, a.for_.as_secs());
        let bad: Vec<&&Evaluation> = mine.iter().filter(|e| e.breached).collect();
        c.push(if mine.is_empty() {
            Check::skip(a.name.into(), ALERTS, target, "nothing to evaluate".into())
        } else if bad.is_empty() {
            Check::pass(
                a.name.into(),
                ALERTS,
                target,
                format!(
                    "{} instance(s) within threshold {} ({})",
                    mine.len(),
                    a.threshold,
                    mine.iter().map(|e| format!("{} {:.3}", e.instance, e.value)).collect::<Vec<_>>().join(", ")
                ),
                z,
            )
        } else {
            Check::fail(
                a.name.into(),
                ALERTS,
                target,
                &format!(
                    "{} {}",
                    if a.direction == Direction::Above { "at most" } else { "at least" },
                    a.threshold
                ),
                bad.iter()
                    .map(|e| format!("{} {:.3} ({})", e.instance, e.value, e.summary))
                    .collect::<Vec<_>>()
                    .join("; "),
                format!(
                    "look at it (`cargo xtask health {0}`, `cargo xtask logs SERVICE --env {0}`), or adjust monitor.alerts.{1}",
                    env.name, a.key
                ),
                z,
            )
        });
    }
    // ArchiveLag: its threshold is `backups.max_archive_lag`, not an
    // alert rule of its own.
    for e in evals.iter().filter(|e| e.alert == "ArchiveLag") {
        let target = format!("archive lag above {} s", e.threshold);
        c.push(if e.breached {
            Check::fail(
                e.alert.into(),
                ALERTS,
                target,
                &format!("at most {} s", e.threshold),
                e.summary.clone(),
                format!(
                    "`cargo xtask backup status {0}` says what to do; the threshold is backups.max_archive_lag",
                    env.name
                ),
                z,
            )
        } else {
            Check::pass(e.alert.into(), ALERTS, target, e.summary.clone(), z)
        });
    }
    c
}
