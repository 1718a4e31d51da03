//! Staging Deployment and Production Deployment as one plan on the shared
//! step runner: back up (production), build, push and pull the images, take
//! the environment's lock, open the journal, migrate (lint gate first), cut
//! over without downtime, run the post-deploy checks and the smoke tests,
//! stop the old colour
//! (kept for rollback), prune. A failure after the cutover began switches
//! back through the steps' undos. Rollback reuses the cutover steps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::cutover::{other, Stage};
use crate::adapters::output::Output;
use crate::config::{Env, ReleaseSettings, ReleasedService, Strategy};
use crate::core::journal::{self, Journal};
use crate::core::lock::{self, EnvLock};
use crate::core::steps::Plan;
use crate::health_checks;

/// What the steps share.
#[derive(Default)]
pub struct RelState {
    pub lock: Option<EnvLock>,
    pub journal: Option<Journal>,
    pub entry: Option<i64>,
    /// Set once the first step that touches a running service has begun.
    pub cutover_started: bool,
    pub backup: Option<String>,
    /// How long the stop-first services were not serving, in seconds.
    pub stop_windows: Vec<(String, f64)>,
    /// Stop-first services' image variables before the cutover, for the undo.
    pub previous_images: BTreeMap<String, String>,
    /// The checklist's outcome for the journal (`passed: …`, `skipped: …`).
    pub preflight: Option<String>,
    /// Swarm: released service → image pinned by digest, and what each ran
    /// before (empty on a first release), for the undo.
    pub pinned: BTreeMap<String, String>,
    pub swarm_previous: BTreeMap<String, String>,
    /// The verified copy of the data a rehearsal runs on (a scratch
    /// database, dropped by the rehearsal or the undo).
    pub copy: Option<String>,
    /// The migrations this run applied (for the journal).
    pub applied: Vec<crate::database_migrations::Pending>,
    /// The rehearsal's findings (for the journal).
    pub rehearsal: Option<serde_json::Value>,
}

/// Take the lock, start what is not released (the database, the proxy)
/// and wait for the database.
pub fn begin_base<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
    what: &'a str,
) {
    lock_step(plan, env, out, what);
    plan.step(
        "Start the services that are not released",
        "compose up -d --no-deps for every other Compose service (database, proxy): nothing changes when they run",
        move |_| {
            let stage = Stage::new(env, rel)?;
            if stage.base_running()? {
                out.detail("the services that are not released already run");
                return Ok(());
            }
            let base = stage.base_services()?;
            if base.is_empty() {
                return Ok(());
            }
            // Never back onto the data from before a point-in-time restore.
            crate::disaster_recovery::check_restored_volume(env)?;
            stage.up(out, &base, &stage.image_vars(&BTreeMap::new())?)
        },
    );
    let wait = Duration::from_secs(rel.health_timeout_secs);
    plan.action(
        "Wait for the database",
        format!("SELECT 1 until it answers, at most {} s", wait.as_secs()),
        move || crate::database_migrations::wait_for_database(env, out, wait),
    );
}

/// Take the environment's lock, held in the state until the end.
pub fn lock_step<'a>(plan: &mut Plan<'a, RelState>, env: &'a Env, out: &'a Output, what: &'a str) {
    plan.step(
        "Take the environment's lock",
        format!(
            "one operation at a time on `{}` (held until the end, released on error and Ctrl-C)",
            env.name
        ),
        move |s: &mut RelState| {
            s.lock = Some(lock::acquire(
                env,
                out,
                &format!("release {} {what}", env.name),
            )?);
            Ok(())
        },
    );
}

