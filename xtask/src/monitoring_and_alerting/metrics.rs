//! Monitoring and Alerting Setup, Recommended Monitoring: each metric
//! measured for real: response times and error rates over N probes, request
//! and error counts from the logs, container CPU and memory (Engine stats),
//! database connections, slow queries, size and replication lag, container
//! health, and disk usage of the Docker data root and the backups folder.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::adapters::{clock, http, postgres};
use crate::config::Env;
use crate::core::check::{self, Probe};
use crate::core::files;

/// One round of measurements.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Sample {
    pub at: i64,
    pub probes: Vec<ProbeStats>,
    pub health_failures: Vec<String>,
    pub logs: Vec<LogCounts>,
    pub containers: Vec<ContainerStats>,
    pub database: Option<DbStats>,
    pub disks: Vec<DiskStats>,
    /// The continuous archive's lag (`backups.continuous`).
    pub archive: Option<crate::disaster_recovery::ArchiveLag>,
    /// Each colour of the released services, as HAProxy counts it.
    pub proxy: Vec<crate::core::proxy_stats::ColourStat>,
    /// Measurements that could not be taken, said plainly.
    pub notes: Vec<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct ProbeStats {
    pub service: String,
    pub url: String,
    pub probes: u32,
    pub errors: u32,
    pub p50_seconds: f64,
    pub p95_seconds: f64,
    pub sum_seconds: f64,
}

