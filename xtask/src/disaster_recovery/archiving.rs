//! Disaster Recovery, Backup Strategy to the minute: the commands of
//! continuous archiving: `backup continuous start|stop`, `backup base`,
//! `backup status` (the last base backup, the last WAL archived, the lag
//! and any gap since the base backup).

use anyhow::{bail, Context, Result};

use crate::adapters::clock::Utc;
use crate::adapters::output::Output;
use crate::config::{parse_duration, Env};
use crate::core::report::Report;
use crate::core::steps::Plan;

use super::continuous::{segment_name, Archive, Base, Segment};
use super::manifest::{human_age, human_size, now_unix};
use super::pg_tools::Target;

#[derive(Default)]
pub(super) struct StartState {
    hba_added: bool,
    slot_created: bool,
}

/// The steps of `backup continuous start` (also a restore's last step).
pub(super) fn start_plan<'p>(a: &'p Archive<'p, 'p>, out: &'p Output) -> Plan<'p, StartState> {
    let env = &a.t.env.name;
    let mut plan: Plan<StartState> = Plan::new(format!("continuous archiving of {env}"));
    plan.step(
        "Check the server",
        "wal_level is replica or logical, max_wal_senders ≥ 2, the role may replicate",
        move |_| a.check_server(),
    );
    plan.step(
        "Allow replication connections",
        format!(
            "when pg_hba.conf has no rule for them: append `host replication all all scram-sha-256` to it \
             in {} and SELECT pg_reload_conf()",
            a.container
        ),
        move |st: &mut StartState| {
            if !a.hba_allows()? {
                a.set_hba(true)?;
                st.hba_added = true;
                out.detail("pg_hba.conf: replication connections allowed");
            }
            Ok(())
        },
    )
    .undo("remove the line added to pg_hba.conf", move |st| {
        if st.hba_added {
            a.set_hba(false)?;
        }
        Ok(())
    });
    plan.step(
        "Create the replication slot",
        format!(
            "SELECT pg_create_physical_replication_slot('{}', true)   (unless it exists): the server keeps \
             every WAL segment until the archiver has it",
            a.slot
        ),
        move |st: &mut StartState| {
            if !a.slot_exists()? {
                a.create_slot()?;
                st.slot_created = true;
            }
            Ok(())
        },
    )
    .undo("drop the slot this run created", move |st| {
        if st.slot_created {
            a.stop_archiver()?;
            a.drop_slot()?;
        }
        Ok(())
    });
    plan.step(
        "Start the WAL archiver",
        format!(
            "a container `{}` from {}'s image on its network, restart unless-stopped: \
             pg_receivewal -h {} -U {} -S {} --synchronous -D {}/wal   (password in its environment)",
            a.archiver, a.container, a.container, a.t.user, a.slot, a.root
        ),
        move |_| a.start_archiver(out),
    )
    .undo(format!("remove container {}", a.archiver), move |_| {
        a.stop_archiver()
    });
    plan.step(
        "Take a base backup",
        format!(
            "pg_basebackup -Ft -X stream -c fast in a container from the same image, into {}/base/<UTC>/",
            a.root
        ),
        move |_| {
            let b = a.base_backup(out)?;
            out.line(&format!(
                "Base backup {}: {}, WAL from {}",
                b.name,
                human_size(b.bytes),
                b.start_lsn
            ));
            Ok(())
        },
    );
    plan
}

pub(super) fn start(env: &Env, out: &Output, dry_run: bool) -> Result<()> {
    let t = Target::new(env, None)?;
    let a = Archive::new(&t)?;
    if !t.settings.continuous && !dry_run {
        out.warn(&format!(
            "backups.continuous is not true for `{}` in ops.toml: set it, so that `backup status` and \
             `monitor` watch this archive",
            env.name
        ));
    }
    let _lock = crate::core::lock::unless_dry_run(
        dry_run,
        env,
        out,
        &format!("backup continuous start {}", env.name),
    )?;
    start_plan(&a, out).execute_with(out, dry_run, &mut StartState::default())?;
    if !dry_run {
        out.line(&format!(
            "Archiving `{}` continuously into {} (`cargo xtask backup status {}`).",
            env.name, a.root, env.name
        ));
    }
    Ok(())
}

pub(super) fn stop(env: &Env, out: &Output, dry_run: bool) -> Result<()> {
    let t = Target::new(env, None)?;
    let a = Archive::new(&t)?;
    let _lock = crate::core::lock::unless_dry_run(
        dry_run,
        env,
        out,
        &format!("backup continuous stop {}", env.name),
    )?;
    let mut plan = Plan::new(format!("stop archiving {}", env.name));
    let a = &a;
    plan.action(
        "Stop the WAL archiver",
        format!("$ docker rm -f {}   (the archive is kept)", a.archiver),
        move || a.stop_archiver(),
    );
    plan.action(
        "Drop the replication slot",
        format!(
            "SELECT pg_drop_replication_slot('{}'): the server no longer keeps WAL for it",
            a.slot
        ),
        move || a.drop_slot(),
    );
    plan.execute(out, dry_run)?;
    if !dry_run {
        out.line(&format!(
            "Stopped archiving `{}`; the archive stays in {}.",
            env.name, a.root
        ));
    }
    Ok(())
}

