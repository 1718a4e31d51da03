//! Database Rollback to a point in time: `restore ENV --to-time T` and
//! `--to-latest`. A base backup and the archived WAL after it are put into
//! a NEW volume, a container from the database's own image replays them to
//! the target and promotes, and only then is it swapped in for the database
//! container (the old container and its volume are kept, renamed).

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::clock::{parse_instant_ms, Utc};
use crate::adapters::docker::{Job, Template};
use crate::adapters::output::Output;
use crate::config::{config_error, Ops};
use crate::core::files::random_hex;
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;
use crate::core::wait::{self, Poll, Waited};
use crate::health_checks;

use super::continuous::{segment_name, set_aside, Archive, Base, Segment, PGDATA};
use super::manifest::human_size;
use super::pg_tools::Target;
use super::replay::{fill_volume, history_files, wait_promoted};
use super::RestoreArgs;

#[derive(Default)]
struct PitrState {
    stopped: Vec<String>,
    volume: bool,
    recovering: bool,
    reached: Option<String>,
    archiver_stopped: bool,
    /// The live container was renamed to the replaced name.
    renamed: bool,
    /// A new container holds the database's name.
    created: bool,
    /// What a `kill -9` would leave, for `recover`.
    record: Option<crate::core::intent::Record>,
}

impl PitrState {
    fn note(
        &mut self,
        f: impl FnOnce(&mut crate::core::intent::Record) -> Result<()>,
    ) -> Result<()> {
        match self.record.as_mut() {
            Some(r) => f(r),
            None => Ok(()),
        }
    }
}

/// What to bring the database back to.
enum Goal {
    Latest,
    /// As written, and in milliseconds since the epoch.
    Time(String, i64),
}