impl ProbeStats {
    pub fn error_ratio(&self) -> f64 {
        self.errors as f64 / self.probes.max(1) as f64
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct LogCounts {
    pub service: String,
    pub container: String,
    /// Since the container started (counters).
    pub requests_total: u64,
    pub errors_total: u64,
    /// Within monitor.log_window.
    pub window_requests: u64,
    pub window_errors: u64,
}

impl LogCounts {
    pub fn window_error_ratio(&self) -> f64 {
        if self.window_requests == 0 {
            0.0
        } else {
            self.window_errors as f64 / self.window_requests as f64
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct ContainerStats {
    pub service: String,
    pub container: String,
    pub running: bool,
    /// healthy / unhealthy / starting / none.
    pub health: String,
    pub cpu_cores: Option<f64>,
    /// The CPU cap (or the host's CPUs when none).
    pub cpu_limit_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct DbStats {
    pub up: bool,
    pub error: Option<String>,
    pub connections: i64,
    pub max_connections: i64,
    pub size_bytes: i64,
    /// Statements whose mean time is above slow_query_ms (None:
    /// pg_stat_statements is not installed).
    pub slow_statements: Option<i64>,
    /// Queries running longer than slow_query_ms right now.
    pub long_running: i64,
    /// Replicas and their replay lag in seconds.
    pub replicas: Vec<(String, f64)>,
}

#[derive(Serialize, Clone, Debug)]
pub struct DiskStats {
    /// `docker_data_root` or `backups`.
    pub label: String,
    pub path: String,
    pub free_bytes: u64,
    pub size_bytes: u64,
    /// What the folder itself holds (the backups folder).
    pub used_by_folder_bytes: Option<u64>,
}

impl DiskStats {
    pub fn free_ratio(&self) -> f64 {
        self.free_bytes as f64 / self.size_bytes.max(1) as f64
    }
}

/// Measure everything once, concurrently.
pub fn measure(env: &Env) -> Sample {
    let m = &env.settings.monitor;
    let window = crate::config::parse_duration(&m.log_window).unwrap_or(Duration::from_secs(300));
    let probe_set: Vec<(String, String, f64)> = env
        .settings
        .services
        .iter()
        .filter_map(|(svc, s)| {
            s.health.as_ref().map(|h| {
                // On an `ssh` environment, through the connection.
                let url =
                    crate::core::session::reach(env, &h.url).unwrap_or_else(|_| h.url.clone());
                (svc.clone(), url, h.timeout_secs)
            })
        })
        .collect();
    let (probes, health, docker_part, db, archive, proxy) = std::thread::scope(|sc| {
        let probes = sc.spawn(|| {
            probe_set
                .iter()
                .map(|(svc, url, t)| probe(svc, url, m.probes, Duration::from_secs_f64(*t)))
                .collect::<Vec<_>>()
        });
        let health = sc.spawn(|| {
            let probes: Vec<Probe<'_>> = crate::health_checks::probes(env);
            check::run(&probes)
                .into_iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
        });
        let docker = sc.spawn(|| docker_metrics(env, window));
        let db = sc.spawn(|| env.settings.database.as_ref().map(|_| database(env)));
        let archive = sc.spawn(|| crate::disaster_recovery::archive_lag(env));
        let proxy = sc.spawn(|| crate::core::proxy_stats::colour_stats(env));
        (
            probes.join().expect("probe thread"),
            health.join().expect("health thread"),
            docker.join().expect("docker thread"),
            db.join().expect("database thread"),
            archive.join().expect("archive thread"),
            proxy.join().expect("proxy thread"),
        )
    });
    let (logs, containers, mut disks, mut notes) = docker_part;
    let proxy = match proxy {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            notes.push(format!("proxy per colour: {e:#}"));
            Vec::new()
        }
        None => Vec::new(),
    };
    if let Some(b) = &env.settings.backups {
        let dir = env.dir.join(&b.dir);
        match files::disk_space(&dir) {
            Ok((free, size)) => disks.push(DiskStats {
                label: "backups".into(),
                path: dir.to_string(),
                free_bytes: free,
                size_bytes: size,
                used_by_folder_bytes: Some(files::folder_size(&dir)),
            }),
            Err(e) => notes.push(format!("backups folder: {e:#}")),
        }
    }
    if let Some(db) = &db {
        if db.up && db.slow_statements.is_none() {
            notes.push(
                "slow queries: pg_stat_statements is not installed; only queries running now are counted \
                 (add it to shared_preload_libraries and `CREATE EXTENSION pg_stat_statements`)"
                    .into(),
            );
        }
        if db.up && db.replicas.is_empty() {
            notes.push("replication lag: no replica (pg_stat_replication is empty)".into());
        }
    }
    Sample {
        at: clock::unix_secs(SystemTime::now()),
        probes,
        health_failures: health,
        logs,
        containers,
        database: db,
        disks,
        archive,
        proxy,
        notes,
    }
}

fn probe(service: &str, url: &str, n: u32, timeout: Duration) -> ProbeStats {
    let mut times = Vec::new();
    let mut errors = 0;
    for _ in 0..n {
        let start = Instant::now();
        match http::get(url, timeout) {
            Ok(r) if (200..300).contains(&r.status) => {}
            _ => errors += 1,
        }
        times.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    ProbeStats {
        service: service.into(),
        url: url.into(),
        probes: n,
        errors,
        p50_seconds: quantile(&sorted, 0.5),
        p95_seconds: quantile(&sorted, 0.95),
        sum_seconds: times.iter().sum(),
    }
}

/// The nearest-rank quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

type DockerPart = (
    Vec<LogCounts>,
    Vec<ContainerStats>,
    Vec<DiskStats>,
    Vec<String>,
);

fn docker_metrics(env: &Env, window: Duration) -> DockerPart {
    let mut notes = Vec::new();
    let docker = match crate::core::session::docker(env) {
        Ok(d) => d,
        Err(e) => {
            notes.push(format!("Docker engine: {e:#}"));
            return (Vec::new(), Vec::new(), Vec::new(), notes);
        }
    };
    // On a swarm, the running tasks' containers on this engine.
    let wanted = match &env.settings.swarm {
        Some(sw) if env.settings.driver == crate::config::Driver::Swarm => {
            docker.stack_task_containers(&sw.stack).unwrap_or_else(|e| {
                notes.push(format!("stack {}: {e:#}", sw.stack));
                Vec::new()
            })
        }
        _ => env.containers(),
    };
    let names: Vec<String> = wanted.iter().map(|(_, c)| c.clone()).collect();
    let inspected = docker.containers(&names);
    let specs = docker.specs(&names);
    let running: Vec<String> = inspected
        .iter()
        .zip(&names)
        .filter(|(c, _)| matches!(c, Ok(Some(c)) if c.state == "running"))
        .map(|(_, n)| n.clone())
        .collect();
    let stats = docker.stats(&running);
    let mut containers = Vec::new();
    for (((service, name), c), spec) in wanted.iter().zip(inspected).zip(specs) {
        let c = match c {
            Ok(Some(c)) => c,
            Ok(None) => {
                notes.push(format!("container {name}: does not exist"));
                continue;
            }
            Err(e) => {
                notes.push(format!("container {name}: {e:#}"));
                continue;
            }
        };
        let st = running
            .iter()
            .position(|r| r == name)
            .and_then(|i| stats[i].as_ref().ok());
        let cap = spec.ok().flatten().and_then(|s| s.cpus());
        containers.push(ContainerStats {
            service: service.clone(),
            container: name.clone(),
            running: c.state == "running",
            health: c.health.clone().unwrap_or_else(|| "none".into()),
            cpu_cores: st.map(|s| s.cpu_cores),
            cpu_limit_cores: cap.or(st.map(|s| s.online_cpus as f64)),
            memory_bytes: st.map(|s| s.memory_bytes),
            memory_limit_bytes: st.map(|s| s.memory_limit_bytes),
        });
    }
    // Request and error counts: the services' logs (not the database's).
    let now = clock::unix_secs(SystemTime::now());
    let since_window = now - window.as_secs() as i64;
    let mut logs = Vec::new();
    for c in containers
        .iter()
        .filter(|c| c.service != "database" && c.running)
    {
        match docker.log_lines(&c.container, 0) {
            Ok(lines) => {
                let mut l = LogCounts {
                    service: c.service.clone(),
                    container: c.container.clone(),
                    requests_total: 0,
                    errors_total: 0,
                    window_requests: 0,
                    window_errors: 0,
                };
                for (ts, line) in &lines {
                    if let Some(status) = request_status(line) {
                        let recent = *ts >= since_window;
                        l.requests_total += 1;
                        l.window_requests += recent as u64;
                        if status >= 500 {
                            l.errors_total += 1;
                            l.window_errors += recent as u64;
                        }
                    }
                }
                logs.push(l);
            }
            Err(e) => notes.push(format!("logs of {}: {e:#}", c.container)),
        }
    }
    let mut disks = Vec::new();
    match docker.data_root() {
        Ok(root) => match files::disk_space(camino::Utf8Path::new(&root)) {
            Ok((free, size)) => disks.push(DiskStats {
                label: "docker_data_root".into(),
                path: root,
                free_bytes: free,
                size_bytes: size,
                used_by_folder_bytes: None,
            }),
            Err(_) => notes.push(format!(
                "Docker data root {root}: not on this machine (a remote engine?); measure it there"
            )),
        },
        Err(e) => notes.push(format!("Docker data root: {e:#}")),
    }
    (logs, containers, disks, notes)
}

/// The status of an access-log line: `METHOD /path STATUS` somewhere in it
/// (the demo's `GET /api/health 200 3ms`, and most access-log formats).
pub fn request_status(line: &str) -> Option<u16> {
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let words: Vec<&str> = line.split_whitespace().collect();
    for i in 0..words.len().saturating_sub(2) {
        let method = words[i].trim_matches('"');
        if METHODS.contains(&method) && words[i + 1].starts_with('/') {
            for w in &words[i + 2..words.len().min(i + 5)] {
                if w.len() == 3 {
                    if let Ok(s) = w.parse::<u16>() {
                        if (100..=599).contains(&s) {
                            return Some(s);
                        }
                    }
                }
            }
        }
    }
    None
}

fn database(env: &Env) -> DbStats {
    let slow_ms = env.settings.monitor.slow_query_ms;
    let url = match env.database_url() {
        Ok(u) => crate::database_migrations::split_schema(&u).0,
        Err(e) => {
            return DbStats {
                error: Some(format!("{e:#}")),
                ..Default::default()
            }
        }
    };
    let mut client = match postgres::connect(&url, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            return DbStats {
                error: Some(format!("{e:#}")),
                ..Default::default()
            }
        }
    };
    let mut st = DbStats {
        up: true,
        ..Default::default()
    };
    let mut one = |sql: &str| -> Result<i64, String> {
        client
            .query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| format!("{e}"))
    };
    let r = (|| -> Result<(), String> {
        st.connections = one("SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL")?;
        st.max_connections =
            one("SELECT setting::bigint FROM pg_settings WHERE name = 'max_connections'")?;
        st.size_bytes = one("SELECT pg_database_size(current_database())")?;
        st.long_running = one(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() \
             AND now() - query_start > interval '{} milliseconds'",
            slow_ms
        ))?;
        let has_pss =
            one("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")? > 0;
        if has_pss {
            st.slow_statements = Some(one(&format!(
                "SELECT count(*) FROM pg_stat_statements WHERE mean_exec_time > {slow_ms}"
            ))?);
        }
        Ok(())
    })();
    if let Err(e) = r {
        st.error = Some(e);
    }
    if let Ok(rows) = client.query(
        "SELECT coalesce(application_name, client_addr::text, 'replica'), \
         coalesce(extract(epoch FROM replay_lag), 0)::float8 FROM pg_stat_replication",
        &[],
    ) {
        st.replicas = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines() {
        assert_eq!(
            request_status("2025-01-27T00:00:00.000Z GET /api/health 200 3ms"),
            Some(200)
        );
        assert_eq!(request_status("POST /api/v1/auth/login 500 9ms"), Some(500));
        assert_eq!(
            request_status(r#"10.0.0.1 - - [x] "GET /a HTTP/1.1" 404 12"#),
            Some(404)
        );
        assert_eq!(request_status("database reachable"), None);
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=20).map(|x| x as f64).collect();
        assert_eq!(quantile(&v, 0.5), 10.0);
        assert_eq!(quantile(&v, 0.95), 19.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