pub(super) fn base(env: &Env, out: &Output, dry_run: bool) -> Result<()> {
    let t = Target::new(env, None)?;
    let a = Archive::new(&t)?;
    let mut plan = Plan::new(format!("base backup of {}", env.name));
    let a = &a;
    plan.action(
        "Take a base backup",
        format!(
            "pg_basebackup -Ft -X stream -c fast in a container from {}'s image, into {}/base/<UTC>/",
            a.container, a.root
        ),
        move || {
            let b = a.base_backup(out)?;
            out.line(&format!(
                "Base backup {}: {}, WAL from {} (timeline {})",
                b.name,
                human_size(b.bytes),
                b.start_lsn,
                b.timeline
            ));
            Ok(())
        },
    );
    plan.execute(out, dry_run)
}

/// The archive's lag, as the server sees it: the bytes the slot still holds
/// back, and the archiver's flush lag (when it is not connected: how long
/// ago the newest archived file was written). None: there is no slot.
pub(super) fn lag(a: &Archive, segments: &[Segment]) -> Result<Option<(i64, Option<f64>)>> {
    let mut c = a.t.connect(&a.t.settings.maintenance_db)?;
    let row = c
        .query_opt(
            "SELECT s.active, pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.flush_lsn, s.restart_lsn))::bigint, \
                    extract(epoch FROM coalesce(r.flush_lag, interval '0'))::float8 \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&a.slot],
        )
        .context("reading the replication slot's lag")?;
    Ok(row.map(|r| {
        let (active, bytes, secs): (bool, i64, f64) = (r.get(0), r.get(1), r.get(2));
        if active {
            (bytes, Some(secs))
        } else {
            let newest = segments.iter().map(|s| s.modified_unix).max();
            (bytes, newest.map(|m| (now_unix() - m) as f64))
        }
    }))
}

/// What `monitor` reports of the continuous archive.
#[derive(serde::Serialize, Clone, Debug)]
pub struct ArchiveLag {
    pub bytes: Option<i64>,
    pub seconds: Option<f64>,
    pub max_seconds: f64,
    /// Why the lag could not be read (no slot, no database).
    pub error: Option<String>,
}

/// The lag of `env`'s continuous archive, for `monitor` (None when
/// `backups.continuous` is off).
pub fn archive_lag(env: &Env) -> Option<ArchiveLag> {
    let t = Target::new(env, None).ok()?;
    if !t.settings.continuous {
        return None;
    }
    let max_seconds = parse_duration(&t.settings.max_archive_lag)
        .unwrap_or_default()
        .as_secs_f64();
    let read = || -> Result<Option<(i64, Option<f64>)>> {
        let a = Archive::new(&t)?;
        let seg = a
            .bases()?
            .first()
            .map(|b| b.segment_bytes)
            .unwrap_or(16 << 20);
        lag(&a, &a.segments(seg)?)
    };
    Some(match read() {
        Ok(Some((bytes, seconds))) => ArchiveLag {
            bytes: Some(bytes),
            seconds,
            max_seconds,
            error: None,
        },
        Ok(None) => ArchiveLag {
            bytes: None,
            seconds: None,
            max_seconds,
            error: Some(format!(
                "no replication slot: `cargo xtask backup continuous start {}`",
                env.name
            )),
        },
        Err(e) => ArchiveLag {
            bytes: None,
            seconds: None,
            max_seconds,
            error: Some(format!("{e:#}")),
        },
    })
}

