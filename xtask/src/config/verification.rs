//! Pre-Deployment Checklist, Post-Deployment Verification and Monitoring and
//! Alerting settings: `[environments.NAME.preflight]`, `.smoke` and
//! `.monitor` in ops.toml. Pure data, with defaults for every key.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[environments.NAME.preflight]`: the Pre-Deployment Checklist.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PreflightSettings {
    /// "All tests passing": the test command, `[program, args...]`, run from
    /// ops.toml's folder (no shell). Unset: the item is MANUAL.
    pub tests: Option<Vec<String>>,
    /// "Linting and type checking passed": the lint/typecheck command.
    pub lint: Option<Vec<String>>,
    /// "No security vulnerabilities in dependencies": the audit command.
    pub audit: Option<Vec<String>>,
    /// "Docker images built and tested": a command that tests the built images.
    pub image_test: Option<Vec<String>>,
    /// How long one of those commands may run.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// "Migration scripts tested in staging": the environment whose database
    /// must already hold every migration pending here. Default: `staging`
    /// when it exists and this is not it.
    pub staging: Option<String>,
    /// "Backup of production database created": the newest verified backup
    /// must be younger than this.
    #[serde(default = "default_backup_age")]
    pub backup_max_age_hours: f64,
    /// "Environment variables reviewed": service -> the variables it needs
    /// (process environment or the env file), none empty or a placeholder.
    #[serde(default)]
    pub required_env: BTreeMap<String, Vec<String>>,
    /// "API keys and tokens configured": the variables holding them.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// "Network configuration verified": the Docker network every container
    /// must be on. Default: `<compose.project>_mre-network`.
    pub network: Option<String>,
}

impl Default for PreflightSettings {
    fn default() -> Self {
        PreflightSettings {
            tests: None,
            lint: None,
            audit: None,
            image_test: None,
            command_timeout_secs: default_command_timeout(),
            staging: None,
            backup_max_age_hours: default_backup_age(),
            required_env: BTreeMap::new(),
            api_keys: Vec::new(),
            network: None,
        }
    }
}

fn default_command_timeout() -> u64 {
    1800
}
fn default_backup_age() -> f64 {
    24.0
}

/// `[environments.NAME.smoke]`: Post-Deployment Verification, Smoke Tests.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SmokeSettings {
    /// The application's base URL. Default: the `url` of service `mre-app`.
    pub url: Option<String>,
    /// Text the page at `/` must contain ("Application loads in browser").
    #[serde(default = "default_marker")]
    pub marker: String,
    /// The variables holding the smoke user's email and password.
    #[serde(default = "default_email_env")]
    pub email_env: String,
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// Register the smoke user when the login says it does not exist.
    #[serde(default = "yes")]
    pub register: bool,
    /// A protected endpoint the session must reach.
    #[serde(default = "default_session_path")]
    pub session_path: String,
    /// Paths answered without a session (the runbook's public endpoints;
    /// a trailing `*` matches a prefix). Every other `/api/*` path must say 401.
    #[serde(default = "default_public")]
    pub public: Vec<String>,
    /// "API endpoints respond correctly": GET each with the session and
    /// expect its status.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// "Database queries succeed": SQL run on the database, each must return a row.
    #[serde(default = "default_queries")]
    pub queries: Vec<String>,
    #[serde(default = "default_smoke_timeout")]
    pub timeout_secs: f64,
}

