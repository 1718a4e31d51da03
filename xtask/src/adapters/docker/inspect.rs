//! The Docker Engine API, for the checklist and monitoring: containers'
//! declared limits and health checks (inspect), live CPU and memory
//! (stats), the engine's data root, and log lines since a time.

use anyhow::{Context, Result};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;

use super::Docker;

/// How a container was configured, from `docker inspect`: what the
/// pre-deployment checklist's infrastructure items look at.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Spec {
    pub name: String,
    pub image: String,
    /// The healthcheck's test (`["CMD", "wget", ...]`); None when the
    /// container has none (or `["NONE"]`).
    pub healthcheck: Option<Vec<String>>,
    /// HostConfig.Memory in bytes; 0 = no limit.
    pub memory_bytes: i64,
    /// HostConfig.NanoCpus (1e9 = one CPU); 0 = not set.
    pub nano_cpus: i64,
    /// HostConfig.CpuQuota / CpuPeriod (the other way to cap CPU); 0 = not set.
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// The networks the container is attached to.
    pub networks: Vec<String>,
    /// State.StartedAt (RFC 3339).
    pub started_at: Option<String>,
    /// Where volumes and bind mounts appear inside the container
    /// (Mounts[].Destination).
    pub mounts: Vec<String>,
    /// Its named volumes: (volume name, where it appears inside).
    pub volumes: Vec<(String, String)>,
}

impl Spec {
    /// The CPU cap in CPUs, from NanoCpus or CpuQuota/CpuPeriod.
    pub fn cpus(&self) -> Option<f64> {
        if self.nano_cpus > 0 {
            Some(self.nano_cpus as f64 / 1e9)
        } else if self.cpu_quota > 0 {
            let period = if self.cpu_period > 0 {
                self.cpu_period
            } else {
                100_000
            };
            Some(self.cpu_quota as f64 / period as f64)
        } else {
            None
        }
    }
}

/// One reading of `docker stats` (the Engine's stats, not streamed).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    /// CPUs in use over the engine's sampling interval (1.0 = one full CPU).
    pub cpu_cores: f64,
    pub online_cpus: u32,
    /// Memory in use, without the page cache (as `docker stats` shows it).
    pub memory_bytes: u64,
    /// The container's memory limit (the host's memory when it has none).
    pub memory_limit_bytes: u64,
}

impl Docker {
    /// Several containers' configuration, inspected concurrently; None when
    /// one does not exist.
    pub fn specs(&self, names: &[String]) -> Vec<Result<Option<Spec>>> {
        self.rt.block_on(futures_util::future::join_all(
            names.iter().map(|n| inspect_spec(&self.client, n)),
        ))
    }

    /// One stats reading per container, taken concurrently (each takes the
    /// engine about a second: it samples CPU twice).
    pub fn stats(&self, names: &[String]) -> Vec<Result<Stats>> {
        self.rt.block_on(futures_util::future::join_all(
            names.iter().map(|n| stats_of(&self.client, n)),
        ))
    }

    /// The engine's data root (`docker info`: Docker Root Dir).
    pub fn data_root(&self) -> Result<String> {
        let info = self.rt.block_on(self.client.info()).with_context(|| {
            format!(
                "asking the Docker engine at {} for `docker info`",
                self.host
            )
        })?;
        info.docker_root_dir
            .context("the Docker engine did not say where its data root is")
    }

    /// A container's log lines since `since_unix` (0: since it started),
    /// each with the engine's timestamp (Unix seconds), known secrets masked.
    pub fn log_lines(&self, container: &str, since_unix: i64) -> Result<Vec<(i64, String)>> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(false)
            .timestamps(true)
            .since(since_unix as i32)
            .build();
        self.rt.block_on(async {
            let mut stream = self.client.logs(container, Some(options));
            let mut text = String::new();
            while let Some(item) = stream.next().await {
                let item = item.with_context(|| {
                    format!("reading the logs of `{container}` on {}", self.host)
                })?;
                text.push_str(&String::from_utf8_lossy(&item.into_bytes()));
            }
            Ok(text
                .lines()
                .filter_map(|l| {
                    let (ts, rest) = l.split_once(' ')?;
                    Some((
                        crate::adapters::clock::parse_rfc3339(ts)?,
                        crate::adapters::output::redact(rest),
                    ))
                })
                .collect())
        })
    }
}

async fn inspect_spec(client: &bollard::Docker, name: &str) -> Result<Option<Spec>> {
    let Some(info) = super::inspect_raw(client, name).await? else {
        return Ok(None);
    };
    let config = info.config.as_ref();
    let host = info.host_config.as_ref();
    let healthcheck = config
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.clone())
        .filter(|t| !t.is_empty() && t.first().map(String::as_str) != Some("NONE"));
    let mut networks: Vec<String> = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    networks.sort();
    Ok(Some(Spec {
        name: info
            .name
            .clone()
            .unwrap_or_else(|| name.to_string())
            .trim_start_matches('/')
            .to_string(),
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        healthcheck,
        memory_bytes: host.and_then(|h| h.memory).unwrap_or(0),
        nano_cpus: host.and_then(|h| h.nano_cpus).unwrap_or(0),
        cpu_quota: host.and_then(|h| h.cpu_quota).unwrap_or(0),
        cpu_period: host.and_then(|h| h.cpu_period).unwrap_or(0),
        networks,
        started_at: info.state.as_ref().and_then(|s| s.started_at.clone()),
        mounts: info
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| m.destination.clone())
            .collect(),
        volumes: info
            .mounts
            .iter()
            .flatten()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| Some((m.name.clone()?, m.destination.clone()?)))
            .collect(),
    }))
}

async fn stats_of(client: &bollard::Docker, name: &str) -> Result<Stats> {
    let options = bollard::query_parameters::StatsOptionsBuilder::new()
        .stream(false)
        .one_shot(false)
        .build();
    let mut stream = client.stats(name, Some(options));
    let s = stream
        .next()
        .await
        .with_context(|| format!("the Docker engine sent no stats for `{name}`"))?
        .with_context(|| format!("reading the stats of container `{name}`: is it running?"))?;
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let online = cpu
        .and_then(|c| c.online_cpus)
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let system_delta = system(cpu).saturating_sub(system(pre)) as f64;
    let cpu_cores = if system_delta > 0.0 {
        cpu_delta / system_delta * online as f64
    } else {
        0.0
    };
    let mem = s.memory_stats.as_ref();
    let usage = mem.and_then(|m| m.usage).unwrap_or(0);
    // `docker stats` subtracts the page cache: inactive_file on cgroup v2,
    // total_inactive_file on v1.
    let cache = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| {
            st.get("inactive_file")
                .or_else(|| st.get("total_inactive_file"))
                .copied()
        })
        .unwrap_or(0);
    Ok(Stats {
        cpu_cores,
        online_cpus: online,
        memory_bytes: usage.saturating_sub(cache),
        memory_limit_bytes: mem.and_then(|m| m.limit).unwrap_or(0),
    })
}