/// `backup status`: the report, then an error (exit 1) naming what to do
/// when the archive cannot bring the database back to now.
pub(super) fn status(env: &Env, out: &Output) -> Result<()> {
    let t = Target::new(env, None)?;
    let a = Archive::new(&t)?;
    let max_lag = parse_duration(&t.settings.max_archive_lag).unwrap_or_default();
    let bases = a.bases()?;
    let newest: Option<&Base> = bases.first();
    let seg_bytes = newest.map(|b| b.segment_bytes).unwrap_or(16 << 20);
    let segments = a.segments(seg_bytes)?;
    let last = segments.iter().rev().find(|s| !s.partial);
    let partial = segments.iter().rev().find(|s| s.partial);
    let mut problems: Vec<String> = Vec::new();
    let running = a.archiver_running(&t.docker()?)?;
    if !running {
        problems.push(format!(
            "the WAL archiver ({}) is not running: `cargo xtask backup continuous start {}`",
            a.archiver, env.name
        ));
    }
    let (gaps, from) = match newest {
        Some(b) => {
            let from = super::continuous::lsn_value(&b.start_lsn).unwrap_or(0) / b.segment_bytes;
            (Archive::gaps(&segments, from), Some(from))
        }
        None => {
            problems.push(format!(
                "there is no base backup in {}/base: `cargo xtask backup base {}`",
                a.root, env.name
            ));
            (Vec::new(), None)
        }
    };
    if let Some(first) = gaps.first() {
        let tli = newest.map(|b| b.timeline).unwrap_or(1);
        problems.push(format!(
            "{} WAL segment(s) missing since the last base backup (first: {}): a restore cannot pass it. \
             Take a new base backup now (`cargo xtask backup base {}`) so that the archive is whole from \
             there on; look for the missing files in the database's pg_wal before they are recycled",
            gaps.len(),
            segment_name(tli, *first, seg_bytes),
            env.name
        ));
    }
    let (lag_bytes, lag_secs) = match lag(&a, &segments) {
        Ok(Some((bytes, secs))) => (Some(bytes), secs),
        Ok(None) => {
            problems.push(format!(
                "the database has no replication slot `{}`: `cargo xtask backup continuous start {}`",
                a.slot, env.name
            ));
            (None, None)
        }
        Err(e) => {
            problems.push(format!("could not read the lag from the database: {e:#}"));
            (None, None)
        }
    };
    if let Some(s) = lag_secs {
        if s > max_lag.as_secs_f64() {
            problems.push(format!(
                "the archive is {s:.0} s behind the database (backups.max_archive_lag = \"{}\"): \
                 `docker logs {}` says why",
                t.settings.max_archive_lag, a.archiver
            ));
        }
    }
    let when = |u: i64| Utc::from_unix(u).rfc3339();
    let mut r = Report::new(serde_json::json!({
        "environment": env.name,
        "archive": a.root.as_str(),
        "archiver_running": running,
        "slot": a.slot,
        "base_backups": bases.len(),
        "last_base_backup": newest.map(|b| serde_json::json!({
            "name": b.name, "started_at": b.started_at, "finished_at": when(b.finished_unix),
            "bytes": b.bytes, "start_lsn": b.start_lsn, "timeline": b.timeline,
        })),
        "last_wal_segment": last.map(|s| serde_json::json!({"file": s.file, "archived_at": when(s.modified_unix)})),
        "partial_wal_segment": partial.map(|s| serde_json::json!({"file": s.file, "written_at": when(s.modified_unix)})),
        "lag_bytes": lag_bytes,
        "lag_seconds": lag_secs,
        "max_archive_lag_seconds": max_lag.as_secs_f64(),
        "gaps": gaps.iter().map(|g| segment_name(newest.map(|b| b.timeline).unwrap_or(1), *g, seg_bytes)).collect::<Vec<_>>(),
        "first_segment_needed": from.map(|f| segment_name(newest.map(|b| b.timeline).unwrap_or(1), f, seg_bytes)),
        "ok": problems.is_empty(),
        "problems": problems,
    }));
    r.line(format!(
        "Archive of `{}`: {} (archiver {}, slot {})",
        env.name,
        a.root,
        if running { "running" } else { "NOT running" },
        a.slot
    ));
    match newest {
        Some(b) => r.line(format!(
            "  last base backup: {} ({} ago), {}, WAL from {} on timeline {}",
            b.name,
            human_age(now_unix() - b.finished_unix),
            human_size(b.bytes),
            b.start_lsn,
            b.timeline
        )),
        None => r.line("  last base backup: none"),
    };
    match last {
        Some(s) => r.line(format!(
            "  last WAL segment archived: {} ({} ago)",
            s.file,
            human_age(now_unix() - s.modified_unix)
        )),
        None => r.line("  last WAL segment archived: none yet"),
    };
    if let Some(p) = partial {
        r.line(format!(
            "  segment being written: {} (written {} ago)",
            p.file,
            human_age(now_unix() - p.modified_unix)
        ));
    }
    r.line(format!(
        "  lag: {} bytes, {} (alert past {})",
        lag_bytes
            .map(|b| b.to_string())
            .unwrap_or_else(|| "?".into()),
        lag_secs
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "? s".into()),
        t.settings.max_archive_lag
    ));
    r.line(format!(
        "  gaps since the last base backup: {}",
        if gaps.is_empty() {
            "none".to_string()
        } else {
            format!("{} segment(s)", gaps.len())
        }
    ));
    for p in &problems {
        r.error(p.clone());
    }
    r.emit(out);
    if !problems.is_empty() {
        bail!(
            "the archive of `{}` cannot bring the database back to now:\n  - {}",
            env.name,
            problems.join("\n  - ")
        );
    }
    Ok(())
}
