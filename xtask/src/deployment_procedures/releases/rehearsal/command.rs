//! `cargo xtask rehearse ENV`: deploy's rehearsal on its own.

use anyhow::Result;

use super::super::plan::{self, RelState};
use super::super::{build_steps, observe, settings, targets, version};
use super::{Candidate, Waivers};
use crate::adapters::output::Output;
use crate::config::{config_error, Driver, Ops};
use crate::core::journal;
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;

/// Rehearse a release on a copy of the data, changing nothing live.
///
/// Rehearse a release on a copy of the data (runbook: Database Migration
/// Procedures, "Test migrations on staging first"; Application Rollback):
/// build and push its images, back the database up and verify the backup
/// by restoring it into a scratch database, apply the pending migrations to
/// that copy (timed, with the locks each holds), check that no row is lost
/// and `[migrations] checks` hold, then start the new release and the live
/// one against the migrated copy (no published port) and run the health
/// check and smoke tests on each: the proof that `rollback` will work.
/// Everything it started is removed afterwards. `deploy` runs the same
/// rehearsal as a step.
#[derive(clap::Args, Debug)]
pub struct RehearseArgs {
    pub env: String,
    /// The version to rehearse (default: the git commit of the checkout).
    #[arg(long, value_name = "VERSION")]
    pub tag: Option<String>,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn command(ops: &Ops, out: &Output, args: &RehearseArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let env = &env;
    let rel = settings(env)?;
    if env.settings.driver == Driver::Swarm {
        return Err(config_error(format!(
            "`{}` runs on a swarm: rehearsals run on Compose environments only so far",
            env.name
        )));
    }
    if env.settings.backups.is_none() {
        return Err(config_error(format!(
            "a rehearsal runs on a verified backup of `{}`, which has no [environments.{}.backups] in ops.toml (docs/ops-toml.md)",
            env.name, env.name
        )));
    }
    let version = match args.tag.as_deref() {
        Some(v) if version::valid_tag(v) => v.to_string(),
        Some(v) => {
            return Err(config_error(format!(
                "--tag `{v}` is not a valid image tag"
            )))
        }
        None => version::of_checkout(&ops.dir)?.name,
    };
    let (_, entries) = observe(env, rel, args.dry_run)?;
    let v: &str = &version;
    let mut plan: Plan<RelState> = Plan::new(format!("rehearse {v} on a copy of `{}`", env.name));
    build_steps(&mut plan, env, rel, out, &ops.dir, v, "Pre-build");
    let live = journal::current(&entries).map(|e| Candidate {
        role: "live",
        version: e.version.clone(),
        images: e.images.clone(),
    });
    let new = Candidate {
        role: "new",
        version: v.to_string(),
        images: targets(rel, v),
    };
    // Under the environment's lock: a deploy meanwhile would change what
    // is live, and its rehearsal's containers are labelled as this one's.
    plan::lock_step(&mut plan, env, out, "rehearsal");
    super::step(
        &mut plan,
        env,
        rel,
        out,
        new,
        live,
        false,
        Waivers::default(),
    );
    if args.dry_run {
        plan.print(out);
        return Ok(());
    }
    let mut state = RelState::default();
    let (result, timings) = plan.execute_timed(out, &mut state);
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "version": v, "ok": result.is_ok(),
        "rehearsal": state.rehearsal, "steps": timings,
    }));
    r.line(format!(
        "Rehearsal of {v} on a copy of `{}`: {}",
        env.name,
        if result.is_ok() { "passed" } else { "FAILED" }
    ));
    r.emit(out);
    result
}