/// Open the journal entry (on the target's database server).
pub fn journal_step<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    out: &'a Output,
    action: &'a str,
    version: &'a str,
    previous: Option<String>,
    images: BTreeMap<String, String>,
) {
    let _ = out;
    plan.step(
        "Open the journal entry",
        format!(
            "{action} of {version} (previous: {}) in mre_ops_releases on the target",
            previous.as_deref().unwrap_or("none")
        ),
        move |s: &mut RelState| {
            let mut j = Journal::open(env)?;
            s.entry = Some(j.begin(
                action,
                version,
                previous.as_deref(),
                &images,
                s.preflight.as_deref(),
            )?);
            s.journal = Some(j);
            Ok(())
        },
    );
}

/// Keep `release.keep` releases' images on the target; never one the
/// journal may still roll back to, never one a container uses.
pub fn prune_step<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
) {
    plan.step(
        "Prune old releases",
        format!(
            "remove the images of releases beyond the newest {} (and of none a container uses)",
            rel.keep
        ),
        move |s: &mut RelState| {
            let Some(j) = s.journal.as_mut() else {
                return Ok(());
            };
            let entries = j.entries()?;
            let mut kept = journal::kept(&entries, rel.keep + 1);
            // The release this run puts live is not `success` in the journal
            // until the run ends: never prune it.
            if let Some(e) = entries.iter().find(|e| Some(e.id) == s.entry) {
                kept.push(e.version.clone());
            }
            let docker = crate::core::session::docker(env)?;
            let mut removed = Vec::new();
            for e in entries.iter().filter(|e| !kept.contains(&e.version)) {
                for image in e.images.values() {
                    if removed.contains(image) {
                        continue;
                    }
                    // In use, or already gone: the engine refuses; that is fine.
                    if docker.remove_image(image).unwrap_or(false) {
                        removed.push(image.clone());
                    }
                }
            }
            if !removed.is_empty() {
                out.line(&format!(
                    "Pruned {} old release image(s): {}",
                    removed.len(),
                    removed.join(", ")
                ));
            }
            Ok(())
        },
    );
}

