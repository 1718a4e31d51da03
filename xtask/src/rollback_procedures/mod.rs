//! Rollback Procedures, for operations that did not finish: `recover` starts
//! what an interrupted (even `kill -9`ed) restore or deploy stopped and drops
//! the databases it staged, from the record it wrote before changing
//! anything; `lock status|release` shows and clears the environment's lock;
//! `down` is the runbook's `docker compose down`.

pub mod application;
pub mod maintenance;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::Ops;
use crate::core::report::Report;
use crate::core::steps::Plan;
use crate::core::{incident, intent, lock, session};
use crate::health_checks;

/// Finish or undo an interrupted operation.
///
/// Runbook: Rollback Procedures; Database Rollback.
///
/// A restore or deploy writes what it is about to stop or stage before it
/// does it. After a crash or `kill -9`, this starts the containers it
/// stopped, drops the scratch databases it created (never the live one),
/// then waits for health. Nothing to do when no record is left. A recovery
/// writes an incident record (`cargo xtask incidents ENV`).
#[derive(clap::Args, Debug)]
pub struct RecoverArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, for the incident record a recovery writes (runbook: "Document
    /// incident"); optional.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Stop and remove an environment's containers.
///
/// Runbook: Application Rollback, "Stop current containers": `docker compose
/// down`.
///
/// Takes the environment's lock; a protected environment asks first
/// (`--yes` in CI). `--volumes` also deletes the volumes, the database's
/// data with them: refused unless a backup younger than an hour passed its
/// verification (`cargo xtask backup create ENV` then `backup verify ENV`).
#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Also delete the volumes (the database's data).
    #[arg(long)]
    pub volumes: bool,
    /// Do not ask on a protected environment.
    #[arg(long)]
    pub yes: bool,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn down(ops: &Ops, out: &Output, args: &DownArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let swarm = env.settings.driver == crate::config::Driver::Swarm;
    let compose = if swarm {
        None
    } else {
        Some(session::compose(&env)?)
    };
    if args.volumes && env.settings.database.is_some() {
        let fresh = crate::disaster_recovery::newest_verified_age(&env)
            .ok()
            .flatten();
        if fresh.is_none_or(|age| age >= 3600) {
            return Err(crate::config::config_error(format!(
                "--volumes deletes the database's data, and `{}` has no verified backup younger than an hour{}. \
                 Take one first: `cargo xtask backup create {0}` then `cargo xtask backup verify {0}`. Nothing was changed",
                env.name,
                fresh.map(|a| format!(" (the newest is {} min old)", a / 60)).unwrap_or_default()
            )));
        }
    }
    if env.settings.protected && !args.yes && !args.dry_run {
        crate::core::confirm::by_typing(
            &format!("This stops every container of `{}`.", env.name),
            &env.name,
            &format!(
                "`{}` is protected: `down` stops it. Pass --yes, or run it on a terminal",
                env.name
            ),
        )?;
    }
    let _lock =
        crate::core::lock::unless_dry_run(args.dry_run, &env, out, &format!("down {}", env.name))?;
    let mut words = vec!["down", "--remove-orphans"];
    if args.volumes {
        words.push("--volumes");
    }
    let mut plan: Plan = Plan::new(format!("down {}", env.name));
    match &compose {
        Some(compose) => {
            // Users get a maintenance page while the application stops,
            // until the proxy itself goes.
            let maint = crate::core::maintenance::on_step(
                &mut plan,
                &env,
                out,
                format!("{} is being stopped", env.name),
            );
            plan.command("Stop and remove the containers", compose.cmd(&words), out);
            if let Some(m) = &maint {
                crate::core::maintenance::off_step(&mut plan, &env, out, m);
            }
        }
        None => crate::deployment_procedures::releases::swarm_down_steps(
            &mut plan,
            &env,
            out,
            args.volumes,
        ),
    }
    plan.execute(out, args.dry_run)?;
    if !args.dry_run {
        Report::new(
            serde_json::json!({ "environment": env.name, "down": true, "volumes": args.volumes }),
        )
        .line(format!(
            "`{}` is down{}. `cargo xtask deploy {}` brings it back.",
            env.name,
            if args.volumes {
                ", its volumes deleted"
            } else {
                " (volumes kept)"
            },
            env.name
        ))
        .emit(out);
    }
    Ok(())
}

/// Show or release an environment's lock.
///
/// Runbook: Deployment Procedures: one operation at a time on an environment.
#[derive(clap::Args, Debug)]
pub struct LockArgs {
    #[command(subcommand)]
    pub cmd: LockCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum LockCmd {
    /// Who holds the lock of ENV: on this machine and on its database server.
    Status {
        #[arg(default_value = "development")]
        env: String,
    },
    /// Clear a stale lock (its holder died); --force also ends the database
    /// session holding it. A live holder on this machine is never forced.
    Release {
        env: String,
        #[arg(long)]
        force: bool,
    },
}

pub fn recover(ops: &Ops, out: &Output, args: &RecoverArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let _lock = crate::core::lock::unless_dry_run(args.dry_run, &env, out, "recover")?;
    let Some(pending) = intent::pending(&env) else {
        Report::new(
            serde_json::json!({ "environment": env.name, "recovered": false, "pending": null }),
        )
        .line(format!(
            "Nothing to recover in `{0}`: no interrupted restore, release or drill left a record. \
             An interrupted migration keeps its story in the database: `cargo xtask migrate status {0}`, \
             and `cargo xtask migrate deploy {0}` finishes it.",
            env.name
        ))
        .emit(out);
        return Ok(());
    };
    out.line(&format!(
        "Recovering `{}` from {}.",
        env.name,
        pending.describe()
    ));
    if args.dry_run {
        let mut plan: Plan = Plan::new(format!("recover {}", env.name));
        for db in &pending.scratch_databases {
            plan.action(
                format!("Drop the staged database {db}"),
                format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE) (the live database is untouched)"),
                || Ok(()),
            );
        }
        for c in &pending.stopped {
            plan.action(format!("Start {c}"), format!("docker start {c}"), || Ok(()));
        }
        plan.print(out);
        return Ok(());
    }
    let e = &env;
    let mut plan = Plan::new(format!("recover {}", env.name));
    plan.action(
        "Undo what the interrupted operation left",
        format!("{} (from {})", pending.describe(), intent::path(&env)),
        move || intent::recover(e, out).map(drop),
    );
    if !pending.stopped.is_empty() {
        plan.action(
            "Verify health",
            "poll every health check until all pass, at most 120 s",
            move || {
                let checks = health_checks::wait_until_healthy(e, out, Duration::from_secs(120));
                let failed = checks.iter().filter(|c| !c.ok).count();
                if failed > 0 {
                    bail!(
                        "the stopped services run again, but {failed} health checks fail:{}",
                        crate::core::check::failures(&checks)
                    );
                }
                Ok(())
            },
        );
    }
    let mut incident = incident::Incident::begin("recover", args.reason.as_deref(), false);
    incident.restored = Some(pending.describe());
    incident.data_window = serde_json::json!({
        "note": "recover starts what was stopped and drops staged databases; it changes no data",
    });
    let (result, timings) = plan.execute_timed(out, &mut ());
    incident.steps = timings;
    incident.write(&env, out, &result);
    result?;
    Report::new(
        serde_json::json!({ "environment": env.name, "recovered": true, "pending": pending }),
    )
    .line(format!(
        "Recovered `{}`: every service it stopped runs again.",
        env.name
    ))
    .emit(out);
    Ok(())
}

pub fn lock_cmd(ops: &Ops, out: &Output, args: &LockArgs) -> Result<()> {
    match &args.cmd {
        LockCmd::Status { env } => {
            let env = session::env(ops, out, env)?;
            let (local, stale, target) = lock::status(&env)?;
            let server = lock::server_status(&env);
            let mut r = Report::new(serde_json::json!({
                "environment": env.name, "local": local, "stale": stale, "target": target,
                "server": server, "file": lock::lock_file(&env).as_str(),
            }));
            match (&local, stale, &target) {
                (None, _, None) if server.is_none() => r.line(format!("`{}` is not locked.", env.name)),
                (None, _, None) => r.line(format!("`{}` is not locked on this machine.", env.name)),
                (Some(h), true, _) => r.line(format!(
                    "`{}`: stale lock record of {} (the holder is gone; the next command takes the lock; `cargo xtask recover {}` undoes what it left)",
                    env.name,
                    h.describe(),
                    env.name
                )),
                (Some(h), false, _) => r.line(format!("`{}` is locked on this machine by {}", env.name, h.describe())),
                (None, _, Some(_)) => r.line(format!("`{}` is not locked on this machine.", env.name)),
            };
            if let Some(t) = &target {
                r.line(format!(
                    "`{}` is locked on its database server by {t}",
                    env.name
                ));
            }
            if let Some(s) = &server {
                r.line(format!("`{}` is locked on its server by {s}", env.name));
            }
            r.emit(out);
            Ok(())
        }
        LockCmd::Release { env, force } => {
            let env = session::env(ops, out, env)?;
            if !force {
                let (local, stale, target) = lock::status(&env)?;
                if local.is_some() && !stale || target.is_some() {
                    bail!(
                        "the lock of `{}` is held: see `cargo xtask lock status {}`; --force ends a database session holding it",
                        env.name,
                        env.name
                    );
                }
            }
            let done = lock::force_release(&env)?;
            Report::new(serde_json::json!({ "environment": env.name, "released": done }))
                .line(if done.is_empty() {
                    format!("`{}` was not locked.", env.name)
                } else {
                    format!("`{}`: {}", env.name, done.join("; "))
                })
                .emit(out);
            Ok(())
        }
    }
}
