//! Disaster Recovery, Recovery Procedures: "Assess damage" and "Verify data
//! integrity" before choosing what to do. `assess` checks the live database
//! for corruption (`pg_amcheck`, where the backups' tools run), compares its
//! row counts with the latest backup's manifest, says how old the newest
//! good backup is, and what a restore to it would bring back and lose. It
//! changes nothing, unless asked to install the amcheck extension.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::adapters::output::Output;
use crate::config::Ops;
use crate::core::check::{self, Check};
use crate::core::incident::human_secs;
use crate::core::session;
use crate::core::steps::Plan;

use super::manifest::now_unix;
use super::pg_tools::{count_rows, list_tables, Target, Tool};

/// Assess the damage before choosing a recovery.
///
/// Runbook: Disaster Recovery, Recovery Procedures, "Assess damage" and
/// "Verify data integrity".
///
/// `pg_amcheck` on the live database (heap and B-tree indexes; where the
/// backups' tools run: inside the database container for `method =
/// "container"`, on this machine for `"host"`), row counts per table
/// against the latest backup's manifest (tables missing or new), the age of
/// the newest good backup, and what `restore ENV latest` would bring back
/// and lose. Changes nothing, except `--install-amcheck`. Exit 1 when
/// corruption is found or the database cannot be reached.
#[derive(clap::Args, Debug)]
pub struct AssessArgs {
    #[arg(default_value = "development")]
    pub env: String,
    /// Run `CREATE EXTENSION IF NOT EXISTS amcheck` in the database first
    /// (needs a superuser); without it, a missing extension is reported.
    #[arg(long)]
    pub install_amcheck: bool,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Default)]
struct Found {
    checks: Vec<Check>,
    /// Rows per table now, when the database answered.
    now: Option<BTreeMap<String, i64>>,
    /// What `restore latest` would bring back and lose.
    restore: serde_json::Value,
}

const CORRUPTION: &str = "corruption (pg_amcheck)";

pub fn assess(ops: &Ops, out: &Output, args: &AssessArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    let t = &t;
    let started = Instant::now();
    let amcheck = t.tool("pg_amcheck", &amcheck_opts(t), &t.database);
    let mut plan: Plan<Found> = Plan::new(format!("assess {}", env.name));
    if args.install_amcheck {
        plan.step(
            "Install amcheck",
            format!(
                "CREATE EXTENSION IF NOT EXISTS amcheck   (in database `{}`; kept: \
                 `DROP EXTENSION amcheck` removes it)",
                t.database
            ),
            move |_| {
                t.connect(&t.database)?
                    .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                    .context(
                        "installing the amcheck extension (needs a superuser; the server's \
                         PostgreSQL must ship contrib: Debian's postgresql-15 does)",
                    )
            },
        );
    }
    plan.step(
        "Check the live database for corruption",
        t.show(&amcheck, None, None),
        move |f: &mut Found| {
            f.checks.push(corruption(t, &amcheck));
            Ok(())
        },
    );
    plan.step(
        "Count rows against the latest backup",
        format!(
            "SELECT count(*) per table of `{}` (one snapshot), against the manifest of \
             `backup list`'s latest usable backup in {}",
            t.database, t.folder
        ),
        move |f: &mut Found| {
            counts(t, f);
            Ok(())
        },
    );
    plan.step(
        "Age of the newest good backup",
        format!("the manifests in {}", t.folder),
        move |f: &mut Found| {
            f.checks.push(backup_age(t));
            Ok(())
        },
    );
    plan.step(
        "WAL archive continuity",
        "the continuous archive's gaps (`backup status`), when one is configured",
        move |f: &mut Found| {
            f.checks.push(wal_continuity(t));
            Ok(())
        },
    );
    if args.dry_run {
        plan.print(out);
        return Ok(());
    }
    let mut found = Found::default();
    let quiet = Output::new(out.json, true, 0);
    let (result, _) = plan.execute_timed(&quiet, &mut found);
    result?;
    let mut r = check::checklist(
        out,
        "assess",
        &format!("Damage assessment of `{}`", env.name),
        serde_json::json!({
            "environment": env.name, "database": t.database,
            "rows_now": found.now, "restore_latest": found.restore,
        }),
        &found.checks,
        started.elapsed(),
    );
    for l in restore_lines(&found.restore, &env.name) {
        r.line(l);
    }
    r.emit(out);
    let failed: Vec<&Check> = found.checks.iter().filter(|c| !c.ok).collect();
    if !failed.is_empty() {
        bail!(
            "the assessment of `{}` found damage:{}",
            env.name,
            check::failures(&found.checks)
        );
    }
    Ok(())
}

fn amcheck_opts(t: &Target) -> Vec<String> {
    vec![
        format!("--maintenance-db={}", t.settings.maintenance_db),
        "--heapallindexed".into(),
    ]
}