/// The cutover to `targets` (released service → image reference), from the
/// `live` colours (empty on a first release). `maintenance`: this run put
/// the proxy in maintenance mode, turned off before the post-deploy checks.
#[allow(clippy::too_many_arguments)]
pub fn cutover_steps<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
    targets: &BTreeMap<String, String>,
    live: &BTreeMap<String, String>,
    smoke: bool,
    maintenance: Option<&crate::core::maintenance::Maintenance>,
    bake: Option<super::bake::BakePlan>,
) {
    let timeout = Duration::from_secs(rel.health_timeout_secs);
    let mut new_colours = BTreeMap::new();
    let mut old_colours = BTreeMap::new();
    for (svc, s) in rel
        .services
        .iter()
        .filter(|(_, s)| s.strategy == Strategy::BlueGreen)
    {
        let Some(image) = targets.get(svc).cloned() else {
            continue;
        };
        let old = live.get(svc).cloned();
        let new = old.as_deref().map(other).unwrap_or("blue").to_string();
        let unit = format!("{svc}-{new}");
        new_colours.insert(svc.clone(), new.clone());
        if let Some(o) = &old {
            old_colours.insert(svc.clone(), o.clone());
        }
        let var = ReleasedService::image_var(svc, Some(&new));
        let (u1, u2, u3) = (unit.clone(), unit.clone(), unit.clone());
        let image2 = image.clone();
        plan.step(
            format!("Start {unit} beside the live colour"),
            format!("compose up -d --no-deps {unit} with {var}={image}"),
            move |s: &mut RelState| {
                s.cutover_started = true;
                let stage = Stage::new(env, rel)?;
                // The kept colour of a recent release: started as it is
                // (seconds), not recreated.
                if stage.start_kept(&u1, &image2)? {
                    return Ok(());
                }
                let vars = stage.image_vars(&BTreeMap::from([(var, image2)]))?;
                stage.up(out, &[u1], &vars)
            },
        )
        .undo(format!("compose stop {unit}"), move |_| {
            let stage = Stage::new(env, rel)?;
            let vars = stage.image_vars(&BTreeMap::new())?;
            stage.stop(out, &u2, &vars)
        });
        let svc2 = svc.clone();
        plan.action(
            format!("Wait until {unit} is healthy"),
            format!(
                "Docker health healthy and {} answering on the container's own address, at most {} s",
                s.health_path.as_deref().unwrap_or("(no health path)"),
                timeout.as_secs()
            ),
            move || Stage::new(env, rel)?.wait_healthy(out, &svc2, &u3, timeout),
        );
    }
    // The smoke tests against the new app colour on its own address, before
    // the proxy sends it a single request: a release that fails them (an
    // API open without a session, a broken login) never serves a user.
    let app = new_colours.get(SMOKE_SERVICE).and_then(|c| {
        let port = rel.services.get(SMOKE_SERVICE)?.port?;
        Some((format!("{SMOKE_SERVICE}-{c}"), port))
    });
    if let (true, Some((unit, port))) = (smoke, app) {
        plan.action(
            format!("Smoke tests on {unit} before it takes traffic"),
            format!(
                "cargo xtask smoke {} --url http://<{unit}'s address>:{port}: the health JSON, the page, the smoke \
                 user's login, the API and its auth boundary, database queries; a failure stops the release before \
                 the switch (the proxy never sends it a request)",
                env.name
            ),
            move || {
                let url = Stage::new(env, rel)?.own_address(&unit, port)?;
                smoke_until_pass(env, out, Some(url), &format!(" before {unit} takes traffic"))
            },
        );
    }
    if !new_colours.is_empty() {
        let shown: Vec<String> = new_colours
            .iter()
            .map(|(s, c)| format!("{s} → {s}-{c}"))
            .collect();
        let (new2, old2) = (new_colours.clone(), old_colours.clone());
        let how = match rel.proxy.kind {
            crate::config::ProxyKind::Nginx => format!(
                "write {} ({}), nginx -t, nginx -s reload",
                rel.proxy.config_path(),
                shown.join(", ")
            ),
            crate::config::ProxyKind::Haproxy => format!(
                "HAProxy's runtime API: the new colour's server ready, the old one drain ({}), no reload; {} written for a restart",
                shown.join(", "),
                rel.proxy.config_path()
            ),
        };
        let drain = Duration::from_secs(rel.drain_secs.max(1));
        if let (Some(b), false) = (bake, old_colours.is_empty()) {
            if let Some(share) = b.canary {
                canary_steps(
                    plan,
                    env,
                    rel,
                    out,
                    &new_colours,
                    &old_colours,
                    share,
                    b.period,
                );
            }
        }
        plan.step("Switch the proxy to the new colour", how, move |_| {
            Stage::new(env, rel)?.switch(&new2)
        })
        .undo(
            format!(
                "point the proxy back at the previous colour, and let the new one drain (at most {} s) before it is stopped",
                drain.as_secs()
            ),
            move |_| {
                if old2.is_empty() {
                    return Ok(());
                }
                let stage = Stage::new(env, rel)?;
                stage.switch(&old2)?;
                let new3: BTreeMap<String, String> = old2
                    .iter()
                    .map(|(s, c)| (s.clone(), other(c).to_string()))
                    .collect();
                stage.drain(out, &new3, drain)
            },
        );
    }
    for (svc, s) in rel
        .services
        .iter()
        .filter(|(_, s)| s.strategy == Strategy::StopFirst)
    {
        let Some(image) = targets.get(svc).cloned() else {
            continue;
        };
        let var = ReleasedService::image_var(svc, None);
        let (svc1, svc2) = (svc.clone(), svc.clone());
        let var2 = var.clone();
        let _ = s;
        plan.step(
            format!("Replace {svc} (stop-first: one writer)"),
            format!("compose up -d --no-deps {svc} with {var}={image}; the window without a writer is measured"),
            move |st: &mut RelState| {
                st.cutover_started = true;
                let stage = Stage::new(env, rel)?;
                let before = stage.image_vars(&BTreeMap::new())?;
                if let Some((_, v)) = before.iter().find(|(k, _)| *k == var) {
                    st.previous_images.insert(var.clone(), v.clone());
                }
                let vars = stage.image_vars(&BTreeMap::from([(var.clone(), image.clone())]))?;
                let start = Instant::now();
                stage.up(out, std::slice::from_ref(&svc1), &vars)?;
                stage.wait_healthy(out, &svc1, &svc1, timeout)?;
                let window = start.elapsed().as_secs_f64();
                out.line(&format!("{svc1}: replaced in {window:.1} s (no writer during that window)"));
                st.stop_windows.push((svc1.clone(), window));
                Ok(())
            },
        )
        .undo(format!("compose up -d --no-deps {svc} with its previous image"), move |st: &mut RelState| {
            let Some(prev) = st.previous_images.get(&var2).cloned() else { return Ok(()) };
            let stage = Stage::new(env, rel)?;
            let vars = stage.image_vars(&BTreeMap::from([(var2.clone(), prev)]))?;
            stage.up(out, std::slice::from_ref(&svc2), &vars)
        });
    }
    if !old_colours.is_empty() && rel.drain_secs > 0 {
        let d = Duration::from_secs(rel.drain_secs);
        let old3 = old_colours.clone();
        plan.action(
            "Let the old colour drain",
            match rel.proxy.kind {
                crate::config::ProxyKind::Nginx => {
                    format!(
                        "{} s for requests already on the old colour to finish",
                        d.as_secs()
                    )
                }
                crate::config::ProxyKind::Haproxy => format!(
                    "until HAProxy counts no request on the old colour, at most {} s",
                    d.as_secs()
                ),
            },
            move || Stage::new(env, rel)?.drain(out, &old3, d),
        );
    }
    if let Some(m) = maintenance {
        crate::core::maintenance::off_step(plan, env, out, m);
    }
    verify_steps(plan, env, out, timeout, smoke);
    if let (
        Some(super::bake::BakePlan {
            period,
            canary: None,
        }),
        false,
    ) = (bake, old_colours.is_empty())
    {
        let new4 = new_colours.clone();
        plan.action(
            format!("Bake the new release for {} s", period.as_secs()),
            "HAProxy's counters of the new colour each second against release.max_error_rate and \
             max_latency_ratio (once bake_min_requests were seen); the old colour stays ready: a breach \
             or Ctrl-C switches back",
            move || super::bake::watch(env, rel, out, &new4, period),
        );
    }
    for (svc, old) in &old_colours {
        let unit = format!("{svc}-{old}");
        let u = unit.clone();
        if rel.keep_previous_running {
            plan.action(
                format!("Keep {unit} running (release.keep_previous_running)"),
                format!(
                    "nothing stops it: `cargo xtask rollback {}` is a switch of the proxy",
                    env.name
                ),
                || Ok(()),
            );
            continue;
        }
        plan.action(
            format!("Stop {unit} (kept for rollback)"),
            format!("compose stop {unit}: the container stays, `cargo xtask rollback {}` starts it in seconds", env.name),
            move || {
                let stage = Stage::new(env, rel)?;
                let vars = stage.image_vars(&BTreeMap::new())?;
                stage.stop(out, &u, &vars)
            },
        );
    }
}

