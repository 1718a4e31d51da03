//! Rehearsal, on the copy: the pending migrations applied with their table
//! locks sampled, and the integrity checks (rows per table, `[migrations]
//! checks`) before and after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Findings, LockHeld, MigrationRun};
use crate::adapters::output::Output;
use crate::adapters::postgres;
use crate::config::{config_error, Env};
use crate::database_migrations::{self, Pending};

/// Apply `pending` to the copy, sampling its table locks meanwhile; then
/// the integrity checks.
pub(super) fn migrate_copy(
    on_copy: &Env,
    out: &Output,
    copy: &str,
    pending: &[Pending],
    allow_risky: bool,
    findings: &mut Findings,
) -> Result<()> {
    let checks = &on_copy.settings.migrations.checks;
    run_checks(on_copy, copy, checks, "before")?;
    findings.rows_before = crate::disaster_recovery::table_counts(on_copy, Some(copy))?;
    let url = on_copy.database_url()?;
    let (url, _) = database_migrations::split_schema(&url);
    let stop = AtomicBool::new(false);
    let (applied, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_locks(&url, copy, &stop));
        let quiet = Output::new(false, true, out.verbose);
        let opts = database_migrations::DeployOptions {
            dry_run: false,
            allow_risky,
            backup: false,
            report: false,
        };
        let applied = database_migrations::deploy(on_copy, &quiet, &opts);
        stop.store(true, Ordering::SeqCst);
        (applied, sampler.join().expect("lock sampler"))
    });
    applied.context(
        "the pending migrations failed on the copy of the data: production was not touched",
    )?;
    let samples = samples?;
    let names: Vec<String> = pending.iter().map(|p| p.name.clone()).collect();
    for (name, started, finished) in database_migrations::run_times(on_copy, &names)? {
        let locks = locks_during(&samples, started, finished);
        let shown: Vec<String> = locks
            .iter()
            .filter(|l| l.mode == "ACCESS EXCLUSIVE" || l.mode == "EXCLUSIVE" || l.mode == "SHARE")
            .map(|l| format!("{} {} {:.1} s", l.mode, l.table, l.seconds))
            .collect();
        out.line(&format!(
            "Rehearsal: migration {name}: {:.2} s{}",
            finished - started,
            if shown.is_empty() {
                String::new()
            } else {
                format!(", holding {}", shown.join(", "))
            }
        ));
        findings.migrations.push(MigrationRun {
            name,
            seconds: ((finished - started) * 1000.0).round() / 1000.0,
            locks,
        });
    }
    findings.rows_after = crate::disaster_recovery::table_counts(on_copy, Some(copy))?;
    for (table, before) in &findings.rows_before {
        match findings.rows_after.get(table) {
            Some(after) if after < before => findings.integrity.push(format!(
                "{table}: {before} rows before the migrations, {after} after ({} lost)",
                before - after
            )),
            None if *before > 0 => findings.integrity.push(format!(
                "{table}: {before} rows before the migrations, table gone after"
            )),
            _ => {}
        }
    }
    if let Err(e) = run_checks(on_copy, copy, checks, "after") {
        findings.integrity.push(format!("{e:#}"));
    }
    if !findings.integrity.is_empty() {
        bail!(
            "the migrations lose data on the copy: {}. Production was not touched; fix the migration \
             (or, when the loss is intended, deploy with --skip-rehearsal \"REASON\")",
            findings.integrity.join("; ")
        );
    }
    out.line(&format!(
        "Rehearsal: integrity: {} tables, no row lost{}",
        findings.rows_after.len(),
        if checks.is_empty() {
            String::new()
        } else {
            format!(", {} check(s) true before and after", checks.len())
        }
    ));
    Ok(())
}

