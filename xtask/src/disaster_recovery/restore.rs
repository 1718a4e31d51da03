//! Database Rollback ("Backup restoration") and Migration Rollback ("If
//! migration fails"): `restore` into a new database, swapped in when
//! complete, with the application stopped around it.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::config::{config_error, Ops};
use crate::core::files::random_hex;
use crate::core::session;
use crate::core::steps::Plan;
use crate::health_checks;

// Siblings: the module's parts share their items (pub(super)).
#[allow(unused_imports)]
use super::*;

pub fn restore(ops: &Ops, out: &Output, args: &RestoreArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    let backup = t.resolve(&args.backup)?;
    // Refuse a damaged backup before anything else happens.
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
    if !args.dry_run {
        confirm(&t, &backup, args.yes)?;
    }
    let wait = Duration::from_secs(args.wait.unwrap_or(env.settings.deploy.wait_secs));
    let app: Vec<String> = env
        .settings
        .services
        .values()
        .filter_map(|s| s.container.clone())
        .collect();
    let live = t.database.clone();
    let new_db = format!("{live}__mre_restore_{}", random_hex(4)?);
    let replaced = format!("{live}__mre_replaced_{}", Utc::now().compact());

    let stopped: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let safety: RefCell<Option<Backup>> = RefCell::new(None);
    let staged: RefCell<Option<Scratch>> = RefCell::new(None);
    let swapped = Cell::new(false);

    let mut plan = Plan::new(format!("restore {} from {}", env.name, backup.name));
    plan.action(
        "Stop the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!(
                "$ docker stop {}   (those running; through the Engine API)",
                app.join(" ")
            )
        },
        || {
            if app.is_empty() {
                return Ok(());
            }
            let docker = t.docker()?;
            for c in &app {
                let running = docker.container(c)?.is_some_and(|c| c.state == "running");
                if running {
                    docker.stop_container(c, 10)?;
                    stopped.borrow_mut().push(c.clone());
                    out.detail(&format!("stopped {c}"));
                }
            }
            Ok(())
        },
    );
    plan.action(
        "Take a safety backup",
        format!(
            "cargo xtask backup create {}   (into {}; with the application stopped, it holds every write)",
            env.name, t.folder
        ),
        || {
            let b = t.create(out, &format!("safety before restoring {}", backup.name))?;
            out.line(&format!("Safety backup: {}", b.path));
            *safety.borrow_mut() = Some(b);
            Ok(())
        },
    );
    plan.action(
        "Restore into a new database",
        format!(
            "CREATE DATABASE {new_db}; {}",
            t.show_restore(&backup, &new_db)
        ),
        || {
            let mut admin = t.connect(&t.settings.maintenance_db)?;
            create_like(&mut admin, &new_db, &live, out)?;
            *staged.borrow_mut() = Some(Scratch {
                target: &t,
                name: new_db.clone(),
                keep: Cell::new(false),
            });
            t.restore_into(&backup, &new_db)
        },
    );
    plan.action(
        "Verify data integrity",
        format!("per-table row counts of {new_db} against the manifest"),
        || t.check_counts(&backup, &new_db).map(drop),
    );
    plan.action(
        "Swap it in",
        format!(
            "terminate connections to {live}; BEGIN; ALTER DATABASE {live} RENAME TO {replaced}; \
             ALTER DATABASE {new_db} RENAME TO {live}; COMMIT (the replaced one is kept as {replaced})"
        ),
        || {
            swap(&t, &live, &new_db, &replaced)?;
            if let Some(s) = staged.borrow().as_ref() {
                s.keep.set(true);
            }
            swapped.set(true);
            // Kept, not dropped: a client that wrote after the safety backup
            // (anything not stopped above) has its writes only there.
            Ok(())
        },
    );
    plan.action(
        "Start the application",
        if app.is_empty() {
            "no application containers in ops.toml".to_string()
        } else {
            format!("$ docker start {}   (those stopped above)", app.join(" "))
        },
        || start_again(&t, &stopped),
    );
    plan.action(
        "Verify functionality (health checks)",
        format!(
            "every health check of `{}`, at most {} s",
            env.name,
            wait.as_secs()
        ),
        || {
            let checks = health_checks::wait_until_healthy(&env, out, wait);
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            if !failed.is_empty() {
                bail!(
                    "health checks fail after the restore: {}",
                    failed.join("; ")
                );
            }
            Ok(())
        },
    );

    let result = plan.execute(out, args.dry_run);
    if args.dry_run {
        return result;
    }
    let safety_name = safety.borrow().as_ref().map(|b| b.name.clone());
    if let Err(e) = result {
        // Nothing half-done: drop the staged copy, start what was stopped.
        drop(staged.borrow_mut().take());
        let restarted = start_again(&t, &stopped);
        let state = if swapped.get() {
            format!(
                "The database `{live}` now holds backup {} but a later step failed. To undo: cargo xtask restore {} {} --yes",
                backup.name,
                env.name,
                safety_name.as_deref().unwrap_or("(no safety backup)")
            )
        } else {
            format!("The database `{live}` was not changed: it holds what it held before.")
        };
        let app_state = match restarted {
            Ok(()) if stopped.borrow().is_empty() => String::new(),
            Ok(()) => " The application was started again.".to_string(),
            Err(e) => format!(
                " Starting the application again failed too ({e:#}): `cargo xtask deploy {}`.",
                env.name
            ),
        };
        return Err(e.context(format!(
            "restore of `{}` failed. {state}{app_state}",
            env.name
        )));
    }
    let safety_name = safety_name.unwrap_or_default();
    if out.json {
        out.json_doc(&serde_json::json!({
            "environment": env.name, "restored": backup.name, "path": backup.path.as_str(),
            "point_in_time": m.started_at, "safety_backup": safety_name,
            "undo": format!("cargo xtask restore {} {} --yes", env.name, safety_name),
            "replaced_database": replaced,
        }));
    } else {
        out.line(&format!("Restored `{}` from {}.", env.name, backup.path));
        out.line(&format!(
            "The data now reflects {} (when that backup's snapshot was taken).",
            m.started_at
        ));
        out.line(&format!(
            "Safety backup of what was there before: {safety_name}. To undo: cargo xtask restore {} {safety_name}",
            env.name
        ));
        out.line(&format!(
            "The replaced database is kept as `{replaced}` (with any write made after the safety backup by a \
             client mre-ops did not stop). Drop it when satisfied: DROP DATABASE \"{replaced}\";"
        ));
    }
    out.step_summary(&format!(
        "Restored `{}` from `{}` (data as of {}); safety backup `{safety_name}`",
        env.name, backup.name, m.started_at
    ));
    Ok(())
}

pub(super) fn start_again(t: &Target, stopped: &RefCell<Vec<String>>) -> Result<()> {
    let list = stopped.borrow().clone();
    if list.is_empty() {
        return Ok(());
    }
    let docker = t.docker()?;
    for c in &list {
        docker.start_container(c)?;
    }
    stopped.borrow_mut().clear();
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
    if !std::io::stdin().is_terminal() {
        return Err(config_error(format!(
            "`{}` is protected: restoring replaces its database `{}` with {}. \
             Pass --yes to confirm (in CI), or run this on a terminal to confirm by typing the database name. Nothing was changed",
            t.env.name, t.database, backup.name
        )));
    }
    eprint!(
        "`{}` is protected. This replaces database `{}` with backup {} (a safety backup is taken first).\n\
         Type the database name to go on: ",
        t.env.name, t.database, backup.name
    );
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if line.trim() != t.database {
        return Err(config_error(format!(
            "the confirmation `{}` is not the database name `{}`: nothing was changed",
            line.trim(),
            t.database
        )));
    }
    Ok(())
}