impl Default for SmokeSettings {
    fn default() -> Self {
        SmokeSettings {
            url: None,
            marker: default_marker(),
            email_env: default_email_env(),
            password_env: default_password_env(),
            register: true,
            session_path: default_session_path(),
            public: default_public(),
            endpoints: Vec::new(),
            queries: default_queries(),
            timeout_secs: default_smoke_timeout(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `/api/v1/events` (a query string is allowed).
    pub path: String,
    /// The status expected with a session.
    #[serde(default = "default_status")]
    pub status: u16,
}

fn yes() -> bool {
    true
}
fn default_marker() -> String {
    "My Race Engineer".into()
}
fn default_email_env() -> String {
    "MRE_SMOKE_EMAIL".into()
}
fn default_password_env() -> String {
    "MRE_SMOKE_PASSWORD".into()
}
fn default_session_path() -> String {
    "/api/v1/me".into()
}
fn default_public() -> Vec<String> {
    [
        "/api/health",
        "/api/v1/auth/login",
        "/api/v1/auth/register",
        "/api/auth/*",
    ]
    .map(String::from)
    .to_vec()
}
fn default_queries() -> Vec<String> {
    vec!["SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL".into()]
}
fn default_smoke_timeout() -> f64 {
    10.0
}
fn default_status() -> u16 {
    200
}

/// `[environments.NAME.monitor]`: Monitoring and Alerting Setup.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// Metric name prefix in the Prometheus textfile (`mre_...`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Requests to each health URL per round (response time p50/p95, error rate).
    #[serde(default = "default_probes")]
    pub probes: u32,
    /// Time between rounds with `--watch` (`30s`, `1m`).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// How far back the logs are read for the request and error counts.
    #[serde(default = "default_log_window")]
    pub log_window: String,
    /// A query slower than this (mean, pg_stat_statements; or running now) is slow.
    #[serde(default = "default_slow_query_ms")]
    pub slow_query_ms: f64,
    /// Alertmanager-compatible webhook receiving alerts in `--watch` mode.
    pub webhook: Option<String>,
    /// The variable holding the webhook URL instead (it is a secret for
    /// Slack-style receivers).
    pub webhook_env: Option<String>,
    #[serde(default)]
    pub alerts: AlertSettings,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            prefix: default_prefix(),
            probes: default_probes(),
            interval: default_interval(),
            log_window: default_log_window(),
            slow_query_ms: default_slow_query_ms(),
            webhook: None,
            webhook_env: None,
            alerts: AlertSettings::default(),
        }
    }
}

fn default_prefix() -> String {
    "mre".into()
}
fn default_probes() -> u32 {
    20
}
fn default_interval() -> String {
    "30s".into()
}
fn default_log_window() -> String {
    "5m".into()
}
fn default_slow_query_ms() -> f64 {
    1000.0
}

/// The runbook's recommended alerts; each key optional.
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Health check failures: failing checks above `threshold` (default 0).
    pub health_check_failures: Option<AlertRule>,
    /// High error rates: the share of failed probes or 5xx log lines
    /// above `threshold` (default 0.05).
    pub high_error_rate: Option<AlertRule>,
    /// Database connection failures: failed connections above `threshold`
    /// (default 0).
    pub database_connection_failures: Option<AlertRule>,
    /// High memory usage: a container's memory over its limit above
    /// `threshold` (default 0.9).
    pub high_memory: Option<AlertRule>,
    /// High CPU usage: CPUs used over the container's CPU cap (or the
    /// host's CPUs) above `threshold` (default 0.9).
    pub high_cpu: Option<AlertRule>,
    /// Disk space low: the free share of the Docker data root's or the
    /// backups folder's file system below `threshold` (default 0.1).
    pub disk_space_low: Option<AlertRule>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub threshold: Option<f64>,
    /// How long the breach must last before the alert fires (Prometheus
    /// rules' `for`): `0s`, `1m`, `5m`.
    #[serde(rename = "for")]
    pub for_: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The `severity` label (default `warning`; `critical` for health and
    /// database failures).
    pub severity: Option<String>,
}

impl Default for AlertRule {
    fn default() -> Self {
        AlertRule {
            threshold: None,
            for_: None,
            enabled: true,
            severity: None,
        }
    }
}

/// Which way a threshold is crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Above,
    Below,
}

