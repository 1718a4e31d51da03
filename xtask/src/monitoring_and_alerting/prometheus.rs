//! Monitoring and Alerting Setup, Check Metrics: a sample in Prometheus'
//! text exposition format, for node_exporter's textfile collector: names
//! with the app prefix, base units (seconds, bytes, ratios), `_total`
//! counters; written atomically so the collector never reads half a file.

use std::fmt::Write;

use super::alerts::Evaluation;
use super::metrics::Sample;

struct Family {
    name: String,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text of a sample and its alerts.
pub fn render(prefix: &str, env: &str, sample: &Sample, evals: &[Evaluation]) -> String {
    let mut fams: Vec<Family> = Vec::new();
    let mut fam = |name: &str, help: &'static str, kind: &'static str| {
        fams.push(Family {
            name: format!("{prefix}_{name}"),
            help,
            kind,
            samples: Vec::new(),
        });
        fams.len() - 1
    };
    let probe_q = fam(
        "http_probe_duration_seconds",
        "Response time of the health endpoints over the round's probes.",
        "summary",
    );
    let probe_err = fam(
        "http_probe_error_ratio",
        "Share of the round's probes that failed or were not 2xx.",
        "gauge",
    );
    let health_fail = fam(
        "health_check_failures",
        "Health checks failing (cargo xtask health).",
        "gauge",
    );
    let req = fam(
        "log_requests_total",
        "Requests in the container's log since it started.",
        "counter",
    );
    let errs = fam(
        "log_errors_total",
        "5xx answers in the container's log since it started.",
        "counter",
    );
    let up = fam("container_up", "1 when the container is running.", "gauge");
    let healthy = fam(
        "container_healthy",
        "1 when Docker reports the container healthy.",
        "gauge",
    );
    let cpu = fam(
        "container_cpu_usage_cores",
        "CPUs in use by the container.",
        "gauge",
    );
    let cpu_lim = fam(
        "container_cpu_limit_cores",
        "The container's CPU cap (the host's CPUs without one).",
        "gauge",
    );
    let mem = fam(
        "container_memory_usage_bytes",
        "Memory in use by the container, without page cache.",
        "gauge",
    );
    let mem_lim = fam(
        "container_memory_limit_bytes",
        "The container's memory limit.",
        "gauge",
    );
    let db_up = fam(
        "database_up",
        "1 when the database accepts a connection.",
        "gauge",
    );
    let db_conn = fam(
        "database_connections",
        "Connections open (pg_stat_activity).",
        "gauge",
    );
    let db_max = fam(
        "database_max_connections",
        "PostgreSQL max_connections.",
        "gauge",
    );
    let db_size = fam(
        "database_size_bytes",
        "pg_database_size of the application database.",
        "gauge",
    );
    let db_long = fam(
        "database_long_running_queries",
        "Queries running longer than slow_query_ms now.",
        "gauge",
    );
    let db_slow = fam(
        "database_slow_statements",
        "Statements with a mean time above slow_query_ms (pg_stat_statements).",
        "gauge",
    );
    let db_lag = fam(
        "database_replication_lag_seconds",
        "Replay lag of each replica.",
        "gauge",
    );
    let archive_secs = fam(
        "backup_archive_lag_seconds",
        "How far the continuous WAL archive trails the database (backups.continuous).",
        "gauge",
    );
    let archive_bytes = fam(
        "backup_archive_lag_bytes",
        "WAL bytes the archiver's replication slot still holds back.",
        "gauge",
    );
    let px_req = fam(
        "proxy_requests_total",
        "Requests the proxy sent to each colour of a blue-green service (HAProxy).",
        "counter",
    );
    let px_5xx = fam(
        "proxy_responses_5xx_total",
        "5xx answers of each colour, as the proxy saw them (HAProxy).",
        "counter",
    );
    let px_time = fam(
        "proxy_response_time_seconds",
        "Average response time of each colour's last 1,024 requests (HAProxy).",
        "gauge",
    );
    let px_live = fam(
        "proxy_colour_serving",
        "1 when the proxy sends a colour new requests (UP), else 0 (DRAIN, MAINT, DOWN).",
        "gauge",
    );
    let disk_free = fam("disk_free_bytes", "Free bytes of the file system.", "gauge");
    let disk_size = fam("disk_size_bytes", "Size of the file system.", "gauge");
    let folder = fam(
        "backups_folder_bytes",
        "Bytes held by the backups folder.",
        "gauge",
    );
    let alert = fam(
        "alert_breached",
        "1 when the alert's threshold is crossed now (before its `for`).",
        "gauge",
    );
    let e = || ("env", env.to_string());
    for p in &sample.probes {
        fams[probe_q].samples.push((
            vec![
                e(),
                ("service", p.service.clone()),
                ("quantile", "0.5".into()),
            ],
            p.p50_seconds,
        ));
        fams[probe_q].samples.push((
            vec![
                e(),
                ("service", p.service.clone()),
                ("quantile", "0.95".into()),
            ],
            p.p95_seconds,
        ));
        fams[probe_err]
            .samples
            .push((vec![e(), ("service", p.service.clone())], p.error_ratio()));
    }
    fams[health_fail]
        .samples
        .push((vec![e()], sample.health_failures.len() as f64));
    for l in &sample.logs {
        let lab = vec![e(), ("container", l.container.clone())];
        fams[req]
            .samples
            .push((lab.clone(), l.requests_total as f64));
        fams[errs].samples.push((lab, l.errors_total as f64));
    }
    for c in &sample.containers {
        let lab = vec![e(), ("container", c.container.clone())];
        fams[up].samples.push((lab.clone(), c.running as u8 as f64));
        fams[healthy]
            .samples
            .push((lab.clone(), (c.health == "healthy") as u8 as f64));
        if let Some(v) = c.cpu_cores {
            fams[cpu].samples.push((lab.clone(), v));
        }
        if let Some(v) = c.cpu_limit_cores {
            fams[cpu_lim].samples.push((lab.clone(), v));
        }
        if let Some(v) = c.memory_bytes {
            fams[mem].samples.push((lab.clone(), v as f64));
        }
        if let Some(v) = c.memory_limit_bytes {
            fams[mem_lim].samples.push((lab, v as f64));
        }
    }
    if let Some(db) = &sample.database {
        fams[db_up].samples.push((vec![e()], db.up as u8 as f64));
        if db.up {
            fams[db_conn]
                .samples
                .push((vec![e()], db.connections as f64));
            fams[db_max]
                .samples
                .push((vec![e()], db.max_connections as f64));
            fams[db_size]
                .samples
                .push((vec![e()], db.size_bytes as f64));
            fams[db_long]
                .samples
                .push((vec![e()], db.long_running as f64));
            if let Some(s) = db.slow_statements {
                fams[db_slow].samples.push((vec![e()], s as f64));
            }
            for (name, lag) in &db.replicas {
                fams[db_lag]
                    .samples
                    .push((vec![e(), ("replica", name.clone())], *lag));
            }
        }
    }
    if let Some(l) = &sample.archive {
        if let Some(s) = l.seconds {
            fams[archive_secs].samples.push((vec![e()], s));
        }
        if let Some(b) = l.bytes {
            fams[archive_bytes].samples.push((vec![e()], b as f64));
        }
    }
    for c in &sample.proxy {
        let lab = vec![
            e(),
            ("service", c.service.clone()),
            ("colour", c.colour.clone()),
        ];
        fams[px_req].samples.push((lab.clone(), c.requests as f64));
        fams[px_5xx]
            .samples
            .push((lab.clone(), c.responses_5xx as f64));
        fams[px_time]
            .samples
            .push((lab.clone(), c.avg_response_ms as f64 / 1000.0));
        let up = if c.status.starts_with("UP") { 1.0 } else { 0.0 };
        fams[px_live].samples.push((lab, up));
    }
    for d in &sample.disks {
        let lab = vec![e(), ("disk", d.label.clone()), ("path", d.path.clone())];
        fams[disk_free]
            .samples
            .push((lab.clone(), d.free_bytes as f64));
        fams[disk_size].samples.push((lab, d.size_bytes as f64));
        if let Some(u) = d.used_by_folder_bytes {
            fams[folder]
                .samples
                .push((vec![e(), ("path", d.path.clone())], u as f64));
        }
    }
    for ev in evals {
        fams[alert].samples.push((
            vec![
                e(),
                ("alertname", ev.alert.to_string()),
                ("instance", ev.instance.clone()),
            ],
            ev.breached as u8 as f64,
        ));
    }
    let mut text = String::new();
    for f in &fams {
        if f.samples.is_empty() {
            continue;
        }
        let _ = writeln!(text, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(text, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(text, "{}{{{}}} {}", f.name, l.join(","), num(*v));
        }
        if f.kind == "summary" {
            for p in &sample.probes {
                let l = format!("env=\"{}\",service=\"{}\"", escape(env), escape(&p.service));
                let _ = writeln!(text, "{}_sum{{{l}}} {}", f.name, num(p.sum_seconds));
                let _ = writeln!(text, "{}_count{{{l}}} {}", f.name, p.probes);
            }
        }
    }
    text
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
