//! Rollback Procedures, Application Rollback: `rollback` to the previous
//! release (the kept colour, in seconds), another kept one (`--to`), a
//! rebuild of an older commit (`--rebuild`, the runbook's git checkout +
//! rebuild), with the database restored first when asked (`--with-db`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Env, Ops};
use crate::core::journal;
use crate::core::maintenance;
use crate::core::session;
use crate::core::steps::Plan;
use crate::deployment_procedures::releases::plan::{self, RelState};
use crate::deployment_procedures::releases::{
    build_steps, confirm, finish, observe, settings, swarm, targets,
};

/// Roll the application back to an earlier release.
///
/// Roll the application back (runbook: Rollback Procedures, Application
/// Rollback "Using Container Registry"; Database Rollback with --with-db).
///
/// Default: the release before the live one, from the journal. The kept
/// colour's container is started and the proxy pointed back at it (seconds);
/// when it is gone, its image is pulled by tag. `--rebuild REV` is the
/// runbook's "git checkout + rebuild" path: build REV's images, push, cut over.
/// On a swarm (`driver = "swarm"`), every service of the stack goes back to
/// that release's images, pinned by digest, in one `docker stack deploy`.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    pub env: String,
    /// The version to return to (default: the previous release).
    #[arg(long, value_name = "VERSION", conflicts_with = "rebuild")]
    pub to: Option<String>,
    /// Build this git revision's images and release them (the runbook's
    /// `git checkout [previous-commit]` + rebuild).
    #[arg(long, value_name = "REV")]
    pub rebuild: Option<String>,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on a protected environment.
    #[arg(long)]
    pub yes: bool,
    /// Also restore the database (runbook: Database Rollback): `pre-deploy`
    /// (the backup the live release took before its migrations, named in
    /// the journal) or a backup's name or path. Restored before the code
    /// goes back, through `cargo xtask restore`'s guarded steps.
    #[arg(long, value_name = "BACKUP|pre-deploy")]
    pub with_db: Option<String>,
    /// Roll the code back even when the journal cannot show that the
    /// release runs on the schema the database has now (no release or
    /// rehearsal ran it there, or a rehearsal saw it fail).
    #[arg(long)]
    pub force: bool,
    /// Why, for the incident record `--with-db` writes; on a protected
    /// environment it is asked for on the terminal unless given or --yes.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