/// One alert with its defaults filled in.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// `HealthCheckFailures`, `HighErrorRate`, ... (the `alertname` label).
    pub name: &'static str,
    /// The key in ops.toml.
    pub key: &'static str,
    pub threshold: f64,
    pub direction: Direction,
    #[serde(serialize_with = "secs")]
    pub for_: Duration,
    pub severity: String,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An alert's name, key in ops.toml, rule, default threshold, direction,
/// default `for` in seconds and default severity.
type Row<'a> = (
    &'static str,
    &'static str,
    &'a Option<AlertRule>,
    f64,
    Direction,
    u64,
    &'static str,
);

impl AlertSettings {
    /// Every enabled alert, defaults applied (an unparseable `for` is
    /// refused by `config::parse::validate` before this runs).
    pub fn resolved(&self) -> Vec<Alert> {
        let table: [Row; 6] = [
            (
                "HealthCheckFailures",
                "health_check_failures",
                &self.health_check_failures,
                0.0,
                Direction::Above,
                60,
                "critical",
            ),
            (
                "HighErrorRate",
                "high_error_rate",
                &self.high_error_rate,
                0.05,
                Direction::Above,
                300,
                "warning",
            ),
            (
                "DatabaseConnectionFailures",
                "database_connection_failures",
                &self.database_connection_failures,
                0.0,
                Direction::Above,
                60,
                "critical",
            ),
            (
                "HighMemoryUsage",
                "high_memory",
                &self.high_memory,
                0.9,
                Direction::Above,
                300,
                "warning",
            ),
            (
                "HighCpuUsage",
                "high_cpu",
                &self.high_cpu,
                0.9,
                Direction::Above,
                300,
                "warning",
            ),
            (
                "DiskSpaceLow",
                "disk_space_low",
                &self.disk_space_low,
                0.1,
                Direction::Below,
                300,
                "warning",
            ),
        ];
        table
            .into_iter()
            .filter(|(_, _, rule, ..)| rule.as_ref().is_none_or(|r| r.enabled))
            .map(
                |(name, key, rule, threshold, direction, for_secs, severity)| {
                    let rule = rule.clone().unwrap_or_default();
                    Alert {
                        name,
                        key,
                        threshold: rule.threshold.unwrap_or(threshold),
                        direction,
                        for_: rule
                            .for_
                            .as_deref()
                            .and_then(parse_duration)
                            .unwrap_or(Duration::from_secs(for_secs)),
                        severity: rule.severity.unwrap_or_else(|| severity.to_string()),
                    }
                },
            )
            .collect()
    }

    /// Each configured rule with its key, for validation.
    pub fn rules(&self) -> Vec<(&'static str, &AlertRule)> {
        [
            ("health_check_failures", &self.health_check_failures),
            ("high_error_rate", &self.high_error_rate),
            (
                "database_connection_failures",
                &self.database_connection_failures,
            ),
            ("high_memory", &self.high_memory),
            ("high_cpu", &self.high_cpu),
            ("disk_space_low", &self.disk_space_low),
        ]
        .into_iter()
        .filter_map(|(k, r)| Some((k, r.as_ref()?)))
        .collect()
    }
}

/// `90` (seconds), or a duration as jiff reads one (`90s`, `5m`, `2h`,
/// `1d`, `500ms`, `1h 30m`, `5 minutes`; a day is 24 hours); None otherwise.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let span: jiff::Span = t.parse().ok()?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .ok()?;
    Duration::try_from(d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5 minutes"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("-5m"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn alert_defaults() {
        let mut a = AlertSettings::default();
        assert_eq!(a.resolved().len(), 6);
        a.high_cpu = Some(AlertRule {
            enabled: false,
            ..Default::default()
        });
        a.high_memory = Some(AlertRule {
            threshold: Some(0.5),
            ..Default::default()
        });
        let r = a.resolved();
        assert_eq!(r.len(), 5);
        let mem = r.iter().find(|x| x.key == "high_memory").unwrap();
        assert_eq!(mem.threshold, 0.5);
        assert_eq!(mem.for_, Duration::from_secs(300));
    }
}