/// Run a tool: its exit code, standard output and standard error.
fn run_tool(t: &Target, tool: &Tool) -> Result<(i64, String, String)> {
    let mut stdout = Vec::new();
    let (code, stderr) = match tool {
        Tool::Container(argv) | Tool::Server(argv) => {
            let container = t.container.as_deref().expect("checked in Target::new");
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let env: Vec<String> = t
                .password
                .iter()
                .map(|p| format!("PGPASSWORD={p}"))
                .collect();
            let o = t
                .docker()?
                .exec(container, &argv, &env, None, &mut stdout)
                .with_context(|| format!("running pg_amcheck in container {container}"))?;
            (o.exit_code, o.stderr)
        }
        Tool::Host(cmd) => cmd.stream(None, &mut stdout).with_context(|| {
            format!(
                "running {}: install the PostgreSQL 15 client tools (`apt-get install \
                 postgresql-client-15`) or set backups.pg_bin in ops.toml",
                cmd.program
            )
        })?,
    };
    Ok((code, String::from_utf8_lossy(&stdout).into_owned(), stderr))
}

fn corruption(t: &Target, tool: &Tool) -> Check {
    let start = Instant::now();
    let target = format!("database `{}`", t.database);
    let name = CORRUPTION.to_string();
    let installed = t.connect(&t.database).and_then(|mut c| {
        let row = c
            .query_one(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'amcheck'), \
                 EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')",
                &[],
            )
            .context("looking for the amcheck extension")?;
        Ok((row.get::<_, Option<String>>(0), row.get::<_, bool>(1)))
    });
    let mut c = match installed {
        Err(e) => Check::fail(
            name,
            "integrity",
            target,
            "the database to answer",
            format!("{e:#}"),
            format!(
                "the database is down or unreachable: `cargo xtask status {0}`, `cargo xtask logs {0}`; \
                 with the server lost, restore (`cargo xtask restore {0} latest`)",
                t.env.name
            ),
            start.elapsed(),
        ),
        Ok((None, available)) => {
            let mut c = Check::warn(
                name,
                "integrity",
                target,
                format!(
                    "not checked: the amcheck extension is not installed in `{}`{}",
                    t.database,
                    if available {
                        ""
                    } else {
                        " (nor available on the server: install PostgreSQL's contrib modules)"
                    }
                ),
                start.elapsed(),
            );
            c.next = Some(format!(
                "`cargo xtask assess {} --install-amcheck` (CREATE EXTENSION amcheck; needs a superuser)",
                t.env.name
            ));
            c
        }
        Ok((Some(_), _)) => match run_tool(t, tool) {
            Err(e) => {
                let mut c = Check::warn(
                    name,
                    "integrity",
                    target,
                    format!("not checked: {e:#}"),
                    start.elapsed(),
                );
                c.next = Some("run pg_amcheck by hand (the command above, `assess --dry-run`)".into());
                c
            }
            Ok((0, _, _)) => Check::pass(
                name,
                "integrity",
                target,
                "no corruption in heap tables and B-tree indexes (pg_amcheck --heapallindexed)".into(),
                start.elapsed(),
            ),
            Ok((code, stdout, stderr)) if !stdout.trim().is_empty() => {
                // A finding is a line naming the relation, then indented
                // lines saying what is wrong.
                let mut lines: Vec<String> = Vec::new();
                for l in stdout.lines().filter(|l| !l.trim().is_empty()) {
                    match lines.last_mut() {
                        Some(last) if l.starts_with(char::is_whitespace) => {
                            last.push(' ');
                            last.push_str(l.trim());
                        }
                        _ => lines.push(l.trim().to_string()),
                    }
                }
                Check::fail(
                    name,
                    "integrity",
                    target,
                    "no corruption",
                    format!(
                        "pg_amcheck exit {code}, {} finding(s): {}{}",
                        lines.len(),
                        lines.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
                        if stderr.trim().is_empty() { String::new() } else { format!(" ({})", stderr.trim()) }
                    ),
                    format!(
                        "do not write more: stop the application (`cargo xtask down {0}` keeps volumes), \
                         keep a copy of the data folder, then restore (`cargo xtask restore {0} latest`) \
                         or REINDEX what only an index lost",
                        t.env.name
                    ),
                    start.elapsed(),
                )
            }
            Ok((code, _, stderr)) => {
                let mut c = Check::warn(
                    name,
                    "integrity",
                    target,
                    format!("not checked: pg_amcheck failed (exit {code}): {}", stderr.trim()),
                    start.elapsed(),
                );
                c.next = Some("run pg_amcheck by hand (the command above, `assess --dry-run`)".into());
                c
            }
        },
    };
    c.millis = start.elapsed().as_millis() as u64;
    c
}

