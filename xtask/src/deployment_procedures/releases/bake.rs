//! Production Deployment, "Monitor deployment": the bake period. After the
//! switch the new colour takes the traffic while the old one stays ready;
//! for `release.bake` the proxy's own counters of the new colour (HAProxy's
//! `show stat`: requests, 5xx, average response time) are compared with
//! `max_error_rate` and, against the old colour's, `max_latency_ratio`. A
//! breach (or Ctrl-C) fails the step, and the plan's undo switches back:
//! rollback is a switch, the old colour was never stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{Env, ReleaseSettings};

use crate::core::proxy_stats::{colour_stats, ColourStat};
use crate::core::wait::{self, Poll, Waited};

/// A bake, and the canary share before the full switch (None: the bake
/// watches the new colour at 100 %, after the switch).
#[derive(Clone, Copy, Debug)]
pub struct BakePlan {
    pub period: Duration,
    pub canary: Option<u32>,
}

impl BakePlan {
    /// From `release.bake` (or `--bake`) and `--canary`.
    pub fn of(rel: &ReleaseSettings) -> Option<BakePlan> {
        let period = rel
            .bake
            .as_deref()
            .and_then(crate::config::parse_duration)?;
        Some(BakePlan {
            period,
            canary: rel.canary,
        })
    }
}

/// How the new colours did over the bake, service by service.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Figures {
    pub service: String,
    pub requests: u64,
    pub errors: u64,
    pub avg_ms: u64,
    /// The old colour's average response time before the switch.
    pub old_avg_ms: u64,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "{}: {} requests, {} 5xx ({:.1}%), avg {} ms (old colour {} ms)",
            self.service,
            self.requests,
            self.errors,
            self.ratio() * 100.0,
            self.avg_ms,
            self.old_avg_ms
        )
    }
    fn ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

fn find<'s>(stats: &'s [ColourStat], svc: &str, colour: &str) -> Option<&'s ColourStat> {
    stats
        .iter()
        .find(|s| s.service == svc && s.colour == colour)
}

/// The new colours' figures since `first` (counters taken at the start).
pub(super) fn figures(
    first: &[ColourStat],
    now: &[ColourStat],
    new: &BTreeMap<String, String>,
) -> Vec<Figures> {
    new.iter()
        .filter_map(|(svc, colour)| {
            let n = find(now, svc, colour)?;
            let f = find(first, svc, colour);
            let old = find(first, svc, crate::core::proxy::other(colour));
            Some(Figures {
                service: svc.clone(),
                requests: n.requests.saturating_sub(f.map_or(0, |f| f.requests)),
                errors: n
                    .responses_5xx
                    .saturating_sub(f.map_or(0, |f| f.responses_5xx)),
                avg_ms: n.avg_response_ms,
                old_avg_ms: old.map_or(0, |o| o.avg_response_ms),
            })
        })
        .collect()
}

/// The first breach of the thresholds, once enough requests were seen.
pub(super) fn breach(rel: &ReleaseSettings, figs: &[Figures]) -> Option<String> {
    figs.iter()
        .filter(|f| f.requests >= rel.bake_min_requests)
        .find_map(|f| {
            if f.ratio() > rel.max_error_rate {
                Some(format!(
                    "{} (release.max_error_rate {:.1}%)",
                    f.line(),
                    rel.max_error_rate * 100.0
                ))
            } else if f.old_avg_ms > 0
                && f.avg_ms as f64 > rel.max_latency_ratio * f.old_avg_ms as f64
            {
                Some(format!(
                    "{} (release.max_latency_ratio {})",
                    f.line(),
                    rel.max_latency_ratio
                ))
            } else {
                None
            }
        })
}

/// Watch the new colours for `period`; an error on a breach.
pub(super) fn watch(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    new: &BTreeMap<String, String>,
    period: Duration,
) -> Result<()> {
    let stats = || -> Result<Vec<ColourStat>> {
        match colour_stats(env) {
            Some(r) => r,
            None => bail!(
                "the bake needs HAProxy's counters: release.proxy.kind = \"haproxy\", its container running"
            ),
        }
    };
    let first = stats()?;
    let mut last = Vec::new();
    let waited = wait::until(
        out,
        &format!("the bake ({} s) of the new colour", period.as_secs()),
        period,
        Duration::from_secs(1),
        || {
            let figs = figures(&first, &stats()?, new);
            if let Some(b) = breach(rel, &figs) {
                return Ok(Poll::Ready(b));
            }
            let text = figs
                .iter()
                .map(Figures::line)
                .collect::<Vec<_>>()
                .join("; ");
            last = figs;
            Ok(Poll::Pending(text))
        },
    )?;
    match waited {
        Waited::Ready(b) => bail!(
            "the bake found the new release worse than allowed: {b}. The proxy goes back to the old colour"
        ),
        Waited::TimedOut(_) => {
            let lines: Vec<String> = last.iter().map(Figures::line).collect();
            out.line(&format!(
                "Baked {} s: {}",
                period.as_secs(),
                if lines.is_empty() { "no figures".into() } else { lines.join("; ") }
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(colour: &str, requests: u64, errors: u64, avg: u64) -> ColourStat {
        ColourStat {
            service: "mre-app".into(),
            colour: colour.into(),
            status: "UP".into(),
            requests,
            responses_5xx: errors,
            active: 0,
            avg_response_ms: avg,
        }
    }

    #[test]
    fn a_breach_needs_enough_requests_and_counts_from_the_start() {
        let rel: ReleaseSettings = toml::from_str(
            "registry = \"r\"\nproxy = { service = \"p\" }\nimages = {}\nservices = {}\nmax_error_rate = 0.05\nbake_min_requests = 20\n",
        )
        .unwrap();
        let new = BTreeMap::from([("mre-app".to_string(), "green".to_string())]);
        let first = [stat("blue", 1000, 0, 10), stat("green", 100, 50, 0)];
        // 10 requests, all failed: too few for a verdict.
        let figs = figures(
            &first,
            &[stat("blue", 1000, 0, 10), stat("green", 110, 60, 12)],
            &new,
        );
        assert_eq!(figs[0].requests, 10);
        assert_eq!(breach(&rel, &figs), None);
        // 100 requests, 10 failed (earlier failures not counted): a breach.
        let figs = figures(
            &first,
            &[stat("blue", 1000, 0, 10), stat("green", 200, 60, 12)],
            &new,
        );
        assert!(breach(&rel, &figs).unwrap().contains("max_error_rate"));
        // Slow against the old colour's 10 ms.
        let figs = figures(
            &first,
            &[stat("blue", 1000, 0, 10), stat("green", 200, 51, 45)],
            &new,
        );
        assert!(breach(&rel, &figs).unwrap().contains("max_latency_ratio"));
        let figs = figures(
            &first,
            &[stat("blue", 1000, 0, 10), stat("green", 200, 51, 20)],
            &new,
        );
        assert_eq!(breach(&rel, &figs), None);
    }
}
