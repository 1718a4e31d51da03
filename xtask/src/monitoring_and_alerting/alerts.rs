//! Monitoring and Alerting Setup, Alerting: the runbook's recommended
//! alerts evaluated on a sample, with Prometheus' `for` (a breach must last
//! that long before it fires), sent to a webhook in Alertmanager's payload
//! shape (so existing receivers take it) and resolved when it clears.

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::Sample;
use crate::adapters::clock::Utc;
use crate::config::{Alert, Direction, Env};

/// One alert's value for one instance (a service, container, disk).
#[derive(Serialize, Clone, Debug)]
pub struct Evaluation {
    pub alert: &'static str,
    pub instance: String,
    pub value: f64,
    pub threshold: f64,
    pub direction: Direction,
    pub breached: bool,
    pub severity: String,
    pub summary: String,
}

impl Evaluation {
    fn key(&self) -> String {
        format!("{}\u{0}{}", self.alert, self.instance)
    }
}

/// Every enabled alert on every instance it applies to.
pub fn evaluate(env: &Env, sample: &Sample) -> Vec<Evaluation> {
    let mut out = Vec::new();
    for a in env.settings.monitor.alerts.resolved() {
        let mut push = |instance: String, value: f64, summary: String| {
            let breached = match a.direction {
                Direction::Above => value > a.threshold,
                Direction::Below => value < a.threshold,
            };
            out.push(Evaluation {
                alert: a.name,
                instance,
                value,
                threshold: a.threshold,
                direction: a.direction,
                breached,
                severity: a.severity.clone(),
                summary,
            });
        };
        match a.key {
            "health_check_failures" => push(
                env.name.clone(),
                sample.health_failures.len() as f64,
                if sample.health_failures.is_empty() {
                    "every health check passes".into()
                } else {
                    format!("failing: {}", sample.health_failures.join("; "))
                },
            ),
            "high_error_rate" => {
                for p in &sample.probes {
                    let logs = sample.logs.iter().find(|l| l.service == p.service);
                    let log_ratio = logs.map(|l| l.window_error_ratio()).unwrap_or(0.0);
                    let value = p.error_ratio().max(log_ratio);
                    push(
                        p.service.clone(),
                        value,
                        format!(
                            "{} of {} probes failed; {} of {} logged requests were 5xx",
                            p.errors,
                            p.probes,
                            logs.map(|l| l.window_errors).unwrap_or(0),
                            logs.map(|l| l.window_requests).unwrap_or(0)
                        ),
                    )
                }
            }
            "database_connection_failures" => {
                if let Some(db) = &sample.database {
                    push(
                        "database".into(),
                        if db.up { 0.0 } else { 1.0 },
                        db.error.clone().unwrap_or_else(|| "connected".into()),
                    )
                }
            }
            "high_memory" => {
                for c in &sample.containers {
                    if let (Some(m), Some(l)) = (c.memory_bytes, c.memory_limit_bytes) {
                        push(
                            c.container.clone(),
                            m as f64 / l.max(1) as f64,
                            format!("{} MiB of {} MiB", m >> 20, l >> 20),
                        )
                    }
                }
            }
            "high_cpu" => {
                for c in &sample.containers {
                    if let (Some(u), Some(l)) = (c.cpu_cores, c.cpu_limit_cores) {
                        push(
                            c.container.clone(),
                            u / l.max(0.001),
                            format!("{u:.2} of {l} CPUs"),
                        )
                    }
                }
            }
            "disk_space_low" => {
                for d in &sample.disks {
                    push(
                        d.label.clone(),
                        d.free_ratio(),
                        format!(
                            "{} GiB free of {} GiB at {}",
                            d.free_bytes >> 30,
                            d.size_bytes >> 30,
                            d.path
                        ),
                    )
                }
            }
            _ => {}
        }
    }
    // The continuous archive's lag against `backups.max_archive_lag` (a
    // duration already: it fires at once).
    if let Some(l) = &sample.archive {
        let value = l.seconds.unwrap_or(1e9);
        out.push(Evaluation {
            alert: "ArchiveLag",
            instance: "archive".into(),
            value,
            threshold: l.max_seconds,
            direction: Direction::Above,
            breached: value > l.max_seconds,
            severity: "critical".into(),
            summary: match (&l.error, l.seconds) {
                (Some(e), _) => e.clone(),
                (None, Some(s)) => format!(
                    "the WAL archive is {s:.1} s and {} bytes behind the database",
                    l.bytes.unwrap_or(0)
                ),
                (None, None) => "nothing archived yet".into(),
            },
        });
    }
    out
}

/// An alert's life across rounds (watch mode).
struct Active {
    since: i64,
    firing: bool,
    last: Evaluation,
}

