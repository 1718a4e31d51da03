//! Staging Deployment, Production Deployment and Application Rollback:
//! versioned images in a registry, one lock per environment, a cutover
//! without downtime behind the reverse proxy, a journal on the target, and
//! `rollback` to a kept release in seconds. `deploy ENV` comes here when the
//! environment has `[environments.ENV.release]` in ops.toml.

pub(crate) mod bake;
mod cutover;
mod images;
pub(crate) mod plan;
mod rehearsal;
pub(crate) mod swarm;
mod version;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Driver, Env, Ops, ReleaseSettings};
use crate::core::journal;
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::{Plan, Timing};
use crate::database_migrations;
use plan::RelState;
pub use swarm::down_steps as swarm_down_steps;

/// What `deploy` passes on.
pub struct ReleaseOptions<'a> {
    pub dry_run: bool,
    pub yes: bool,
    pub allow_risky: bool,
    pub version: Option<&'a str>,
    /// Skip the pre-deployment checklist of a protected environment, with
    /// the reason the journal records.
    pub skip_preflight: Option<&'a str>,
    /// `--attest review=URL` for the checklist.
    pub attest: &'a [String],
    /// `--skip-rehearsal` and `--no-rollback-path`, with their reasons.
    pub waivers: rehearsal::Waivers<'a>,
    /// On a swarm: release even while a node is down.
    pub allow_degraded: bool,
}
pub use rehearsal::{rehearse_command as rehearse, RehearseArgs, Waivers};

/// Show an environment's release journal.
///
/// Show the release journal of an environment (runbook: Application Rollback):
/// every deploy and rollback, the live release marked, and which releases are
/// kept for an instant rollback.
#[derive(clap::Args, Debug)]
pub struct ReleasesArgs {
    pub env: String,
}

pub(crate) fn settings(env: &Env) -> Result<&ReleaseSettings> {
    env.settings.release.as_ref().ok_or_else(|| {
        config_error(format!(
            "environment `{}` has no [environments.{}.release] in ops.toml: releases, rollback and the journal need a registry and a proxy (docs/releases.md)",
            env.name, env.name
        ))
    })
}

pub(crate) fn confirm(env: &Env, what: &str, yes: bool) -> Result<()> {
    if !env.settings.protected || yes {
        return Ok(());
    }
    crate::core::confirm::by_typing(
        &format!("{what} on `{}`.", env.name),
        &env.name,
        &format!(
            "`{}` is protected: {what} needs a confirmation. Pass --yes (CI), or run it on a terminal",
            env.name
        ),
    )
}

