//! Staging Deployment and Production Deployment, "Run database migrations"
//! rehearsed, and Application Rollback proven before it is needed: a release
//! with pending migrations first runs them on a verified copy of the data
//! (the pre-deploy backup restored into a scratch database), timed, with the
//! locks each took; checks that no row was lost and the configured integrity
//! checks hold; then starts the new release and the live one (what
//! `rollback` returns to) against the migrated copy, each on its own
//! address with no published port, and runs the health check and the smoke
//! tests on both. Production is not touched until it passes. Everything it
//! started is removed afterwards, also on a failure and Ctrl-C; after a
//! kill -9, the next rehearsal removes what is left.

mod command;
mod containers;
mod copy;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use super::plan::RelState;
use crate::adapters::clock;
use crate::adapters::output::Output;
use crate::config::{config_error, Env, ReleaseSettings, Window};
use crate::core::steps::Plan;
use crate::database_migrations::{self, Pending};
pub use command::{command as rehearse_command, RehearseArgs};
pub use containers::remove_leftovers;
use containers::start_on_copy;
use copy::migrate_copy;

/// What a rehearsal found; the journal keeps it (`rehearsal`).
#[derive(Default, Serialize, Debug)]
pub struct Findings {
    pub migrations: Vec<MigrationRun>,
    /// Rows per table before and after the migrations, on the copy.
    pub rows_before: BTreeMap<String, i64>,
    pub rows_after: BTreeMap<String, i64>,
    /// What failed the integrity check (lost rows, a false check).
    pub integrity: Vec<String>,
    /// Each release started on the migrated copy.
    pub proofs: Vec<ReleaseProof>,
    /// The copy's schema after the migrations (`database_migrations::fingerprint`).
    pub schema: Option<String>,
    pub seconds: f64,
}

#[derive(Serialize, Debug)]
pub struct MigrationRun {
    pub name: String,
    pub seconds: f64,
    /// Table locks held while it ran, strongest mode per table.
    pub locks: Vec<LockHeld>,
}

#[derive(Serialize, Debug)]
pub struct LockHeld {
    pub table: String,
    pub mode: String,
    /// How long it was seen held (sampled every 50 ms: ± 0.05 s).
    pub seconds: f64,
}

#[derive(Serialize, Debug)]
pub struct ReleaseProof {
    pub version: String,
    /// `new` (the release being deployed) or `live` (what rollback returns to).
    pub role: String,
    pub schema: Option<String>,
    pub ok: bool,
    pub why: Option<String>,
}

/// The releases a rehearsal starts: role, version, service → image.
#[derive(Clone)]
pub struct Candidate {
    pub role: &'static str,
    pub version: String,
    pub images: BTreeMap<String, String>,
}

/// Run the rehearsal on `copy` (a restored, verified copy of `env`'s
/// database on the same server), which the caller drops afterwards.
/// Err: the release must not go on; `findings` says why.
#[allow(clippy::too_many_arguments)]
pub fn rehearse(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    copy: &str,
    pending: &[Pending],
    candidates: &[Candidate],
    allow_risky: bool,
    findings: &mut Findings,
) -> Result<()> {
    let start = Instant::now();
    let on_copy = env.on_database(copy);
    remove_leftovers(env, out)?;
    let result = (|| -> Result<()> {
        migrate_copy(&on_copy, out, copy, pending, allow_risky, findings)?;
        findings.schema = database_migrations::fingerprint(&on_copy)?;
        for c in candidates {
            let started = Instant::now();
            let outcome = start_on_copy(env, rel, out, copy, c);
            crate::core::interrupt::check()?;
            let ok = outcome.is_ok();
            let why = outcome.err().map(|e| format!("{e:#}"));
            out.line(&format!(
                "Rehearsal: the {} release {} on the migrated copy: {} ({:.1} s){}",
                c.role,
                c.version,
                if ok { "passes" } else { "FAILS" },
                started.elapsed().as_secs_f64(),
                why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
            ));
            findings.proofs.push(ReleaseProof {
                version: c.version.clone(),
                role: c.role.into(),
                schema: findings.schema.clone(),
                ok,
                why,
            });
        }
        Ok(())
    })();
    // Whatever happened: nothing the rehearsal started stays.
    let cleaned = remove_leftovers(env, out);
    findings.seconds = start.elapsed().as_secs_f64();
    result?;
    cleaned
}

