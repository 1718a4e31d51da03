//! Deployment Procedures: build the images, start the services, wait until
//! every container is healthy and every health check passes, then show the
//! services (runbook: Development Deployment; `docker compose build`,
//! `up -d`, `ps`, `logs -f`).

pub mod nodes;
pub mod releases;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::{config_error, Env, Ops};
use crate::core::prerequisites;
use crate::core::steps::Plan;
use crate::core::{check, session};
use crate::{database_migrations, health_checks, post_deployment_verification};

/// Deploy an environment.
///
/// Runbook: Deployment Procedures.
///
/// With `[release]` in ops.toml (staging, production: runbook Staging and
/// Production Deployment): on protected environments run the
/// Pre-Deployment Checklist (a FAIL refuses; --skip-preflight REASON) and
/// back up, build, tag and push the images, take the environment's lock, start the database, open
/// the journal, lint and apply migrations, start the new colour beside the
/// live one, switch the proxy when it is healthy, run the post-deploy
/// checks and the smoke tests (a failure switches back), stop the old colour (kept for
/// `rollback`), prune, notify.
///
/// With `driver = "swarm"` (production on Docker Swarm, docs/swarm.md): the
/// same images pinned by digest, `docker stack deploy` with each service's
/// update order and `failure_action: rollback`, the engine's rolling update
/// waited for; any failure puts every service back on the previous release.
///
/// Without it (development): create missing development secrets; run the environment's
/// pre-build commands; `compose build`; `compose up -d`; wait for the
/// database; on protected environments and those with backups configured,
/// when migrations are pending, lint them and back the database up; apply
/// pending migrations (the lint blocks risky ones outside
/// development unless --allow-risky); wait until every
/// container is healthy and every health check passes; show the services,
/// their URLs and the logs command. Running it again with nothing changed
/// changes nothing.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Print the steps and commands without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for health (default: deploy.wait_secs in ops.toml).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Apply migrations even when the lint finds risky statements (staging
    /// and production block on them otherwise).
    #[arg(long)]
    pub allow_risky: bool,
    /// Releases (staging, production): the version to release (default: the
    /// git commit of the checkout, short sha).
    #[arg(long, value_name = "VERSION")]
    pub tag: Option<String>,
    /// Do not ask for confirmation on a protected environment (CI). On an
    /// engine on this machine, also start it when it is stopped and let
    /// the pre-build step install what it lacks (debootstrap), as root.
    #[arg(long)]
    pub yes: bool,
    /// Protected environments run the Pre-Deployment Checklist first and
    /// refuse on a FAIL; skip it, saying why (written to the release journal
    /// and warned about).
    #[arg(long, value_name = "REASON")]
    pub skip_preflight: Option<String>,
    /// For the checklist of a protected environment: `review=URL` (code
    /// review completed and approved), `docs=URL`. Repeatable.
    #[arg(long, value_name = "ITEM=URL")]
    pub attest: Vec<String>,
    /// Releases with pending migrations are rehearsed on a verified copy of
    /// the data first; skip that, saying why (written to the journal).
    #[arg(long, value_name = "REASON")]
    pub skip_rehearsal: Option<String>,
    /// Go on when the rehearsal shows the live release failing on the new
    /// schema (no rollback path), saying why (written to the journal;
    /// `rollback` then needs --with-db pre-deploy or --force).
    #[arg(long, value_name = "REASON")]
    pub no_rollback_path: Option<String>,
    /// Run migrations that the rehearsal saw holding a table exclusively
    /// for longer than `migrations.max_lock_secs` outside `migrations.window`.
    #[arg(long)]
    pub now: bool,
    /// On a swarm: release even while a node is down (its tasks run
    /// elsewhere; refused otherwise, naming the node).
    #[arg(long)]
    pub allow_degraded: bool,
    /// Bake the new release for this long after the switch (`30s`, `5m`;
    /// default: release.bake): HAProxy's counters of the new colour against
    /// release.max_error_rate and max_latency_ratio; a breach, or Ctrl-C,
    /// switches back to the old colour, which stays ready meanwhile.
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<String>,
    /// A canary before the full switch: this share of the requests (`10`
    /// or `10%`) goes to the new colour for the bake period, judged beside
    /// the old one; good, promoted to 100 %; bad, back to 0 % and the
    /// release is rolled back. Needs a bake period and HAProxy.
    #[arg(long, value_name = "PERCENT", value_parser = parse_share)]
    pub canary: Option<u32>,
}