pub fn rollback(ops: &Ops, out: &Output, args: &RollbackArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let env: &Env = &env;
    let rel = settings(env)?;
    let (live, entries) = observe(env, rel, args.dry_run)?;
    let current = journal::current(&entries).map(|e| e.version.clone());
    let (version, targets, build_root): (
        String,
        BTreeMap<String, String>,
        Option<camino::Utf8PathBuf>,
    ) = if let Some(rev) = &args.rebuild {
        let sha = crate::adapters::process::Command::new(
            "git",
            ["rev-parse", "--short=12", &format!("{rev}^{{commit}}")],
        )
        .dir(&ops.dir)
        .read()
        .map_err(|e| {
            config_error(format!(
                "`{rev}` is not a commit of the checkout at {}: {e:#}",
                ops.dir
            ))
        })?;
        let v = sha.trim().to_string();
        let root =
            camino::Utf8PathBuf::from(format!("/tmp/mre-ops-rebuild-{}-{v}", std::process::id()));
        (v.clone(), targets(rel, &v), Some(root))
    } else {
        let target = match &args.to {
            Some(v) => entries
                .iter()
                .rev()
                .find(|e| &e.version == v && e.result == "success")
                .with_context(|| format!("{v} was never released successfully to `{}`: `cargo xtask releases {}` lists them", env.name, env.name))
                .map_err(|e| config_error(format!("{e:#}")))?,
            None => journal::previous(&entries).ok_or_else(|| {
                config_error(format!(
                    "`{}` has no previous release in its journal to roll back to (`cargo xtask releases {}`); use --rebuild REV",
                    env.name, env.name
                ))
            })?,
        };
        (target.version.clone(), target.images.clone(), None)
    };
    if current.as_deref() == Some(version.as_str()) {
        return Err(config_error(format!(
            "{version} is already the live release of `{}`",
            env.name
        )));
    }
    if !args.dry_run {
        if env.settings.driver == crate::config::Driver::Swarm {
            swarm::check_manager(env)?;
        }
        if args.with_db.is_none() {
            check_schema(env, out, &entries, &version, args.force)?;
        }
        confirm(env, &format!("Roll back to {version}"), args.yes)?;
    }
    let reason = match (&args.with_db, args.dry_run) {
        (Some(_), false) => {
            crate::disaster_recovery::reason(env, args.reason.as_deref(), args.yes)?
        }
        _ => args.reason.clone(),
    };
    let reason = reason.as_deref();
    let v: &str = &version;
    // ops.toml's folder inside the checkout (it may sit below the top level).
    let ctx_root = match &build_root {
        Some(root) => {
            let prefix =
                crate::adapters::process::Command::new("git", ["rev-parse", "--show-prefix"])
                    .dir(&ops.dir)
                    .read()?;
            Some(root.join(prefix.trim()))
        }
        None => None,
    };
    let mut plan: Plan<RelState> = Plan::new(format!("rollback {} to {v}", env.name));
    if let (Some(rev), Some(root), Some(ctx_root)) = (&args.rebuild, &build_root, &ctx_root) {
        plan.command(
            format!("Check out {rev}"),
            crate::adapters::process::Command::new(
                "git",
                ["worktree", "add", "--detach", root.as_str(), rev],
            )
            .dir(&ops.dir),
            out,
        );
        let r2 = root.clone();
        let dir = ops.dir.clone();
        plan.undo(format!("git worktree remove --force {root}"), move |_| {
            crate::adapters::process::Command::new(
                "git",
                ["worktree", "remove", "--force", r2.as_str()],
            )
            .dir(&dir)
            .read()
            .map(drop)
        });
        // The checkout's own pre-build steps (the demo stages its binary),
        // then its images: what `git checkout` + `docker compose build` does.
        build_steps(
            &mut plan,
            env,
            rel,
            out,
            ctx_root,
            v,
            &format!("Pre-build at {rev}"),
        );
    }
    // Database Rollback first: the older code must not meet the newer schema.
    let db_backup = match args.with_db.as_deref() {
        Some("pre-deploy") => Some(
            journal::current(&entries)
                .and_then(|e| e.backup.clone())
                .ok_or_else(|| {
                    config_error(format!(
                        "--with-db pre-deploy: the live release of `{}` took no backup before its migrations (only protected environments do); name a backup instead (`cargo xtask backup list {}`)",
                        env.name, env.name
                    ))
                })?,
        ),
        Some(b) => Some(b.to_string()),
        None => None,
    };
    if env.settings.driver == crate::config::Driver::Swarm {
        let (cur, imgs) = (current.clone(), targets.clone());
        swarm::steps(
            &mut plan,
            env,
            rel,
            out,
            targets.clone(),
            v,
            None,
            move |p| {
                plan::journal_step(p, env, out, "rollback", v, cur, imgs);
                restore_step(p, ops, env, rel, out, db_backup, v, reason);
            },
        );
    } else {
        plan::begin_base(&mut plan, env, rel, out, v);
        plan::journal_step(
            &mut plan,
            env,
            out,
            "rollback",
            v,
            current.clone(),
            targets.clone(),
        );
        // Users get a maintenance page while the database goes back, until
        // the older code serves (then the post-deploy checks run through
        // the proxy).
        let maint = db_backup.as_ref().and_then(|_| {
            maintenance::on_step(
                &mut plan,
                env,
                out,
                format!("rolling {} back to {v}", env.name),
            )
        });
        restore_step(&mut plan, ops, env, rel, out, db_backup, v, reason);
        plan::cutover_steps(
            &mut plan,
            env,
            rel,
            out,
            &targets,
            &live,
            false,
            maint.as_ref(),
            None,
        );
    }
    if args.dry_run {
        plan.print(out);
        return Ok(());
    }
    let mut state = RelState::default();
    let (result, timings) = plan.execute_timed(out, &mut state);
    if let Some(root) = &build_root {
        let _ = crate::adapters::process::Command::new(
            "git",
            ["worktree", "remove", "--force", root.as_str()],
        )
        .dir(&ops.dir)
        .read();
    }
    finish(
        env,
        rel,
        out,
        "rollback",
        v,
        current.as_deref(),
        state,
        result,
        timings,
    )
}