/// The live colours and the journal, read without changing anything; in a
/// dry run, what cannot be read is left unknown.
pub(crate) fn observe(
    env: &Env,
    rel: &ReleaseSettings,
    dry_run: bool,
) -> Result<(BTreeMap<String, String>, Vec<journal::Entry>)> {
    let live = match if env.settings.driver == Driver::Swarm {
        swarm::live_images(env, rel)
    } else {
        cutover::Stage::new(env, rel).and_then(|s| s.live_colours())
    } {
        Ok(l) => l,
        Err(_) if dry_run => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    let entries = match journal::Journal::open(env).and_then(|mut j| j.entries()) {
        Ok(e) => e,
        // A first release: the database does not run yet.
        Err(_) if live.is_empty() => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok((live, entries))
}

pub(crate) fn targets(rel: &ReleaseSettings, version: &str) -> BTreeMap<String, String> {
    rel.services
        .iter()
        .map(|(svc, s)| (svc.clone(), images::reference(rel, &s.image, version)))
        .collect()
}

/// `deploy staging|production`: the release path.
pub fn deploy(ops: &Ops, out: &Output, mut env: Env, opts: &ReleaseOptions) -> Result<()> {
    // Secrets the environment may generate (a stand-in's database password)
    // exist before anything else runs.
    if !opts.dry_run {
        let missing = crate::core::secrets::ensure_generated(&mut env, true)?;
        // Writing the env file is a change to the environment: under its
        // lock (released before the build; the plan takes it again), and
        // looked at again once held, in case another operator wrote them.
        let _writing = if missing.is_empty() {
            None
        } else {
            Some(crate::core::lock::acquire(
                &env,
                out,
                &format!("release {}: generate secrets", env.name),
            )?)
        };
        let missing = match &_writing {
            Some(_) => {
                env = session::env(ops, out, &env.name)?;
                crate::core::secrets::ensure_generated(&mut env, true)?
            }
            None => missing,
        };
        if !missing.is_empty() {
            // A database created with the old password keeps it: a new
            // random one would lock the application out of its own data.
            let db = env
                .settings
                .database
                .as_ref()
                .and_then(|d| d.container.clone());
            if let Some(c) = db {
                if crate::core::session::docker(&env)?.container(&c)?.is_some() {
                    return Err(config_error(format!(
                        "{} missing from {}, but the database container `{c}` exists and keeps the password it was created \
                         with: put the old value back; nothing was changed",
                        missing.join(", "),
                        env.env_file_hint()
                    )));
                }
            }
            crate::core::secrets::ensure_generated(&mut env, false)?;
            session::protect(&env);
        } else {
            crate::core::secrets::check_password_against_running_database(&env)?;
        }
    }
    let env = &env;
    let rel = settings(env)?;
    let version = match opts.version {
        Some(v) if version::valid_tag(v) => version::Version {
            name: v.to_string(),
            dirty: false,
        },
        Some(v) => {
            return Err(config_error(format!(
                "--tag `{v}` is not a valid image tag (letters, digits, `_.-`, at most 128)"
            )))
        }
        None => version::of_checkout(&ops.dir)?,
    };
    if version.dirty {
        if env.settings.protected {
            return Err(config_error(format!(
                "the checkout has uncommitted changes ({}): `{}` only takes committed releases. Commit or stash them",
                version.name, env.name
            )));
        }
        out.warn(&format!(
            "releasing uncommitted changes as {} to `{}`",
            version.name, env.name
        ));
    }
    if !opts.dry_run {
        // The smoke tests after the cutover need their settings: refuse
        // now rather than switch back later.
        crate::post_deployment_verification::smoke_tests::ready(env)?;
        if env.settings.driver == Driver::Swarm {
            swarm::check_manager(env)?;
            swarm::check_nodes(env, out, opts.allow_degraded)?;
        }
        confirm(env, &format!("Release {}", version.name), opts.yes)?;
    }
    let (live, entries) = observe(env, rel, opts.dry_run)?;
    let previous = journal::current(&entries).map(|e| e.version.clone());
    let targets = targets(rel, &version.name);
    let v: &str = &version.name;

    let mut plan: Plan<RelState> = Plan::new(format!("release {v} to {}", env.name));
    let rehearsing =
        rel.rehearse && opts.waivers.skip.is_none() && env.settings.driver != Driver::Swarm;
    if env.settings.protected {
        let (skip, attest) = (opts.skip_preflight, opts.attest);
        plan.step(
            "Pre-deployment checklist",
            match skip {
                Some(reason) => format!("cargo xtask preflight {}, shown but not enforced: skipped by the operator ({reason}), recorded in the journal", env.name),
                None => format!("cargo xtask preflight {}: the runbook's 17 items; any FAIL refuses the deploy before anything changes", env.name),
            },
            move |s: &mut RelState| {
                s.preflight = Some(crate::pre_deployment_checklist::gate(ops, env, out, attest, skip)?);
                Ok(())
            },
        );
        plan.step(
            "Back up the database and verify it",
            "cargo xtask backup create, then backup verify (a full restore into a scratch database) (runbook: Create database backup)",
            move |s: &mut RelState| {
                if crate::database_migrations::wait_for_database(env, out, Duration::from_secs(5)).is_err() {
                    out.line("The database does not run yet (first release): nothing to back up.");
                    return Ok(());
                }
                let path = crate::disaster_recovery::create_backup(env, out, &format!("before release {v}"))?;
                s.backup = Some(path.to_string());
                // "Create database backup" means one that restores: verify it
                // (a full restore into a scratch database) before going on.
                // A release with migrations to rehearse keeps that copy.
                let quiet = Output::new(false, true, out.verbose);
                let keep = rehearsing && !database_migrations::pending(env)?.is_empty();
                let verified = if keep {
                    crate::disaster_recovery::verify_backup_keeping_copy(env, &quiet, path.as_str()).map(Some)
                } else {
                    crate::disaster_recovery::verify_backup(env, &quiet, path.as_str(), false).map(|()| None)
                };
                s.copy = verified
                    .map_err(|e| e.context(format!("the pre-release backup {path} did not verify: nothing was released")))?;
                out.line(&format!(
                    "Backup {path} verified (restored into a scratch database, row counts match){}.",
                    if keep { "; the copy is kept for the rehearsal" } else { "" }
                ));
                Ok(())
            },
        )
        .undo("drop the copy kept for the rehearsal", move |s: &mut RelState| match s.copy.take() {
            Some(c) => crate::disaster_recovery::drop_copy(env, &c),
            None => Ok(()),
        });
    }
    build_steps(&mut plan, env, rel, out, &ops.dir, v, "Pre-build");
    if env.settings.driver == Driver::Swarm {
        let (prev, imgs) = (previous.clone(), targets.clone());
        swarm::steps(
            &mut plan,
            env,
            rel,
            out,
            targets.clone(),
            v,
            Some(opts.allow_risky),
            move |p| plan::journal_step(p, env, out, "deploy", v, prev, imgs),
        );
    } else {
        plan::begin_base(&mut plan, env, rel, out, v);
        plan::journal_step(
            &mut plan,
            env,
            out,
            "deploy",
            v,
            previous.clone(),
            targets.clone(),
        );
        let allow_risky = opts.allow_risky;
        let live_release = journal::current(&entries).map(|e| rehearsal::Candidate {
            role: "live",
            version: e.version.clone(),
            images: e.images.clone(),
        });
        let new_release = rehearsal::Candidate {
            role: "new",
            version: v.to_string(),
            images: targets.clone(),
        };
        rehearsal::step(
            &mut plan,
            env,
            rel,
            out,
            new_release,
            live_release,
            allow_risky,
            opts.waivers,
        );
        plan.step(
            "Lint and apply pending migrations",
            format!(
                "cargo xtask migrate deploy {} before the new code takes traffic (the lint blocks risky statements outside development)",
                env.name
            ),
            move |s: &mut RelState| {
                s.applied = database_migrations::pending(env)?;
                let o = database_migrations::DeployOptions { dry_run: false, allow_risky, backup: false, report: false };
                database_migrations::deploy(env, out, &o)
            },
        );
        let bake = bake::BakePlan::of(rel);
        plan::cutover_steps(&mut plan, env, rel, out, &targets, &live, true, None, bake);
    }
    plan::prune_step(&mut plan, env, rel, out);
    run(
        env,
        rel,
        out,
        plan,
        "deploy",
        v,
        previous.as_deref(),
        opts.dry_run,
    )
}

/// Print the plan (dry run), or run it and finish: journal, notify, report.
#[allow(clippy::too_many_arguments)]
fn run(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    plan: Plan<RelState>,
    action: &str,
    version: &str,
    previous: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        plan.print(out);
        return Ok(());
    }
    let mut state = RelState::default();
    let (result, timings) = plan.execute_timed(out, &mut state);
    finish(
        env, rel, out, action, version, previous, state, result, timings,
    )
}

/// The environment's pre-build commands, run in `root` (ops.toml's folder,
/// or a checkout of an older commit), then build, push and pull the images.
pub(crate) fn build_steps<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &Env,
    rel: &ReleaseSettings,
    out: &'a Output,
    root: &camino::Utf8Path,
    version: &str,
    label: &str,
) {
    for argv in env.pre_build() {
        let cmd = crate::adapters::process::Command::new(&argv[0], argv[1..].iter().cloned())
            .dir(root)
            .envs(&env.compose_env());
        plan.command(format!("{label}: {}", argv.join(" ")), cmd, out);
    }
    for (title, cmd) in images::commands(env, rel, root, version) {
        plan.command(title, cmd, out);
    }
}