/// `[migrations] checks`: each must return true on the copy.
fn run_checks(env: &Env, copy: &str, checks: &[String], when: &str) -> Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let (url, _) = database_migrations::split_schema(&env.database_url()?);
    let mut client =
        postgres::connect_to(&url, copy, "mre-ops rehearsal", Duration::from_secs(10))?;
    for (i, sql) in checks.iter().enumerate() {
        let field = format!("environments.{}.migrations.checks[{i}]", env.name);
        let row = client
            .query_one(sql.as_str(), &[])
            .with_context(|| format!("{field} ({sql}) failed on the copy {when} the migrations"))?;
        let value: Option<bool> = row
            .try_get(0)
            .map_err(|_| config_error(format!("{field} ({sql}) must return one boolean column")))?;
        if value != Some(true) {
            bail!("{field} ({sql}) is not true {when} the migrations");
        }
    }
    Ok(())
}

/// (seconds since the epoch, table, lock mode) seen held on the copy by
/// another session, every 50 ms until `stop`.
fn sample_locks(url: &str, copy: &str, stop: &AtomicBool) -> Result<Vec<(f64, String, String)>> {
    let mut client =
        postgres::connect_to(url, copy, "mre-ops lock sampler", Duration::from_secs(10))?;
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let rows = client
            .query(
                "SELECT extract(epoch FROM clock_timestamp())::float8, c.relname::text, l.mode \
                 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 WHERE l.granted AND l.pid <> pg_backend_pid() \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND c.relkind IN ('r', 'p', 'm') AND c.relnamespace <> 'pg_catalog'::regnamespace \
                   AND c.relname <> '_prisma_migrations'",
                &[],
            )
            .context("sampling the locks on the copy (pg_locks)")?;
        for r in rows {
            seen.push((r.get(0), r.get(1), r.get(2)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(seen)
}

/// The strongest lock per table seen between `from` and `to`, and for how long.
fn locks_during(samples: &[(f64, String, String)], from: f64, to: f64) -> Vec<LockHeld> {
    let mut by_table: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for (t, table, mode) in samples
        .iter()
        .filter(|(t, _, _)| *t >= from && *t <= to + 0.05)
    {
        let rank = strength(mode);
        let e = by_table.entry(table).or_insert((rank, *t, *t));
        if rank > e.0 {
            *e = (rank, *t, *t);
        } else if rank == e.0 {
            e.1 = e.1.min(*t);
            e.2 = e.2.max(*t);
        }
    }
    by_table
        .into_iter()
        .map(|(table, (rank, first, last))| LockHeld {
            table: table.to_string(),
            mode: MODES[rank].1.to_string(),
            seconds: ((last - first + 0.05) * 100.0).round() / 100.0,
        })
        .collect()
}

const MODES: [(&str, &str); 8] = [
    ("AccessShareLock", "ACCESS SHARE"),
    ("RowShareLock", "ROW SHARE"),
    ("RowExclusiveLock", "ROW EXCLUSIVE"),
    ("ShareUpdateExclusiveLock", "SHARE UPDATE EXCLUSIVE"),
    ("ShareLock", "SHARE"),
    ("ShareRowExclusiveLock", "SHARE ROW EXCLUSIVE"),
    ("ExclusiveLock", "EXCLUSIVE"),
    ("AccessExclusiveLock", "ACCESS EXCLUSIVE"),
];

fn strength(mode: &str) -> usize {
    MODES.iter().position(|(m, _)| *m == mode).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongest_lock_and_its_time() {
        let s = vec![
            (10.0, "laps".to_string(), "AccessShareLock".to_string()),
            (10.1, "laps".to_string(), "AccessExclusiveLock".to_string()),
            (14.3, "laps".to_string(), "AccessExclusiveLock".to_string()),
            (20.0, "laps".to_string(), "AccessExclusiveLock".to_string()),
        ];
        let l = locks_during(&s, 10.0, 14.3);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].mode, "ACCESS EXCLUSIVE");
        assert!((l[0].seconds - 4.25).abs() < 0.01, "{l:?}");
    }
}