pub(super) fn restore(ops: &Ops, out: &Output, args: &RestoreArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    let a = Archive::new(&t)?;
    let goal = match &args.to_time {
        Some(text) => {
            let unix = parse_instant_ms(text).ok_or_else(|| {
                config_error(format!(
                    "--to-time `{text}` is not a time with its offset: write e.g. \"2026-11-29 14:01:59+00\""
                ))
            })?;
            Goal::Time(text.clone(), unix)
        }
        None => Goal::Latest,
    };
    // Everything that can be checked before a change: a base backup before
    // the target, a whole WAL sequence after it, an image to run.
    let bases = a.bases()?;
    let base: Base = match &goal {
        Goal::Latest => bases.first().cloned(),
        // To the millisecond: a base finished in the target's own second counts
        // (a record without milliseconds, at the end of its second).
        Goal::Time(_, ms) => bases
            .iter()
            .find(|b| b.finished_ms.unwrap_or(b.finished_unix * 1000 + 999) <= *ms)
            .cloned(),
    }
    .ok_or_else(|| {
        config_error(format!(
            "no base backup of `{}` in {}/base was finished before the target: {}. Nothing was changed",
            env.name,
            a.root,
            if bases.is_empty() {
                format!("start archiving with `cargo xtask backup continuous start {}`", env.name)
            } else {
                format!("the oldest is {}", bases[bases.len() - 1].name)
            }
        ))
    })?;
    let from = super::continuous::lsn_value(&base.start_lsn).unwrap_or(0) / base.segment_bytes;
    let segments: Vec<Segment> = a
        .segments(base.segment_bytes)?
        .into_iter()
        .filter(|s| s.segno >= from)
        .collect();
    let gaps = Archive::gaps(&segments, from);
    if let Some(g) = gaps.first() {
        bail!(
            "refusing to restore: WAL segment {} is missing from {} (`cargo xtask backup status {}`); \
             a restore would stop there. Nothing was changed",
            segment_name(base.timeline, *g, base.segment_bytes),
            a.wal_dir(),
            env.name
        );
    }
    // The files to copy: complete segments, and a partial one only where no
    // complete file of that name exists.
    let complete: std::collections::BTreeSet<String> = segments
        .iter()
        .filter(|s| !s.partial)
        .map(|s| s.file.clone())
        .collect();
    let mut files: Vec<String> = segments
        .iter()
        .filter(|s| !s.partial || !complete.contains(s.file.trim_end_matches(".partial")))
        .map(|s| s.file.clone())
        .collect();
    files.extend(history_files(&a.wal_dir())?);
    let range = match (segments.first(), segments.last()) {
        (Some(f), Some(l)) => format!(
            "{} … {}",
            f.file.trim_end_matches(".partial"),
            l.file.trim_end_matches(".partial")
        ),
        _ => "none after the base backup (its own WAL only)".to_string(),
    };
    let docker = t.docker()?;
    let live_exists = docker.container(&a.container)?.is_some();
    let template: Template = match docker.template(&a.container)? {
        Some(t) => t,
        None => {
            // The exact image the database ran, or its name when the engine
            // no longer has it.
            let mut t = a.unmask(base.container.clone());
            if !docker.image_present(&t.image())? && !t.image_name.is_empty() {
                let name = t.image_name.clone();
                t.set_image(&name);
            }
            t
        }
    };
    let Some(old_volume) = template.source_of(PGDATA) else {
        bail!(
            "container `{}` mounts nothing at {PGDATA}: mre-ops restores into a volume mounted there. Nothing was changed",
            a.container
        );
    };
    let target_text = match &goal {
        Goal::Latest => "the last archived transaction".to_string(),
        Goal::Time(text, _) => text.clone(),
    };
    out.line(&format!(
        "Base backup chosen: {} (taken {}, {}); WAL: {range}; target: {target_text}",
        base.name,
        base.started_at,
        human_size(base.bytes)
    ));
    if !args.dry_run && t.env.settings.protected && !args.yes {
        crate::core::confirm::by_typing(
            &format!(
                "`{}` is protected. This replaces its database container's data with base backup {} replayed to {target_text} \
                 (the current container and volume are kept, renamed).",
                env.name, base.name
            ),
            &t.database,
            &format!(
                "`{}` is protected: restoring replaces its database. Pass --yes to confirm (in CI), or run this on a \
                 terminal to confirm by typing the database name",
                env.name
            ),
        )?;
    }
    let _lock = crate::core::lock::unless_dry_run(
        args.dry_run,
        &env,
        out,
        &format!("restore {} to {target_text}", env.name),
    )?;
    let stamp = Utc::now().compact();
    // One `-pitr-<UTC>` tail, however many restores came before.
    let stem = match old_volume.rsplit_once("-pitr-") {
        Some((stem, tail)) if Utc::parse_compact(tail).is_some() => stem,
        _ => old_volume.as_str(),
    };
    let new_volume = format!("{stem}-pitr-{stamp}");
    let recovery = format!("{}-pitr-{}", a.container, random_hex(3)?);
    let replaced = format!("{}__replaced_{stamp}", a.container);
    // Behind a release's proxy, the proxy stays up in maintenance mode (a
    // 503 page, not connection errors) while the rest stops.
    let proxy = crate::core::proxy::proxy_container_of(&env);
    let app: Vec<String> = env
        .settings
        .services
        .values()
        .filter_map(|s| s.container.clone())
        .filter(|c| Some(c) != proxy.as_ref())
        .collect();
    let wait_for = Duration::from_secs(args.wait.unwrap_or(env.settings.deploy.wait_secs));
    let mut recovery_args: Vec<String> = vec![
        "postgres".into(),
        "-c".into(),
        "restore_command=false".into(),
        "-c".into(),
        "recovery_target_timeline=latest".into(),
        "-c".into(),
        "recovery_target_action=promote".into(),
    ];
    if let Goal::Time(text, _) = &goal {
        recovery_args.extend(["-c".into(), format!("recovery_target_time={text}")]);
    }
    let user = t.user.clone();
    let (a, t, docker, base) = (&a, &t, &docker, &base);
    let (new_volume, recovery, replaced, app, files, template) =
        (&new_volume, &recovery, &replaced, &app, &files, &template);
    let (recovery_args, user) = (&recovery_args, &user);
    let archiver_note = format!(
        "the WAL archiver was stopped: `cargo xtask backup continuous start {}` starts it again",
        env.name
    );
    let archiver_note = &archiver_note;

    let mut plan: Plan<PitrState> = Plan::new(format!("restore {} to {target_text}", env.name));
    let maint = crate::core::maintenance::on_step(
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
            format!("$ docker stop {}   (those running)", app.join(" "))
        },
        move |st: &mut PitrState| {
            for c in app {
                if docker.container(c)?.is_some_and(|c| c.state == "running") {
                    st.note(|r| r.stopping(c))?;
                    st.stopped.push(c.clone());
                    docker.stop_container(c, 10)?;
                }
            }
            Ok(())
        },
    )
    .undo("start the containers this restore stopped", move |st| {
        for c in std::mem::take(&mut st.stopped) {
            docker.start_container(&c)?;
            st.note(|r| r.started(&c))?;
        }
        Ok(())
    });
    plan.step(
        "Put the base backup and the WAL into a new volume",
        format!(
            "$ docker volume create {new_volume}; in a container from {} ({}): tar -xf {}/base/{}/base.tar and pg_wal.tar, \
             copy {} WAL file(s) ({range}) into pg_wal, touch recovery.signal",
            template.image_name,
            template.image(),
            a.root,
            base.name,
            files.len()
        ),
        move |st: &mut PitrState| {
            st.note(|r| r.scratch_volume(new_volume))?;
            docker.create_volume(new_volume, &[("org.mre-ops.restored-from", &base.name)])?;
            st.volume = true;
            fill_volume(a, docker, out, template, base, new_volume, files)
        },
    )
    .undo(
        format!("$ docker volume rm {new_volume}   (the live database is untouched)"),
        move |st| {
            if st.volume && !st.created {
                docker.remove_volume(new_volume)?;
                st.volume = false;
                st.note(|r| r.volume_done(new_volume))?;
            }
            Ok(())
        },
    );
    plan.step(
        format!("Replay the WAL to {target_text}"),
        format!(
            "a container {recovery} from the same image on {new_volume}, no network: {}; wait until it has \
             promoted; pg_last_xact_replay_timestamp() is the time reached; stop it",
            recovery_args.join(" ")
        ),
        move |st: &mut PitrState| {
            let mut job = Job {
                image: template.image(),
                cmd: recovery_args.clone(),
                env: template.env(),
                binds: vec![format!("{new_volume}:{PGDATA}")],
                network: Some("none".into()),
                labels: vec![("org.mre-ops.pitr".into(), t.env.name.clone())],
                ..Job::default()
            };
            job.user = template.body["User"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string);
            st.note(|r| r.scratch_container(recovery))?;
            docker.start_job(recovery, &job)?;
            st.recovering = true;
            let reached = wait_promoted(t, docker, out, recovery, user)?;
            st.reached = Some(reached);
            docker.stop_container(recovery, 60)?;
            docker.remove_container(recovery)?;
            st.recovering = false;
            st.note(|r| r.container_done(recovery))
        },
    )
    .undo(format!("$ docker rm -f {recovery}"), move |st| {
        if st.recovering {
            docker.remove_container(recovery)?;
            st.recovering = false;
            st.note(|r| r.container_done(recovery))?;
        }
        Ok(())
    });
    plan.step(
        "Stop the WAL archiver",
        format!(
            "$ docker rm -f {}   (the old history's archive is complete)",
            a.archiver
        ),
        move |st: &mut PitrState| {
            if a.archiver_running(docker)? {
                st.note(|r| r.note(archiver_note))?;
                a.stop_archiver()?;
                st.archiver_stopped = true;
            }
            Ok(())
        },
    )
    .undo("start the archiver again", move |st| {
        if st.archiver_stopped {
            a.start_archiver(out)?;
            st.archiver_stopped = false;
            st.note(|r| r.note_done(archiver_note))?;
        }
        Ok(())
    });
    plan.step(
        "Swap it in",
        if live_exists {
            format!(
                "$ docker stop {c}; docker rename {c} {replaced}   (kept, with its volume {old_volume}); \
                 create {c} as it was, on volume {new_volume}; start it",
                c = a.container
            )
        } else {
            format!(
                "create {c} (gone) as the base backup recorded it, on volume {new_volume}; start it",
                c = a.container
            )
        },
        move |st: &mut PitrState| {
            if live_exists {
                docker.stop_container(&a.container, 30)?;
                st.note(|r| r.renaming(&a.container, replaced))?;
                docker.rename_container(&a.container, replaced)?;
                st.renamed = true;
            }
            let mut spec = template.clone();
            spec.set_bind(PGDATA, new_volume);
            docker.create_from_template(&a.container, &spec)?;
            st.created = true;
            // The new volume is live now; the old container stays set aside.
            st.note(|r| r.volume_done(new_volume))?;
            st.note(|r| r.renamed_done(&a.container))?;
            docker.start_container(&a.container)
        },
    )
    .undo(
        format!("remove the new {c}; rename {replaced} back to {c}; start it", c = a.container),
        move |st| {
            if st.created {
                docker.remove_container(&a.container)?;
                st.created = false;
                st.note(|r| r.scratch_volume(new_volume))?;
            }
            if st.renamed {
                docker.rename_container(replaced, &a.container)?;
                docker.start_container(&a.container)?;
                st.renamed = false;
            }
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
        move |st: &mut PitrState| {
            for c in std::mem::take(&mut st.stopped) {
                docker.start_container(&c)?;
                st.note(|r| r.started(&c))?;
            }
            Ok(())
        },
    );
    if let Some(m) = &maint {
        crate::core::maintenance::off_step(&mut plan, &env, out, m);
    }
    let e = &env;
    plan.step(
        "Verify functionality (health checks)",
        format!(
            "the database accepts connections, then every health check of `{}`, at most {} s",
            env.name,
            wait_for.as_secs()
        ),
        move |_| {
            let ready = wait::until(
                out,
                "the database",
                wait_for,
                Duration::from_millis(200),
                || {
                    if let Some(c) = docker
                        .container(&a.container)?
                        .filter(|c| c.state == "exited")
                    {
                        bail!(
                            "the database container {} exited (code {}); its last lines:\n{}",
                            a.container,
                            c.exit_code.unwrap_or(-1),
                            docker.log_tail(&a.container, 20).unwrap_or_default().trim()
                        );
                    }
                    Ok(
                        match t
                            .connect(&t.database)
                            .and_then(|mut c| c.batch_execute("SELECT 1").context("SELECT 1"))
                        {
                            Ok(()) => Poll::Ready(()),
                            Err(e) => Poll::Pending(format!("{e:#}")),
                        },
                    )
                },
            )?;
            if let Waited::TimedOut(why) = ready {
                bail!("the restored database does not accept connections: {why}");
            }
            let checks = health_checks::wait_until_healthy(e, out, wait_for);
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
    if t.settings.continuous || live_exists && docker.container(&a.archiver)?.is_some() {
        plan.step(
            "Archive the new history",
            format!(
                "move {} aside (kept as archive-before-restore-<UTC>), then `cargo xtask backup continuous start {}`: \
                 a new slot, the archiver, a new base backup",
                a.root, env.name
            ),
            move |_| {
                if let Some(kept) = set_aside(&a.root)? {
                    out.line(&format!("The archive before this restore is kept in {kept}."));
                }
                super::archiving::start_plan(a, out)
                    .execute_with(out, false, &mut Default::default())
            },
        );
    }

    if args.dry_run {
        plan.print(out);
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut state = PitrState {
        record: Some(crate::core::intent::Record::begin(
            &env,
            &format!("restore {} to {target_text}", env.name),
        )?),
        ..PitrState::default()
    };
    let incident = crate::core::incident::Incident::begin(
        args.via.as_deref().unwrap_or("restore"),
        args.reason.as_deref(),
        args.yes,
    );
    let (result, timings) = plan.execute_timed(out, &mut state);
    // Done, or every undo ran: nothing is left for `recover`.
    let settled = state.stopped.is_empty()
        && !state.recovering
        && (state.created || !(state.renamed || state.volume));
    if settled {
        if let Some(r) = state.record.take() {
            r.finish()?;
        }
    }
    super::incidents::record_pitr(
        &env,
        out,
        incident,
        state.reached.as_deref().filter(|_| state.created),
        (&base.name, &range, &target_text),
        &format!("the container `{replaced}` and its volume {old_volume}"),
        &timings,
        &result,
    );
    if let Err(e) = result {
        let db = if state.created {
            format!(
                "The database container `{}` runs the restored data (volume {new_volume}); the one before is kept as `{replaced}`.",
                a.container
            )
        } else {
            format!("The database container `{}` was not changed.", a.container)
        };
        return Err(e.context(format!("restore of `{}` failed. {db}", env.name)));
    }
    let reached = state.reached.unwrap_or_default();
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "base_backup": base.name, "base_backup_started_at": base.started_at,
        "wal_range": range, "wal_files": files.len(), "target": target_text, "reached": reached,
        "volume": new_volume, "replaced_container": live_exists.then_some(replaced),
        "replaced_volume": old_volume, "seconds": started.elapsed().as_secs_f64(), "steps": timings,
    }));
    r.line(format!(
        "Restored `{}` from base backup {} (taken {}) and WAL {range}.",
        env.name, base.name, base.started_at
    ))
    .line(format!("Time reached: {reached} (target: {target_text})."))
    .line(if live_exists {
        format!(
            "The database container before the restore is kept, stopped, as `{replaced}` with its volume {old_volume}; \
             the database now lives on volume {new_volume}."
        )
    } else {
        format!("The database now lives on volume {new_volume}.")
    })
    .summary(format!(
        "Restored `{}` to {reached} from base backup `{}`",
        env.name, base.name
    ));
    r.emit(out);
    Ok(())
}