/// Close the journal entry, notify, report; the lock goes with the state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    action: &str,
    version: &str,
    previous: Option<&str>,
    mut state: RelState,
    result: Result<()>,
    timings: Vec<Timing>,
) -> Result<()> {
    let outcome = match (&result, state.cutover_started) {
        (Ok(()), _) => "success",
        (Err(_), true) => "rolled-back",
        (Err(_), false) => "failed",
    };
    let detail = result
        .as_ref()
        .err()
        .map(|e| crate::adapters::output::redact(&format!("{e:#}")));
    if let (Some(j), Some(id)) = (state.journal.as_mut(), state.entry) {
        let steps = serde_json::to_value(&timings).expect("timings serialise");
        if let Err(e) = j.finish(
            id,
            outcome,
            detail.as_deref(),
            &steps,
            state.backup.as_deref(),
        ) {
            out.warn(&format!("the journal entry could not be completed: {e:#}"));
        }
        // The schema the database is on now, what this run applied, what
        // its rehearsal proved: what `rollback` reads.
        let schema = database_migrations::fingerprint(env).ok().flatten();
        let applied = serde_json::to_value(&state.applied).expect("migrations serialise");
        if let Err(e) = j.record_schema(id, schema.as_deref(), &applied, state.rehearsal.as_ref()) {
            out.warn(&format!("the journal could not record the schema: {e:#}"));
        }
    }
    drop(state.lock.take());
    let text = match outcome {
        "success" => format!("`{}`: {action} of {version} succeeded (was {})", env.name, previous.unwrap_or("none")),
        "rolled-back" => format!(
            "`{}`: {action} of {version} failed after the cutover began and was switched back to {}",
            env.name,
            previous.unwrap_or("the previous state")
        ),
        _ => format!("`{}`: {action} of {version} failed before the cutover; {} still serves", env.name, previous.unwrap_or("the previous release")),
    };
    notify(env, rel, out, &text, outcome == "success");
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "action": action, "version": version, "previous": previous,
        "result": outcome, "steps": timings, "backup": state.backup,
        "stop_first_windows": state.stop_windows.iter().map(|(s, w)| serde_json::json!({"service": s, "seconds": w})).collect::<Vec<_>>(),
    }));
    r.line(text.clone());
    r.summary(format!("### {text}\n"));
    if result.is_err() {
        r.error(text);
    }
    r.emit(out);
    let url = env
        .settings
        .services
        .values()
        .find_map(|s| s.url.clone())
        .unwrap_or_default();
    out.github_output(&[("version", version), ("result", outcome), ("url", &url)]);
    result
}