fn counts(t: &Target, f: &mut Found) {
    let start = Instant::now();
    let target = format!("database `{}`", t.database);
    let now = t.connect(&t.database).and_then(|mut c| {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .context("starting a snapshot to count rows in")?;
        let tables = list_tables(&mut c)?;
        count_rows(&mut c, &tables)
    });
    let latest = t.resolve("latest").and_then(|b| {
        let m = b.manifest()?.clone();
        Ok((b.name, m))
    });
    let name = "rows against the latest backup".to_string();
    let (now, (backup, m)) = match (now, latest) {
        (Err(e), latest) => {
            // The database is gone or broken: a restore brings back all of
            // the backup; what it loses cannot be counted.
            if let Ok((backup, m)) = latest {
                let all: Vec<String> = m
                    .tables
                    .iter()
                    .map(|(t, n)| format!("{t} ({n} rows)"))
                    .collect();
                f.restore = serde_json::json!({
                    "backup": backup, "taken_at": m.started_at,
                    "age_secs": now_unix() - m.started_unix,
                    "brings_back": { "tables": all, "rows": [] },
                    "loses": { "tables": [], "rows": [], "since": m.started_at, "uncounted": true },
                });
            }
            f.checks.push(Check::skip(
                name,
                "data",
                target,
                format!("could not count the rows now: {e:#}"),
            ));
            return;
        }
        (Ok(now), Err(e)) => {
            f.now = Some(now);
            f.checks
                .push(Check::skip(name, "data", target, format!("{e:#}")));
            return;
        }
        (Ok(now), Ok(l)) => (now, l),
    };
    let then = &m.tables;
    let names: BTreeSet<&String> = now.keys().chain(then.keys()).collect();
    let (mut missing, mut new, mut fewer, mut more) = (vec![], vec![], vec![], vec![]);
    let mut tables = serde_json::Map::new();
    for t in names {
        let (n, b) = (now.get(t).copied(), then.get(t).copied());
        tables.insert(t.clone(), serde_json::json!({"now": n, "backup": b}));
        match (n, b) {
            (None, Some(b)) => missing.push(format!("{t} ({b} rows then)")),
            (Some(n), None) => new.push(format!("{t} ({n} rows)")),
            (Some(n), Some(b)) if n < b => fewer.push(format!("{t} {n} < {b}")),
            (Some(n), Some(b)) if n > b => more.push(format!("{t} +{}", n - b)),
            _ => {}
        }
    }
    let age = now_unix() - m.started_unix;
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("MISSING since the backup: {}", missing.join(", ")));
    }
    if !fewer.is_empty() {
        parts.push(format!("fewer rows now: {}", fewer.join(", ")));
    }
    if !new.is_empty() {
        parts.push(format!("new tables: {}", new.join(", ")));
    }
    if !more.is_empty() {
        parts.push(format!("more rows now: {}", more.join(", ")));
    }
    let detail = format!(
        "{} tables now, {} in {backup} ({} ago){}",
        now.len(),
        then.len(),
        human_secs(age),
        if parts.is_empty() {
            ": every count matches".to_string()
        } else {
            format!("; {}", parts.join("; "))
        }
    );
    let lost_something = !missing.is_empty() || !fewer.is_empty();
    let mut c = if lost_something {
        let mut c = Check::warn(name, "data", target, detail, start.elapsed());
        c.next = Some(format!(
            "`cargo xtask restore {} {backup} --reason \"…\"` brings those rows back (and loses what was written since, below)",
            t.env.name
        ));
        c
    } else {
        Check::pass(name, "data", target, detail, start.elapsed())
    };
    c.millis = start.elapsed().as_millis() as u64;
    f.checks.push(c);
    f.restore = serde_json::json!({
        "backup": backup, "taken_at": m.started_at, "age_secs": age,
        "brings_back": { "tables": missing, "rows": fewer },
        "loses": { "tables": new, "rows": more, "since": m.started_at },
        "tables": tables,
    });
    f.now = Some(now);
}

fn restore_lines(r: &serde_json::Value, env: &str) -> Vec<String> {
    let Some(backup) = r["backup"].as_str() else {
        return vec![];
    };
    let list = |v: &serde_json::Value| -> String {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "nothing".into()
        } else {
            items.join(", ")
        }
    };
    vec![
        format!(
            "If you restore `latest` ({backup}, data as of {}, {} ago):",
            r["taken_at"].as_str().unwrap_or("?"),
            human_secs(r["age_secs"].as_i64().unwrap_or(0))
        ),
        format!(
            "  brings back: tables {}; rows {}",
            list(&r["brings_back"]["tables"]),
            list(&r["brings_back"]["rows"])
        ),
        if r["loses"]["uncounted"] == true {
            format!(
                "  loses every write since {} (not counted: the database did not answer)",
                r["taken_at"].as_str().unwrap_or("?")
            )
        } else {
            format!(
                "  loses every write since {} (kept in the safety backup and the replaced database): \
                 tables {}; rows {}",
                r["taken_at"].as_str().unwrap_or("?"),
                list(&r["loses"]["tables"]),
                list(&r["loses"]["rows"])
            )
        },
        format!("  `cargo xtask restore {env} latest --dry-run` shows its steps."),
    ]
}