/// What the operator passed about the rehearsal.
#[derive(Clone, Copy, Default)]
pub struct Waivers<'a> {
    /// `--skip-rehearsal REASON`: no rehearsal (recorded).
    pub skip: Option<&'a str>,
    /// `--no-rollback-path REASON`: go on when the live release fails on
    /// the migrated copy (recorded; `rollback` then needs `--with-db`).
    pub no_rollback_path: Option<&'a str>,
    /// `--now`: migrate outside `[migrations] window` even when the
    /// rehearsal shows a long exclusive lock.
    pub now: bool,
}

/// Deploy's "Rehearse the release on a copy of the data" step (Compose).
#[allow(clippy::too_many_arguments)]
pub fn step<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
    new: Candidate,
    live: Option<Candidate>,
    allow_risky: bool,
    waivers: Waivers<'a>,
) {
    let live_version = live.as_ref().map(|c| c.version.clone());
    plan.step(
        "Rehearse the release on a copy of the data",
        format!(
            "when migrations are pending: on the verified pre-deploy copy, apply them (timed, with the locks each \
             holds), check that no row is lost and [migrations] checks hold, then start {} and the live release \
             {} against the migrated copy (no published port) and run the health check and smoke tests on each; \
             a failure stops here, before production changes{}",
            new.version,
            live_version.as_deref().unwrap_or("(none)"),
            match (waivers.skip, waivers.no_rollback_path) {
                (Some(r), _) => format!(" (skipped by the operator: {r})"),
                (None, Some(r)) => format!(" (a live release failing is accepted: {r})"),
                (None, None) => String::new(),
            }
        ),
        move |s: &mut RelState| {
            let copy = s.copy.take();
            let result = run_step(env, rel, out, &new, live.as_ref(), allow_risky, waivers, copy.as_deref(), s);
            if let Some(c) = copy {
                if let Err(e) = crate::disaster_recovery::drop_copy(env, &c) {
                    out.warn(&format!("the rehearsal's copy `{c}` could not be dropped: {e:#}"));
                }
            }
            result
        },
    )
    .undo("drop the rehearsal's copy and remove what it started", move |s: &mut RelState| {
        if let Some(c) = s.copy.take() {
            crate::disaster_recovery::drop_copy(env, &c)?;
        }
        remove_leftovers(env, out)
    });
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    new: &Candidate,
    live: Option<&Candidate>,
    allow_risky: bool,
    waivers: Waivers,
    copy: Option<&str>,
    s: &mut RelState,
) -> Result<()> {
    if !rel.rehearse {
        out.line("No rehearsal (release.rehearse = false in ops.toml).");
        return Ok(());
    }
    if let Some(reason) = waivers.skip {
        out.warn(&format!("rehearsal skipped by the operator: {reason}"));
        s.rehearsal = Some(serde_json::json!({ "skipped": reason }));
        return Ok(());
    }
    let pending = database_migrations::pending(env)?;
    if pending.is_empty() {
        out.line("No pending migrations: nothing to rehearse. The schema does not change, so what `rollback` returns to stays as safe as it was.");
        return Ok(());
    }
    let made;
    let copy = match copy {
        Some(c) => c,
        None if env.settings.backups.is_none() => {
            out.warn(&format!(
                "no rehearsal of {} pending migration(s): `{}` has no [backups] to copy the data from (docs/releases.md)",
                pending.len(),
                env.name
            ));
            s.rehearsal = Some(serde_json::json!({ "skipped": "no [backups] configured" }));
            return Ok(());
        }
        None => {
            // The lint first: a deploy it refuses costs no backup.
            database_migrations::lint_before_backup(env, out, allow_risky)?;
            let path = crate::disaster_recovery::create_backup(
                env,
                out,
                &format!("rehearsal of {}", new.version),
            )?;
            // A backup taken just before the migrations: the release's
            // pre-deploy backup (`rollback --with-db pre-deploy`).
            s.backup = Some(path.to_string());
            let quiet = Output::new(false, true, out.verbose);
            made =
                crate::disaster_recovery::verify_backup_keeping_copy(env, &quiet, path.as_str())?;
            s.copy = Some(made.clone());
            &made
        }
    };
    let mut candidates = vec![new.clone()];
    candidates.extend(live.cloned());
    let mut f = Findings::default();
    let result = rehearse(
        env,
        rel,
        out,
        copy,
        &pending,
        &candidates,
        allow_risky,
        &mut f,
    );
    if let Some(c) = s.copy.take() {
        crate::disaster_recovery::drop_copy(env, &c)?;
    }
    let mut doc = serde_json::to_value(&f).expect("findings serialise");
    let verdict = (|| -> Result<()> {
        result?;
        if let Some(p) = f.proofs.iter().find(|p| p.role == "new" && !p.ok) {
            bail!(
                "the new release {} fails on the migrated copy of the data: {}. Production was not touched",
                p.version,
                p.why.as_deref().unwrap_or("?")
            );
        }
        if let Some(p) = f.proofs.iter().find(|p| p.role == "live" && !p.ok) {
            let why = p.why.as_deref().unwrap_or("?");
            match waivers.no_rollback_path {
                Some(reason) => {
                    out.warn(&format!(
                        "the live release {} fails on the new schema ({why}); going on without a rollback path: {reason}",
                        p.version
                    ));
                    doc["no_rollback_path"] = serde_json::json!(reason);
                }
                None => bail!(
                    "rollback would break: the live release {} fails on the schema these migrations make: {why}. \
                     Production was not touched. Make the migrations compatible with the live release (expand now, \
                     contract in a later release), or deploy with --no-rollback-path \"REASON\" (recorded in the \
                     journal; `rollback` then needs --with-db pre-deploy or --force)",
                    p.version
                ),
            }
        }
        window_gate(env, out, &f, waivers.now)?;
        out.line(&format!(
            "Rehearsal passed in {:.1} s: {} migration(s) on the copy, no row lost{}",
            f.seconds,
            f.migrations.len(),
            if live.is_some() && waivers.no_rollback_path.is_none() {
                ", rollback proven on the new schema"
            } else {
                ""
            }
        ));
        Ok(())
    })();
    doc["ok"] = serde_json::json!(verdict.is_ok());
    s.rehearsal = Some(doc);
    verdict
}