/// Tell the team (runbook: "Notify team"): Slack-compatible JSON to the
/// webhook in the variable `notify_webhook_env` names. Never fails a deploy.
fn notify(env: &Env, rel: &ReleaseSettings, out: &Output, text: &str, ok: bool) {
    let Some(var) = &rel.notify_webhook_env else {
        return;
    };
    let Some(url) = env.var(var) else {
        out.detail(&format!("${var} is not set: no notification"));
        return;
    };
    let body = serde_json::json!({ "text": format!("{} {text}", if ok { "✅" } else { "❌" }) })
        .to_string();
    match crate::adapters::http::post_json(&url, &body, Duration::from_secs(5)) {
        Ok(r) if (200..300).contains(&r.status) => out.detail("notified the team"),
        Ok(r) => out.warn(&format!(
            "the notification webhook (${var}) answered {}: the team was not told",
            r.status
        )),
        Err(e) => out.warn(&format!(
            "the notification webhook (${var}) failed: {e}; the team was not told"
        )),
    }
}

pub fn releases(ops: &Ops, out: &Output, args: &ReleasesArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let rel = settings(&env)?;
    let entries = journal::Journal::open(&env)?.entries()?;
    let current = journal::current(&entries).map(|e| e.id);
    let kept = journal::kept(&entries, rel.keep);
    // Whether `rollback` may return to each kept release: proven on the
    // schema the database has now (by a release or a rehearsal).
    let schema = database_migrations::fingerprint(&env).ok().flatten();
    let safe = |e: &journal::Entry| -> &'static str {
        if Some(e.id) == current {
            return "live";
        }
        if e.result != "success" || !kept.contains(&e.version) {
            return "";
        }
        match schema
            .as_deref()
            .map(|s| journal::proof(&entries, &e.version, s))
        {
            None => "?",
            Some(journal::Proof::Proven(_)) => "yes",
            Some(journal::Proof::Fails(_)) => "NO",
            Some(journal::Proof::Unknown) => "unproven",
        }
    };
    let rollback_safe: BTreeMap<i64, &str> = entries.iter().map(|e| (e.id, safe(e))).collect();
    let incident = crate::core::incident::pointer(&env);
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "current": current, "kept": kept, "entries": entries,
        "schema": schema, "rollback_safe": rollback_safe,
        "latest_incident": incident.as_ref().map(|i| &i.1),
    }));
    r.line(format!(
        "Releases of `{}` (newest last; * live, k kept for rollback):",
        env.name
    ));
    let mut rows = Vec::new();
    for e in &entries {
        let mark = if Some(e.id) == current {
            "*"
        } else if kept.contains(&e.version) && e.result == "success" {
            "k"
        } else {
            " "
        };
        let result = if e.result == "running" && e.finished_at.is_none() {
            "running or interrupted"
        } else {
            e.result.as_str()
        };
        rows.push(vec![
            format!("{mark} #{}", e.id),
            e.started_at.clone(),
            e.action.clone(),
            e.version.clone(),
            format!("from {}", e.previous.as_deref().unwrap_or("-")),
            result.to_string(),
            match rollback_safe[&e.id] {
                "" | "live" => String::new(),
                v => format!("rollback-safe: {v}"),
            },
            format!("{}@{}", e.who, e.host),
        ]);
    }
    for (e, line) in entries.iter().zip(crate::core::report::table(&rows, &[])) {
        r.line(line);
        if let Some(reason) = e.preflight.as_deref().filter(|p| p.starts_with("skipped")) {
            r.line(format!("          pre-deployment checklist {reason}"));
        }
    }
    if entries.is_empty() {
        r.line(format!(
            "  (none yet: `cargo xtask deploy {}` makes the first)",
            env.name
        ));
    }
    if let Some((line, _)) = &incident {
        r.line(line.clone());
    }
    r.emit(out);
    Ok(())
}