/// What changed in a round: alerts that started firing, and that resolved.
pub struct Transitions {
    pub firing: Vec<(Evaluation, i64)>,
    pub resolved: Vec<(Evaluation, i64)>,
}

#[derive(Default)]
pub struct Tracker {
    active: BTreeMap<String, Active>,
}

impl Tracker {
    /// Feed one round's evaluations at `now` (Unix seconds), with the
    /// alerts' `for` durations.
    pub fn step(&mut self, evals: &[Evaluation], alerts: &[Alert], now: i64) -> Transitions {
        let mut t = Transitions {
            firing: Vec::new(),
            resolved: Vec::new(),
        };
        let for_of = |name: &str| {
            alerts
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.for_.as_secs() as i64)
                .unwrap_or(0)
        };
        for e in evals {
            let key = e.key();
            if e.breached {
                let a = self.active.entry(key).or_insert(Active {
                    since: now,
                    firing: false,
                    last: e.clone(),
                });
                a.last = e.clone();
                if !a.firing && now - a.since >= for_of(e.alert) {
                    a.firing = true;
                    t.firing.push((e.clone(), a.since));
                }
            } else if let Some(a) = self.active.remove(&key) {
                if a.firing {
                    t.resolved.push((e.clone(), a.since));
                }
            }
        }
        t
    }

    /// Alerts firing now.
    pub fn firing(&self) -> Vec<&Evaluation> {
        self.active
            .values()
            .filter(|a| a.firing)
            .map(|a| &a.last)
            .collect()
    }
}

/// The Alertmanager webhook payload (version 4) for alerts of one status,
/// `firing` or `resolved`.
pub fn payload(
    env: &Env,
    status: &str,
    alerts: &[(Evaluation, i64)],
    now: i64,
) -> serde_json::Value {
    let list: Vec<WebhookAlert> = alerts
        .iter()
        .map(|(e, since)| {
            let labels = labels(env, e);
            let fingerprint = {
                use sha2::Digest;
                let text = serde_json::to_string(&labels).unwrap_or_default();
                hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
            };
            WebhookAlert {
                status: status.to_string(),
                labels,
                annotations: Annotations {
                    summary: format!("{} on {} ({})", e.alert, e.instance, env.name),
                    description: format!(
                        "{}: value {:.4} {} threshold {} — {}",
                        e.alert,
                        e.value,
                        match e.direction {
                            Direction::Above => "above",
                            Direction::Below => "below",
                        },
                        e.threshold,
                        e.summary
                    ),
                    runbook: "Monitoring and Alerting Setup".to_string(),
                },
                starts_at: Utc::from_unix(*since).rfc3339(),
                ends_at: if status == "resolved" {
                    Utc::from_unix(now).rfc3339()
                } else {
                    "0001-01-01T00:00:00Z".to_string()
                },
                generator_url: String::new(),
                fingerprint,
            }
        })
        .collect();
    let common: BTreeMap<String, String> = alerts
        .first()
        .map(|(e, _)| labels(env, e))
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| alerts.iter().all(|(e, _)| labels(env, e).get(k) == Some(v)))
        .collect();
    let group: BTreeMap<String, String> = common
        .iter()
        .filter(|(k, _)| *k == "alertname" || *k == "env")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let payload = Webhook {
        version: "4".to_string(),
        group_key: format!("{{}}:{{env=\"{}\"}}", env.name),
        truncated_alerts: 0,
        status: status.to_string(),
        receiver: "mre-ops".to_string(),
        group_labels: group,
        common_labels: common,
        common_annotations: BTreeMap::new(),
        external_url: String::new(),
        alerts: list,
    };
    serde_json::to_value(payload).expect("a webhook payload serializes")
}

/// Alertmanager's webhook payload (version 4), as receivers parse it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Webhook {
    version: String,
    group_key: String,
    truncated_alerts: u32,
    status: String,
    receiver: String,
    group_labels: BTreeMap<String, String>,
    common_labels: BTreeMap<String, String>,
    common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    external_url: String,
    alerts: Vec<WebhookAlert>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert {
    status: String,
    labels: BTreeMap<String, String>,
    annotations: Annotations,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
    fingerprint: String,
}

#[derive(serde::Serialize)]
struct Annotations {
    summary: String,
    description: String,
    runbook: String,
}

fn labels(env: &Env, e: &Evaluation) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("alertname".to_string(), e.alert.to_string()),
        ("env".to_string(), env.name.clone()),
        ("instance".to_string(), e.instance.clone()),
        ("severity".to_string(), e.severity.clone()),
        ("job".to_string(), "mre-ops".to_string()),
    ])
}
