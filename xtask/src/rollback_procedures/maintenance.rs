//! Maintenance mode by hand (Rollback Procedures, Disaster Recovery):
//! `maintenance on|off ENV`, the proxy answering every request 503 with a
//! page and `Retry-After`. `restore`, `rollback --with-db` and `down` turn
//! it on and off by themselves (`releases::maintenance`).

use anyhow::Result;

use crate::adapters::output::Output;
use crate::config::{config_error, Ops};
use crate::core::proxy as releases;
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// Put an environment's proxy in maintenance mode, or take it out.
///
/// Runbook: Rollback Procedures; Disaster Recovery (users see a page, not
/// connection errors, while the application is down).
///
/// `on`: the release's proxy answers every request, health endpoints
/// included (monitors see it), `503 Service Unavailable` with a small HTML
/// page (the message) and `Retry-After`. HAProxy: a map entry set through
/// its runtime API, no reload; nginx: an included file and a reload. The
/// state is written in the proxy's files too, so a restarted proxy keeps
/// it; `cargo xtask status ENV` shows it. `restore`, `rollback --with-db`
/// and `down` turn it on while they run and off after (also on failure
/// and Ctrl-C), unless it was on before.
#[derive(clap::Args, Debug)]
pub struct MaintenanceArgs {
    /// on or off.
    pub switch: Switch,
    /// Environment from ops.toml (one with a `[release]` proxy, on Compose).
    pub env: String,
    /// The message on the page (on).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "We are working on the site and will be back shortly."
    )]
    pub message: String,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn maintenance(ops: &Ops, out: &Output, args: &MaintenanceArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    if !releases::maintenance_applies(&env) {
        return Err(config_error(format!(
            "`{}` has no proxy to put in maintenance mode: it needs `[environments.{0}.release]` with `proxy`, \
             on Compose (driver = \"compose\")",
            env.name
        )));
    }
    let _lock = crate::core::lock::unless_dry_run(
        args.dry_run,
        &env,
        out,
        &format!("maintenance {:?} {}", args.switch, env.name),
    )?;
    let on = args.switch == Switch::On;
    let mut plan: Plan = Plan::new(format!(
        "maintenance {} {}",
        if on { "on" } else { "off" },
        env.name
    ));
    let (e, message) = (&env, args.message.as_str());
    if on {
        plan.action(
            "Turn maintenance mode on",
            format!(
                "the proxy answers every request 503 with a page (\"{message}\") and Retry-After: {} s, health endpoints too",
                releases::RETRY_AFTER
            ),
            move || releases::set_maintenance(e, Some(message)),
        );
    } else {
        plan.action(
            "Turn maintenance mode off",
            "the proxy serves the application again",
            move || releases::set_maintenance(e, None),
        );
    }
    plan.execute(out, args.dry_run)?;
    if !args.dry_run {
        Report::new(serde_json::json!({
            "environment": env.name,
            "maintenance": on,
            "message": on.then_some(message),
        }))
        .line(if on {
            format!(
                "`{}` is in maintenance mode: every request gets 503 and the page. `cargo xtask maintenance off {}` ends it.",
                env.name, env.name
            )
        } else {
            format!("`{}` serves again (maintenance mode off).", env.name)
        })
        .emit(out);
    }
    Ok(())
}
