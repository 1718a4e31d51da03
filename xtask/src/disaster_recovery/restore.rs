//! Database Rollback ("Backup restoration") and Migration Rollback ("If
//! migration fails"): `restore` into a new database, swapped in when
//! complete, with the application stopped around it.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::adapters::postgres;
use crate::config::{config_error, Ops};
use crate::core::files::random_hex;
use crate::core::intent;
use crate::core::maintenance;
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;
use crate::health_checks;

use super::manifest::Backup;
use super::pg_tools::{create_like, drop_database, ident, Target};
use super::RestoreArgs;

/// What the restore's steps share, and what its undos need.
#[derive(Default)]
pub(super) struct RestoreState {
    /// Containers this restore stopped (started again by the undo or the
    /// "Start the application" step).
    pub(super) stopped: Vec<String>,
    pub(super) safety: Option<Backup>,
    /// The new database exists under its staging name.
    pub(super) staged: bool,
    pub(super) swapped: bool,
    pub(super) record: Option<intent::Record>,
}

impl RestoreState {
    fn note(&mut self, f: impl FnOnce(&mut intent::Record) -> Result<()>) -> Result<()> {
        match self.record.as_mut() {
            Some(r) => f(r),
            None => Ok(()),
        }
    }
}

pub fn restore(ops: &Ops, out: &Output, args: &RestoreArgs) -> Result<()> {
    if args.to_time.is_some() || args.to_latest {
        return super::pitr::restore(ops, out, args);
    }
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    let backup = t.resolve(args.backup.as_deref().unwrap_or("latest"))?;
    // Everything that can be checked without changing anything, before the
    // first change: the backup's checksum, its environment, its last
    // verification, the database server and the credentials.
    t.check_checksum(&backup).context(
        "refusing to restore: the backup does not match its manifest; nothing was changed",
    )?;
    let m = backup.manifest()?.clone();
    if (m.environment != env.name || m.database != t.database) && !args.from_other_environment {
        return Err(config_error(format!(
            "refusing to restore: {} is a backup of database `{}` of environment `{}`, not of `{}` of `{}`. \
             If that is really what you want (e.g. seeding staging from production), pass --from-other-environment. \
             Nothing was changed",
            backup.name, m.database, m.environment, t.database, env.name
        )));
    }
    if m.verified() == Some(false) && !args.force_unverified {
        return Err(config_error(format!(
            "refusing to restore: the last verification of {} FAILED. Pick another backup (`cargo xtask backup list {}`), \
             verify this one again (`cargo xtask backup verify {} {}`), or pass --force-unverified. Nothing was changed",
            backup.name, env.name, env.name, backup.name
        )));
    }
    if !args.dry_run {
        for db in [t.settings.maintenance_db.as_str(), t.database.as_str()] {
            t.connect(db)
                .and_then(|mut c| c.batch_execute("SELECT 1").context("running SELECT 1"))
                .context("refusing to restore before stopping anything: the database server must accept mre-ops's credentials; nothing was changed")?;
        }
    }
    out.line(&format!(
        "Backup chosen: {} ({} of `{}`, taken {}, reason: {}, verified: {})",
        backup.name,
        m.database,
        m.environment,
        m.started_at,
        m.reason,
        match m.verified() {
            Some(true) => "yes",
            Some(false) => "FAILED",
            None => "not yet",
        }
    ));
    let reason = match args.dry_run {
        true => args.reason.clone(),
        false => {
            confirm(&t, &backup, args.yes)?;
            super::incidents::reason(&env, args.reason.as_deref(), args.yes)?
        }
    };
    // One operation at a time on the environment; what an interrupted one
    // left is undone first.
    let _lock = crate::core::lock::unless_dry_run(
        args.dry_run,
        &env,
        out,
        &format!("restore {}", env.name),
    )?;
    if !args.dry_run {
        if let Some(i) = intent::recover(&env, out)? {
            out.line(&format!("Recovered {} first.", i.describe()));
        }
        // Under the lock no other restore runs: a staged database nobody is
        // connected to is an interrupted run's, whatever its record says.
        for l in t.leftovers().unwrap_or_default() {
            if l.kind == "restore-staging" && l.sessions == 0 {
                drop_database(&t, &l.name)?;
                out.line(&format!(
                    "Dropped {}, left by an interrupted restore.",
                    l.name
                ));
            }
        }
    }
    let wait = Duration::from_secs(args.wait.unwrap_or(env.settings.deploy.wait_secs));
    // Behind a release's proxy, the proxy keeps running in maintenance
    // mode (a 503 page, not connection errors) while the rest stops.
    let proxy = crate::core::proxy::proxy_container_of(&env);
    let app: Vec<String> = env
        .settings
        .services
        .values()
        .filter_map(|s| s.container.clone())
        .filter(|c| Some(c) != proxy.as_ref())
        .collect();
    let live = t.database.clone();
    let new_db = format!("{live}__mre_restore_{}", random_hex(4)?);
    // When, for `backup prune` (newest first by name), and a random tail:
    // two restores in one second must not pick the same name.
    let replaced = format!(
        "{live}__mre_replaced_{}{}",
        Utc::now().compact(),
        random_hex(2)?
    );
    let (t, app, live, new_db, replaced, backup) = (&t, &app, &live, &new_db, &replaced, &backup);

    let mut plan: Plan<RestoreState> =
        Plan::new(format!("restore {} from {}", env.name, backup.name));
    let maint = maintenance::on_step(
        &mut plan,
        &env,
        out,
        format!("the database of {} is being restored", env.name),
    );
    plan.step(
        "Stop the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!(
                "$ docker stop {}   (those running; through the Engine API)",
                app.join(" ")
            )
        },
        move |st: &mut RestoreState| {
            if app.is_empty() {
                return Ok(());
            }
            let docker = t.docker()?;
            for c in app {
                let running = docker.container(c)?.is_some_and(|c| c.state == "running");
                if running {
                    // Written down before it happens: a kill -9 from here on
                    // is recovered by the next command.
                    st.note(|r| r.stopping(c))?;
                    st.stopped.push(c.clone());
                    docker.stop_container(c, 10)?;
                    out.detail(&format!("stopped {c}"));
                }
            }
            Ok(())
        },
    )
    .undo(
        "start the containers this restore stopped",
        move |st: &mut RestoreState| start_again(t, st),
    );
    plan.step(
        "Take a safety backup while restoring into a new database",
        format!(
            "cargo xtask backup create {}   (into {}; with the application stopped, it holds every write)\n       \
             and meanwhile: CREATE DATABASE {new_db}; {}",
            env.name,
            t.folder,
            t.show_restore(backup, new_db)
        ),
        move |st: &mut RestoreState| {
            st.note(|r| r.creating_database(new_db))?;
            let mut admin = t.connect(&t.settings.maintenance_db)?;
            create_like(&mut admin, new_db, live, out)?;
            st.staged = true;
            // The two touch different databases: they overlap. The safety
            // backup runs on its own connection and engine client (a Target
            // is not shared across threads), quietly; its path is printed.
            let reason = format!("safety before restoring {}", backup.name);
            let (env, method) = (t.env, t.method);
            let (safety, restored) = std::thread::scope(|s| {
                let safety = s.spawn(move || {
                    let quiet = Output::new(false, true, 0);
                    Target::new(env, Some(method))?.create(&quiet, &reason)
                });
                let restored = interruptible(t, new_db, || t.restore_into(backup, new_db));
                (safety.join().expect("safety backup thread"), restored)
            });
            let b = safety.context("the safety backup failed: nothing was swapped")?;
            out.line(&format!("Safety backup: {}", b.path));
            st.safety = Some(b);
            restored
        },
    )
    .undo(
        format!("DROP DATABASE {new_db} (the live database is untouched)"),
        move |st: &mut RestoreState| {
            if st.swapped {
                return Ok(());
            }
            drop_database(t, new_db)?;
            st.staged = false;
            st.note(|r| r.database_done(new_db))
        },
    );
    plan.step(
        "Verify data integrity",
        format!("per-table row counts of {new_db} against the manifest"),
        move |_| t.check_counts(backup, new_db).map(drop),
    );
    plan.step(
        "Swap it in",
        format!(
            "terminate connections to {live}; BEGIN; ALTER DATABASE {live} RENAME TO {replaced}; \
             ALTER DATABASE {new_db} RENAME TO {live}; COMMIT (the replaced one is kept as {replaced})"
        ),
        move |st: &mut RestoreState| {
            swap(t, live, new_db, replaced)?;
            st.swapped = true;
            st.staged = false;
            // Kept, not dropped: a client that wrote after the safety backup
            // (anything not stopped above) has its writes only there.
            st.note(|r| r.database_done(new_db))
        },
    )
    .undo(
        format!("swap back: {live} → {new_db}, {replaced} → {live} (what was there before, untouched)"),
        move |st: &mut RestoreState| {
            if !st.swapped {
                return Ok(());
            }
            st.note(|r| r.creating_database(new_db))?;
            swap(t, live, replaced, new_db)?;
            st.swapped = false;
            st.staged = true;
            Ok(())
        },
    );
    plan.step(
        "Start the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!("$ docker start {}   (those stopped above)", app.join(" "))
        },
        move |st: &mut RestoreState| start_again(t, st),
    );
    if let Some(m) = &maint {
        maintenance::off_step(&mut plan, &env, out, m);
    }
    let e = &env;
    plan.step(
        "Verify functionality (health checks)",
        format!(
            "every health check of `{}`, at most {} s",
            env.name,
            wait.as_secs()
        ),
        move |_| {
            // Maintenance mode still on (an operator's, or `rollback
            // --with-db`'s around this restore): the services reached
            // through the proxy answer its page; whoever turned it on
            // checks them once it is off.
            let behind: Vec<String> =
                match (proxy.as_ref(), crate::core::proxy::maintenance_state(e)?) {
                    (Some(p), Some(_)) => e
                        .settings
                        .services
                        .iter()
                        .filter(|(_, s)| s.container.as_ref() == Some(p))
                        .map(|(name, _)| name.clone())
                        .collect(),
                    _ => Vec::new(),
                };
            if !behind.is_empty() {
                out.line(&format!(
                    "Maintenance mode stays on: {} answer(s) its page, not checked here",
                    behind.join(", ")
                ));
            }
            let checks = health_checks::wait_until_healthy_without(e, out, wait, &behind);
            crate::core::interrupt::check()?;
            if checks.iter().any(|c| !c.ok) {
                bail!(
                    "health checks fail after the restore:{}",
                    crate::core::check::failures(&checks)
                );
            }
            Ok(())
        },
    );

    if args.dry_run {
        plan.print(out);
        return Ok(());
    }
    let mut state = RestoreState {
        record: Some(intent::Record::begin(
            &env,
            &format!("restore {}", env.name),
        )?),
        ..RestoreState::default()
    };
    let incident = crate::core::incident::Incident::begin(
        args.via.as_deref().unwrap_or("restore"),
        reason.as_deref(),
        args.yes,
    );
    let (result, timings) = plan.execute_timed(out, &mut state);
    super::incidents::record_restore(
        &env,
        out,
        super::incidents::RestoreRun {
            incident,
            backup,
            manifest: &m,
            safety: state.safety.as_ref(),
            replaced,
            swapped: state.swapped,
            timings,
        },
        &result,
    );
    let settled = state.stopped.is_empty() && !state.staged;
    if settled {
        if let Some(r) = state.record.take() {
            r.finish()?;
        }
    }
    let safety_name = state.safety.as_ref().map(|b| b.name.clone());
    if let Err(e) = result {
        let db_state = if state.swapped {
            format!(
                "The database `{live}` holds backup {} but a later step failed and could not be undone. To undo: cargo xtask restore {} {} --yes",
                backup.name,
                env.name,
                safety_name.as_deref().unwrap_or("(no safety backup)")
            )
        } else {
            format!("The database `{live}` was not changed: it holds what it held before.")
        };
        let app_state = if settled {
            " The application runs as before.".to_string()
        } else {
            format!(
                " Some of what it stopped or staged is left ({}): `cargo xtask recover {}` finishes it.",
                intent::path(&env),
                env.name
            )
        };
        return Err(e.context(format!(
            "restore of `{}` failed. {db_state}{app_state}",
            env.name
        )));
    }
    let safety_name = safety_name.unwrap_or_default();
    let kept = t
        .leftovers()
        .map(|l| l.iter().filter(|d| d.kind == "replaced").count())
        .unwrap_or(0);
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "restored": backup.name, "path": backup.path.as_str(),
        "point_in_time": m.started_at, "safety_backup": safety_name,
        "undo": format!("cargo xtask restore {} {} --yes", env.name, safety_name),
        "replaced_database": replaced, "replaced_databases_kept": kept,
    }));
    r.line(format!("Restored `{}` from {}.", env.name, backup.path))
        .line(format!("The data now reflects {} (when that backup's snapshot was taken).", m.started_at))
        .line(format!(
            "Safety backup of what was there before: {safety_name}. To undo: cargo xtask restore {} {safety_name}",
            env.name
        ))
        .line(format!(
            "The replaced database is kept as `{replaced}` (with any write made after the safety backup by a client \
             mre-ops did not stop). {kept} replaced database(s) are kept now; `cargo xtask backup prune {}` keeps the \
             newest {} (backups.keep_replaced).",
            env.name, t.settings.keep_replaced
        ))
        .summary(format!(
            "Restored `{}` from `{}` (data as of {}); safety backup `{safety_name}`",
            env.name, backup.name, m.started_at
        ));
    r.emit(out);
    Ok(())
}