/// Refuse, before anything runs, what cannot work.
pub fn check_settings(env: &Env) -> Result<()> {
    let rel = settings(env)?;
    if let (Some(p), None) = (rel.canary, &rel.bake) {
        bail!(config_error(format!(
            "--canary {p} needs a bake period to judge it: add --bake 5m (or environments.{}.release.bake)",
            env.name
        )));
    }
    if let Some(p) = rel.canary.filter(|p| !(1..=99).contains(p)) {
        bail!(config_error(format!(
            "--canary {p}: a share from 1 to 99 (%)"
        )));
    }
    if let Some(b) = &rel.bake {
        let field = format!("environments.{}.release.bake (or --bake)", env.name);
        if crate::config::parse_duration(b).is_none() {
            bail!(config_error(format!(
                "{field} = \"{b}\" is not a duration (`30s`, `5m`)"
            )));
        }
        if rel.proxy.kind != crate::config::ProxyKind::Haproxy || env.settings.swarm.is_some() {
            bail!(config_error(format!(
                "{field}: the bake reads HAProxy's counters of each colour, so it needs release.proxy.kind = \"haproxy\" on Compose"
            )));
        }
    }
    for (svc, s) in &rel.services {
        if !rel.images.contains_key(&s.image) {
            bail!(config_error(format!(
                "environments.{}.release.services.{svc}.image: `{}` is not one of release.images ({})",
                env.name,
                s.image,
                rel.images.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}