/// Code only goes back to a release proven on the schema the database has
/// now: released on it, or started on it by a rehearsal that passed. Else
/// refuse, naming the data `--with-db pre-deploy` would lose.
fn check_schema(
    env: &Env,
    out: &Output,
    entries: &[journal::Entry],
    version: &str,
    force: bool,
) -> Result<()> {
    let Some(schema) = crate::database_migrations::fingerprint(env)? else {
        return Ok(());
    };
    let why = match journal::proof(entries, version, &schema) {
        journal::Proof::Proven(how) => {
            out.line(&format!(
                "{version} is proven on the current schema {schema}: {how}."
            ));
            return Ok(());
        }
        journal::Proof::Fails(why) => why,
        journal::Proof::Unknown => format!(
            "no release or rehearsal ran {version} on the schema the database has now ({schema})"
        ),
    };
    if force {
        out.warn(&format!("rolling back to {version} with --force: {why}"));
        return Ok(());
    }
    Err(config_error(format!(
        "{version} is not proven to run on the current schema of `{}`: {why}. Nothing was changed. Options:\n\
         - `--with-db pre-deploy`: restore the backup taken before the live release's migrations too{}\n\
         - `--force`: roll the code back anyway onto the newer schema",
        env.name,
        at_stake(env, entries)
    )))
}

/// What `--with-db pre-deploy` would lose: rows written since that backup
/// per table, and its age.
fn at_stake(env: &Env, entries: &[journal::Entry]) -> String {
    let Some(backup) = journal::current(entries).and_then(|e| e.backup.clone()) else {
        return " (the live release took no backup: name one, `cargo xtask backup list`)".into();
    };
    let Ok((then, taken, age)) = crate::disaster_recovery::backup_counts(env, &backup) else {
        return format!(" ({backup})");
    };
    let now = crate::disaster_recovery::table_counts(env, None).unwrap_or_default();
    let mut lost: Vec<String> = now
        .iter()
        .filter_map(|(t, n)| {
            let before = then.get(t).copied().unwrap_or(0);
            (*n != before).then(|| format!("{t} {:+}", n - before))
        })
        .collect();
    if lost.is_empty() {
        lost.push("no table's row count changed".into());
    }
    format!(
        "; it was taken {taken} ({} min ago), and restoring it loses what was written since: {}",
        age / 60,
        lost.join(", ")
    )
}

/// Database Rollback first, when asked: the older code must not meet the
/// newer schema. `restore`'s guarded steps, under this plan's lock; its
/// incident record names this rollback.
#[allow(clippy::too_many_arguments)]
fn restore_step<'a>(
    plan: &mut Plan<'a, RelState>,
    ops: &'a Ops,
    env: &'a Env,
    rel: &'a crate::config::ReleaseSettings,
    out: &'a Output,
    db_backup: Option<String>,
    version: &str,
    reason: Option<&str>,
) {
    let Some(b) = db_backup else { return };
    let restore_args = crate::disaster_recovery::RestoreArgs {
        reason: reason.map(str::to_string),
        via: Some(format!("rollback --with-db to {version}")),
        env: env.name.clone(),
        backup: Some(b.clone()),
        to_time: None,
        to_latest: false,
        yes: true,
        from_other_environment: false,
        force_unverified: false,
        dry_run: false,
        wait: Some(rel.health_timeout_secs),
    };
    plan.action(
        "Restore the database",
        format!("cargo xtask restore {} {b} --yes   (its checks, safety backup, swap and undos; under this lock)", env.name),
        move || crate::disaster_recovery::restore(ops, out, &restore_args),
    );
}