/// Run `f` (a pg_restore into `db`); on SIGINT/SIGTERM, end the sessions
/// restoring into `db` so that `f` returns at once, and report the signal.
fn interruptible(t: &Target, db: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let (config, maintenance) = (t.config.clone(), t.settings.maintenance_db.clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if crate::core::interrupt::pending().is_some() {
                    if let Ok(mut client) = postgres::connect_config(
                        &config,
                        &maintenance,
                        "mre-ops interrupt",
                        Duration::from_secs(5),
                    ) {
                        let _ = client.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                            &[&db],
                        );
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = f();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        crate::core::interrupt::check()?;
        r
    })
}

/// Start what this restore stopped, and say so in its record.
pub(super) fn start_again(t: &Target, st: &mut RestoreState) -> Result<()> {
    if st.stopped.is_empty() {
        return Ok(());
    }
    let docker = t.docker()?;
    for c in std::mem::take(&mut st.stopped) {
        docker.start_container(&c)?;
        st.note(|r| r.started(&c))?;
    }
    Ok(())
}

/// Rename the live database away and the restored one in, in one
/// transaction: it either happens whole or not at all.
pub(super) fn swap(t: &Target, live: &str, new_db: &str, replaced: &str) -> Result<()> {
    let mut admin = t.connect(&t.settings.maintenance_db)?;
    let mut last = None;
    for _ in 0..5 {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&live],
            )
            .context("closing the connections to the live database")?;
        let sql = format!(
            "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
            ident(live),
            ident(replaced),
            ident(new_db),
            ident(live)
        );
        match admin.batch_execute(&sql) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = admin.batch_execute("ROLLBACK");
                last = Some(e);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    Err(last.expect("tried")).context(format!(
        "swapping the restored database in for `{live}` (something keeps connecting to it?)"
    ))
}

/// A protected environment's database is replaced only when asked: `--yes`,
/// or its name typed on a terminal.
pub(super) fn confirm(t: &Target, backup: &Backup, yes: bool) -> Result<()> {
    if !t.env.settings.protected || yes {
        return Ok(());
    }
    crate::core::confirm::by_typing(
        &format!(
            "`{}` is protected. This replaces database `{}` with backup {} (a safety backup is taken first).",
            t.env.name, t.database, backup.name
        ),
        &t.database,
        &format!(
            "`{}` is protected: restoring replaces its database `{}` with {}. \
             Pass --yes to confirm (in CI), or run this on a terminal to confirm by typing the database name",
            t.env.name, t.database, backup.name
        ),
    )
}