fn parse_share(s: &str) -> std::result::Result<u32, String> {
    s.trim()
        .trim_end_matches('%')
        .parse::<u32>()
        .map_err(|_| format!("`{s}` is not a share like 10 or 10%"))
}

pub fn deploy(ops: &Ops, out: &Output, args: &DeployArgs) -> Result<()> {
    let mut env = session::env(ops, out, &args.env)?;
    if let Some(rel) = env.settings.release.as_mut() {
        if let Some(b) = &args.bake {
            rel.bake = Some(b.clone());
        }
        rel.canary = args.canary;
    }
    if env.settings.release.is_some() {
        // Staging and production: versioned images and a cutover without
        // downtime (crate::releases).
        crate::deployment_procedures::releases::check_settings(&env)?;
        return crate::deployment_procedures::releases::deploy(
            ops,
            out,
            env,
            &crate::deployment_procedures::releases::ReleaseOptions {
                dry_run: args.dry_run,
                yes: args.yes,
                allow_risky: args.allow_risky,
                version: args.tag.as_deref(),
                skip_preflight: args.skip_preflight.as_deref(),
                attest: &args.attest,
                waivers: crate::deployment_procedures::releases::Waivers {
                    skip: args.skip_rehearsal.as_deref(),
                    no_rollback_path: args.no_rollback_path.as_deref(),
                    now: args.now,
                },
                allow_degraded: args.allow_degraded,
            },
        );
    }
    // "Backup database before migration": protected environments, and those
    // with backups configured, back up before migrating; a protected one
    // without backups configured is refused here, before anything changes.
    let backup = database_migrations::needs_backup(&env)?;

    let generated = crate::core::secrets::ensure_generated(&mut env, true)?;
    // A secret that is neither set nor generated would stop the deploy
    // half-way (Compose refuses, the migrations cannot connect): say so now.
    if generated.is_empty() && env.settings.database.is_some() {
        match env.database_url() {
            Err(e) if args.dry_run => {
                out.line(&format!("warning: a real run would stop here: {e:#}"))
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    let compose = session::compose(&env)?;
    let wait = Duration::from_secs(args.wait.unwrap_or(env.settings.deploy.wait_secs));
    let name = env.name.clone();
    // Steps that run commands resolve the environment again when they run,
    // so that they carry secrets an earlier step created.
    let fresh = || session::env(ops, out, &name);

    if !args.dry_run {
        // Fail before changing anything when the engine cannot be reached;
        // a local engine that is installed but stopped is started with
        // the operator's consent (--yes, as root).
        let local = env.docker_host() == "unix:///var/run/docker.sock";
        if local && !prerequisites::engine_answers() && prerequisites::on_path("dockerd") {
            prerequisites::require_consent(
                "the Docker engine on this machine is not running",
                args.yes,
                &format!("cargo xtask deploy {}", env.name),
            )?;
            prerequisites::start_engine(out)?;
        }
        let docker = crate::core::session::docker(&env)?;
        // A database created with the old password keeps it: a new random
        // one would lock the application out of its own data.
        let db_container = env
            .settings
            .database
            .as_ref()
            .and_then(|d| d.container.clone());
        if let (false, Some(c)) = (generated.is_empty(), db_container) {
            if docker.container(&c)?.is_some() {
                let file = env
                    .env_file
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                return Err(config_error(format!(
                    "{} missing from {file}, but the database container `{c}` already exists and keeps the \
                     password it was created with: a new random one would lock the application out. Put the old \
                     value back in {file}; or, to start again from an empty database, remove the stack and its \
                     volumes (`docker-compose -p {} -f FILE down -v`, which deletes the data) and deploy again",
                    generated.join(", "),
                    env.project().unwrap_or("?")
                )));
            }
        }
    }

    // One operation at a time on an environment, held until the deploy ends
    // (on error and Ctrl-C too).
    let _lock = crate::core::lock::unless_dry_run(
        args.dry_run,
        &env,
        out,
        &format!("deploy {}", env.name),
    )?;
    if !args.dry_run && generated.is_empty() {
        crate::core::secrets::check_password_against_running_database(&env)?;
    }

    let mut plan = Plan::new(format!("deploy {}", env.name));
    if env.settings.protected {
        let (skip, attest) = (args.skip_preflight.as_deref(), &args.attest);
        plan.action(
            "Pre-deployment checklist",
            format!(
                "cargo xtask preflight {}: any FAIL refuses the deploy before anything changes",
                env.name
            ),
            move || {
                crate::pre_deployment_checklist::gate(ops, &fresh()?, out, attest, skip).map(drop)
            },
        );
    }
    if !generated.is_empty() {
        let file = env
            .env_file
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        plan.action(
            "Create missing secrets",
            format!("generate {} into {file} (mode 0600)", generated.join(", ")),
            move || crate::core::secrets::ensure_generated(&mut fresh()?, false).map(drop),
        );
    }
    let yes = args.yes;
    for argv in env.pre_build() {
        let shown = Command::new(&argv[0], argv[1..].iter().cloned()).dir(&env.dir);
        plan.action(
            format!("Pre-build: {}", argv.join(" ")),
            format!("$ {}", shown.display()),
            move || {
                // With --yes, the step may install what it lacks
                // (`demo prepare`: debootstrap).
                let consent = (prerequisites::CONSENT_VAR.to_string(), "1".to_string());
                let vars: Vec<(String, String)> = fresh()?
                    .compose_env()
                    .into_iter()
                    .chain(yes.then_some(consent))
                    .collect();
                shown.envs(&vars).run(out)
            },
        );
    }
    for (title, words) in [
        ("Build images", &["build"][..]),
        ("Start services", &["up", "-d"][..]),
    ] {
        plan.action(
            title,
            format!("$ {}", compose.cmd(words).display()),
            move || {
                let env = fresh()?;
                if words[0] == "up" {
                    // Never back onto the data from before a point-in-time restore.
                    crate::disaster_recovery::check_restored_volume(&env)?;
                }
                session::compose(&env)?.cmd(words).run(out)
            },
        );
    }
    if env.settings.database.is_some() {
        let dir = env.dir.join(&env.settings.migrations.dir);
        let allow_risky = args.allow_risky;
        plan.action(
            "Wait for the database",
            format!(
                "SELECT 1 on the database of `{}` until it answers, at most {} s",
                env.name,
                wait.as_secs()
            ),
            move || database_migrations::wait_for_database(&fresh()?, out, wait),
        );
        if backup {
            plan.action(
                "Back up the database",
                "when migrations are pending: lint them, then back the database up (runbook: Backup database before migration)",
                move || database_migrations::backup_before_migrating(&fresh()?, out, allow_risky),
            );
        }
        plan.action(
            "Apply pending migrations",
            format!(
                "cargo xtask migrate deploy {} (migrations in {dir})",
                env.name
            ),
            move || {
                let opts = database_migrations::DeployOptions {
                    dry_run: false,
                    allow_risky,
                    backup: false,
                    report: false,
                };
                database_migrations::deploy(&fresh()?, out, &opts)
            },
        );
    }
    plan.action(
        "Verify health",
        format!(
            "poll every health check of `{}` (HTTP, containers, database) until all pass, at most {} s",
            env.name,
            wait.as_secs()
        ),
        move || wait_healthy(&fresh()?, out, wait),
    );
    plan.execute(out, args.dry_run)?;
    if args.dry_run {
        return Ok(());
    }

    post_deployment_verification::show_status(&env, out)?;
    // Human lines (on stderr under --json, where the status is the document).
    {
        out.line("");
        for (svc, s) in &env.settings.services {
            if let Some(url) = &s.url {
                out.line(&format!("  {svc:<32} {url}"));
            }
        }
        out.line("");
        out.line(&format!(
            "Deployed `{}`. Logs: cargo xtask logs SERVICE -f --env {}",
            env.name, env.name
        ));
    }
    out.step_summary(&format!("Deployed `{}`", env.name));
    Ok(())
}

fn wait_healthy(env: &Env, out: &Output, wait: Duration) -> Result<()> {
    let checks = health_checks::wait_until_healthy(env, out, wait);
    crate::core::interrupt::check()?;
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        out.detail(&format!("all {} health checks pass", checks.len()));
        return Ok(());
    }
    bail!(
        "after {} s, {failed} of {} health checks still fail:{}\nThe services are up but not healthy. `cargo xtask status {}` shows them; `cargo xtask logs SERVICE` says why.",
        wait.as_secs(),
        checks.len(),
        check::failures(&checks),
        env.name
    )
}