fn backup_age(t: &Target) -> Check {
    let name = "newest good backup".to_string();
    let target = t.folder.to_string();
    let backups = match t.backups() {
        Ok(b) => b,
        Err(e) => {
            return Check::warn(name, "backups", target, format!("{e:#}"), Duration::ZERO);
        }
    };
    let now = now_unix();
    let verified = backups.iter().find(|b| {
        b.manifest
            .as_ref()
            .is_some_and(|m| m.verified() == Some(true))
    });
    let usable = t.resolve("latest").ok();
    let describe = |b: &super::manifest::Backup| {
        let m = b.manifest.as_ref().expect("resolved backups have one");
        (
            now - m.started_unix,
            format!("{} ({} ago)", b.name, human_secs(now - m.started_unix)),
        )
    };
    match (verified, usable) {
        (Some(v), _) => {
            let (age, what) = describe(v);
            let detail = format!("verified: {what}");
            if age > 26 * 3600 {
                let mut c = Check::warn(
                    name,
                    "backups",
                    target,
                    format!("{detail}: older than a day"),
                    Duration::ZERO,
                );
                c.next = Some(format!(
                    "`cargo xtask backup schedule show {}`: is the daily backup running?",
                    t.env.name
                ));
                c
            } else {
                Check::pass(name, "backups", target, detail, Duration::ZERO)
            }
        }
        (None, Some(u)) => {
            let mut c = Check::warn(
                name,
                "backups",
                target,
                format!("none verified; the newest usable is {}", describe(&u).1),
                Duration::ZERO,
            );
            c.next = Some(format!("`cargo xtask backup verify {} latest`", t.env.name));
            c
        }
        (None, None) => {
            let mut c = Check::warn(
                name,
                "backups",
                target,
                "no usable backup".into(),
                Duration::ZERO,
            );
            c.next = Some(format!(
                "`cargo xtask backup create {}` while the data is still there",
                t.env.name
            ));
            c
        }
    }
}

/// HOOK (issue 21, part 1): the continuous WAL archive's continuity joins
/// here. When `[backups] continuous` exists, this asks what `backup status
/// ENV` knows (the last base backup, the last archived segment, gaps) and
/// FAILs on a gap; until then it says there is no archive to check.
fn wal_continuity(t: &Target) -> Check {
    use super::continuous::{lsn_value, segment_name, Archive};
    let (name, kind, target) = (
        "WAL archive continuity".to_string(),
        "backups",
        t.folder.to_string(),
    );
    if !t.settings.continuous {
        return Check::skip(
            name,
            kind,
            target,
            "no continuous WAL archive configured: a restore goes back to a dump's time only"
                .into(),
        );
    }
    let start = std::time::Instant::now();
    let next = format!("`cargo xtask backup status {}` says what to do", t.env.name);
    // (the missing segments, the base backup's timeline and segment size, how many are there)
    type Found = (Vec<u64>, Option<(u32, u64)>, usize);
    let found = (|| -> Result<Found> {
        let a = Archive::new(t)?;
        let bases = a.bases()?;
        let Some(b) = bases.first() else {
            return Ok((Vec::new(), None, 0));
        };
        let segments = a.segments(b.segment_bytes)?;
        let from = lsn_value(&b.start_lsn).unwrap_or(0) / b.segment_bytes;
        Ok((
            Archive::gaps(&segments, from),
            Some((b.timeline, b.segment_bytes)),
            segments.len(),
        ))
    })();
    match found {
        Err(e) => Check::fail(name, kind, target, "a readable archive", format!("{e:#}"), next, start.elapsed()),
        Ok((_, None, _)) => Check::fail(
            name,
            kind,
            target,
            "a base backup",
            "none in the archive".into(),
            format!("`cargo xtask backup base {}`", t.env.name),
            start.elapsed(),
        ),
        Ok((gaps, Some((tli, seg)), _)) if !gaps.is_empty() => Check::fail(
            name,
            kind,
            target,
            "every WAL segment since the last base backup",
            format!("{} missing (first: {})", gaps.len(), segment_name(tli, gaps[0], seg)),
            next,
            start.elapsed(),
        ),
        Ok((_, Some(_), count)) => Check::pass(
            name,
            kind,
            target,
            format!("{count} segment(s) since the last base backup, no gap: a restore reaches the last archived second"),
            start.elapsed(),
        ),
    }
}