/// The canary's steps, before the full switch: `share` % of the requests
/// to the new colour (both ready, HAProxy's weights), then the bake,
/// judging the new colour beside the old one. A breach or Ctrl-C undoes
/// the share: every request back to the old colour, the new one drained.
#[allow(clippy::too_many_arguments)]
fn canary_steps<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
    new: &BTreeMap<String, String>,
    old: &BTreeMap<String, String>,
    share: u32,
    period: Duration,
) {
    let (new1, new2, new3, old1) = (new.clone(), new.clone(), new.clone(), old.clone());
    let drain = Duration::from_secs(rel.drain_secs.max(1));
    plan.step(
        format!("Send {share}% of the requests to the new colour (canary)"),
        format!(
            "HAProxy's runtime API: both colours ready, weights {share} (new) and {} (old); the file still names the old colour",
            100 - share
        ),
        move |_| Stage::new(env, rel)?.canary(&new1, share),
    )
    .undo(
        "every request back to the old colour; the new one drains",
        move |_| {
            let stage = Stage::new(env, rel)?;
            stage.switch(&old1)?;
            stage.drain(out, &new2, drain)
        },
    );
    plan.action(
        format!("Bake the canary for {} s", period.as_secs()),
        "HAProxy's counters of the new colour each second against release.max_error_rate and \
         max_latency_ratio (the old colour's average), once bake_min_requests were seen: good, promote \
         to 100 %; a breach or Ctrl-C, back to 0 %",
        move || super::bake::watch(env, rel, out, &new3, period),
    );
}