/// "Run migrations during low-traffic periods": a migration the rehearsal
/// saw holding a table exclusively for longer than `max_lock_secs` runs
/// only inside `[migrations] window`, unless `--now`.
fn window_gate(env: &Env, out: &Output, f: &Findings, now: bool) -> Result<()> {
    let m = &env.settings.migrations;
    let long: Vec<String> = f
        .migrations
        .iter()
        .flat_map(|r| {
            r.locks
                .iter()
                .filter(|l| {
                    (l.mode == "ACCESS EXCLUSIVE" || l.mode == "EXCLUSIVE")
                        && l.seconds > m.max_lock_secs
                })
                .map(move |l| {
                    format!(
                        "{} held {} on {} for {:.1} s",
                        r.name, l.mode, l.table, l.seconds
                    )
                })
        })
        .collect();
    if long.is_empty() {
        return Ok(());
    }
    let field = format!("environments.{}.migrations.window", env.name);
    let Some(text) = &m.window else {
        out.warn(&format!(
            "on the copy, {} (max_lock_secs {}): on production that blocks every query on the table meanwhile. \
             Set {field} to run such migrations only in a low-traffic period",
            long.join("; "),
            m.max_lock_secs
        ));
        return Ok(());
    };
    let w = Window::parse(text).map_err(|why| config_error(format!("{field}: {why}")))?;
    let (minute, hhmm) =
        clock::minutes_now_in(&w.zone).map_err(|why| config_error(format!("{field}: {why}")))?;
    if w.contains(minute) {
        out.line(&format!(
            "Inside the migration window {text} (now {hhmm}): {}",
            long.join("; ")
        ));
        return Ok(());
    }
    if now {
        out.warn(&format!(
            "outside the migration window {text} (now {hhmm}), with --now: {}",
            long.join("; ")
        ));
        return Ok(());
    }
    bail!(
        "outside the migration window {text} (now {hhmm} there): on the copy, {} (more than max_lock_secs {}), \
         which on production blocks every query on the table meanwhile. Production was not touched; deploy inside \
         the window, or pass --now",
        long.join("; "),
        m.max_lock_secs
    )
}