/// How long the smoke tests may keep failing after a switch before the
/// release counts as broken: a new task's first connections (Docker's DNS
/// on an overlay network, a pool) may take seconds to settle.
const SMOKE_SETTLE: Duration = Duration::from_secs(30);

/// The service the smoke tests reach (the runbook's app; `smoke.url` or its
/// URL through the proxy).
const SMOKE_SERVICE: &str = "mre-app";

/// The smoke tests, against `url` (else smoke.url, through the proxy), run
/// again while one fails for at most SMOKE_SETTLE; an error if they still do.
/// `when` (" before X takes traffic", or empty) goes into what is printed.
pub(crate) fn smoke_until_pass(
    env: &Env,
    out: &Output,
    url: Option<String>,
    when: &str,
) -> anyhow::Result<()> {
    let opts = crate::post_deployment_verification::smoke_tests::SmokeOptions {
        url,
        ..Default::default()
    };
    let start = Instant::now();
    let (checks, n) = loop {
        let checks = crate::post_deployment_verification::smoke_tests::run_smoke(env, &opts);
        crate::core::interrupt::check()?;
        let n = crate::core::check::counts(&checks);
        if n["fail"].as_u64().unwrap_or(0) == 0 || start.elapsed() >= SMOKE_SETTLE {
            break (checks, n);
        }
        out.progress("smoke tests: a check fails; trying again");
        crate::core::wait::sleep(Duration::from_secs(2))?;
    };
    out.progress_done();
    if n["fail"].as_u64().unwrap_or(0) > 0 {
        bail!(
            "the new release fails its smoke tests{when} (for {} s):{}",
            start.elapsed().as_secs(),
            crate::core::check::failures(&checks)
        );
    }
    out.line(&format!(
        "Smoke tests{when}: {} pass, {} skip",
        n["pass"], n["skip"]
    ));
    Ok(())
}

/// After the switch: every health check through the proxy until all pass,
/// then (deploys) the smoke tests. A failure of either switches back
/// through the undos of the steps before.
pub fn verify_steps<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    out: &'a Output,
    timeout: Duration,
    smoke: bool,
) {
    plan.action(
        "Post-deploy checks",
        format!(
            "every health check of `{}` through the proxy (HTTP, containers, database) until all pass, at most {} s; a failure switches back",
            env.name,
            timeout.as_secs()
        ),
        move || {
            let checks = health_checks::wait_until_healthy(env, out, timeout);
            crate::core::interrupt::check()?;
            if checks.iter().any(|c| !c.ok) {
                bail!(
                    "the new release fails its post-deploy checks:{}",
                    crate::core::check::failures(&checks)
                );
            }
            Ok(())
        },
    );
    if smoke {
        plan.action(
            "Smoke tests",
            format!(
                "cargo xtask smoke {} through the proxy: the health JSON, the page, the smoke user's login, \
                 the API and its auth boundary, database queries; run again while one fails, for at most \
                 {} s (a new task's connections settle); still failing switches back",
                env.name,
                SMOKE_SETTLE.as_secs()
            ),
            move || smoke_until_pass(env, out, None, ""),
        );
    }
}
