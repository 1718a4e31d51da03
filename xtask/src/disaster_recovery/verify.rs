//! Disaster Recovery Procedures, Recovery Procedures: `backup verify` and
//! `drill`: a full restore into a scratch database, row counts against the
//! manifest, timed, with a report; nothing live is touched.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::adapters::clock::Utc;
use crate::adapters::output::{Output, Tone};
use crate::adapters::postgres::describe_url;
use crate::config::{Method, Ops};
use crate::core::files::{random_hex, write_private};
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;

use super::manifest::{human_size, load, Backup, Verification};
use super::pg_tools::{count_rows, drop_database, ident, list_tables, Target, Tool};
use super::DrillArgs;

impl<'a> Target<'a> {
    /// Restore `backup` into the (empty) database `db`, stopping at the first error.
    pub(super) fn restore_into(&self, backup: &Backup, db: &str) -> Result<()> {
        let (tool, stdin) = self.restore_tool(backup, db)?;
        self.run(&tool, stdin, &mut std::io::sink())
            .with_context(|| format!("restoring {} into database `{db}`", backup.name))
    }

    pub(super) fn restore_tool(
        &self,
        backup: &Backup,
        db: &str,
    ) -> Result<(Tool, Option<std::fs::File>)> {
        let opts = vec!["--exit-on-error".to_string(), "--no-password".to_string()];
        if let Some(p) = backup.manifest.as_ref().and_then(|m| m.on_server.as_ref()) {
            // Kept on the server: pg_restore reads it there, from a file,
            // so it loads in parallel too.
            if self.method != Method::Container {
                bail!(
                    "{} was kept on the server ({p}, in the database container): restoring it runs pg_restore there, \
                     which needs backups.method = \"container\" for `{}`",
                    backup.name,
                    self.env.name
                );
            }
            let Tool::Container(mut argv) = self.tool("pg_restore", &opts, db) else {
                unreachable!()
            };
            argv.push("--jobs=2".into());
            argv.push(p.clone());
            return Ok((Tool::Server(argv), None));
        }
        Ok(match self.method {
            // The archive streams in through the Engine API: nothing is copied into the container.
            Method::Container => (
                self.tool("pg_restore", &opts, db),
                Some(
                    std::fs::File::open(&backup.path)
                        .with_context(|| format!("opening {}", backup.path))?,
                ),
            ),
            Method::Host => {
                // From a file, pg_restore loads tables and builds indexes in
                // parallel (not from the container's stdin).
                let jobs = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .clamp(1, 4);
                let mut opts = opts;
                if jobs > 1 {
                    opts.push(format!("--jobs={jobs}"));
                }
                let Tool::Host(cmd) = self.tool("pg_restore", &opts, db) else {
                    unreachable!()
                };
                let mut cmd = cmd;
                cmd.args.push(backup.path.to_string());
                (Tool::Host(cmd), None)
            }
        })
    }

    pub(super) fn show_restore(&self, backup: &Backup, db: &str) -> String {
        match self.restore_tool(backup, db) {
            Ok((tool, Some(_))) => self.show(&tool, Some(backup.path.as_str()), None),
            Ok((tool, None)) => self.show(&tool, None, None),
            Err(e) => format!("(cannot open the backup: {e})"),
        }
    }

    /// Row counts of database `db` against the manifest; Err names the differences.
    pub(super) fn check_counts(&self, backup: &Backup, db: &str) -> Result<usize> {
        let m = backup.manifest()?;
        let mut client = self.connect(db)?;
        // Only names the restored database itself reports are put into SQL:
        // the manifest is a file anyone could have edited.
        let existing: std::collections::BTreeSet<String> = list_tables(&mut client)
            .with_context(|| format!("listing the tables of `{db}`"))?
            .into_iter()
            .collect();
        let tables: Vec<String> = m
            .tables
            .keys()
            .filter(|t| existing.contains(*t))
            .cloned()
            .collect();
        let got = count_rows(&mut client, &tables)?;
        let mut wrong = Vec::new();
        for (t, want) in &m.tables {
            match got.get(t) {
                Some(n) if n == want => {}
                Some(n) => wrong.push(format!("{t}: {n} rows, expected {want}")),
                None => wrong.push(format!("{t}: missing")),
            }
        }
        if !wrong.is_empty() {
            bail!(
                "the restored data differs from the manifest: {}",
                wrong.join("; ")
            );
        }
        Ok(m.tables.len())
    }

    pub(super) fn record(
        &self,
        backup: &Backup,
        ok: bool,
        seconds: f64,
        detail: &str,
    ) -> Result<()> {
        let Some(mut m) = backup.manifest.clone() else {
            return Ok(());
        };
        // Re-read: another step may have updated it.
        if let Ok(b) = load(&backup.path) {
            if let Some(fresh) = b.manifest {
                m = fresh;
            }
        }
        m.verifications.push(Verification {
            at: Utc::now().rfc3339(),
            ok,
            seconds: (seconds * 1000.0).round() / 1000.0,
            detail: detail.to_string(),
        });
        backup.save_manifest(&m)
    }

    /// Create an empty scratch database; its name. The caller drops it.
    pub(super) fn scratch(&self, tag: &str) -> Result<String> {
        let name = format!("mre_ops_{tag}_{}_{}", std::process::id(), random_hex(4)?);
        let mut admin = self.connect(&self.settings.maintenance_db)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0", ident(&name)))
            .with_context(|| {
                format!(
                    "creating the scratch database `{name}`: the user {} needs the CREATEDB privilege",
                    self.user
                )
            })?;
        Ok(name)
    }

    /// The rehearsal as a plan: checksum, a scratch database, a full
    /// restore into it, row counts, drop. `--dry-run` prints it; `rehearse`
    /// runs it. The scratch database's drop is also the undo of its creation,
    /// so a failing step never leaves it.
    ///
    /// With `keep`, the last step keeps the restored copy instead (a release
    /// rehearsal goes on with it); a failing step still drops it.
    pub(super) fn rehearsal_plan<'p>(
        &'p self,
        backup: &'p Backup,
        keep: bool,
    ) -> Plan<'p, Rehearsal> {
        let mut plan: Plan<Rehearsal> = Plan::new(format!(
            "rehearse the recovery of {} on `{}` (nothing live is touched)",
            backup.name, self.env.name
        ));
        plan.step(
            "Check the SHA-256 against the manifest",
            format!("SHA-256 and size of {}, against its manifest", backup.path),
            move |st: &mut Rehearsal| {
                self.check_checksum(backup)?;
                let m = backup.manifest()?;
                st.detail(format!("{} bytes, SHA-256 {}", m.size, m.sha256));
                Ok(())
            },
        );
        plan.step(
            "Create a scratch database",
            format!(
                "CREATE DATABASE mre_ops_verify_<pid>_<random> TEMPLATE template0 on {}",
                describe_url(&self.url)
            ),
            move |st: &mut Rehearsal| {
                st.creating_scratch = true;
                let name = self.scratch("verify")?;
                st.detail(format!("`{name}` on {}", describe_url(&self.url)));
                st.scratch = Some(name);
                Ok(())
            },
        )
        .undo(
            "DROP DATABASE the scratch database WITH (FORCE)",
            move |st: &mut Rehearsal| match st.scratch.take() {
                Some(name) => drop_database(self, &name),
                None => Ok(()),
            },
        );
        plan.step(
            "Restore into it (pg_restore --exit-on-error)",
            self.show_restore(backup, "mre_ops_verify_<pid>_<random>"),
            move |st: &mut Rehearsal| {
                st.creating_scratch = false;
                let db = st.scratch.clone().expect("created by the step before");
                self.restore_into(backup, &db)?;
                st.detail(format!("restored into `{db}` without an error"));
                Ok(())
            },
        );
        plan.step(
            "Compare per-table row counts with the manifest",
            "SELECT count(*) of every table in the scratch database, against the manifest",
            move |st: &mut Rehearsal| {
                let db = st.scratch.clone().expect("created");
                let n = self.check_counts(backup, &db)?;
                let rows: i64 = backup.manifest()?.tables.values().sum();
                st.detail(format!("{n} tables, {rows} rows, all as in the manifest"));
                Ok(())
            },
        );
        if keep {
            plan.step(
                "Keep the restored copy for the release rehearsal",
                "the scratch database stays until the rehearsal drops it (also when a step fails)",
                move |st: &mut Rehearsal| {
                    st.kept = st.scratch.take();
                    Ok(())
                },
            );
            return plan;
        }
        plan.step(
            "Drop the scratch database",
            "DROP DATABASE ... WITH (FORCE)   (also when a step fails)",
            move |st: &mut Rehearsal| {
                if let Some(name) = st.scratch.take() {
                    drop_database(self, &name)?;
                    st.detail(format!("`{name}` dropped"));
                }
                Ok(())
            },
        );
        plan
    }

    /// Run the rehearsal; each step timed, with what it found.
    pub(super) fn rehearse(&self, backup: &Backup, out: &Output, keep: bool) -> Rehearsal {
        let mut st = Rehearsal::default();
        let (result, timings) = self
            .rehearsal_plan(backup, keep)
            .execute_timed(out, &mut st);
        let details = std::mem::take(&mut st.details);
        st.steps = timings
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let detail = details.get(i).cloned().unwrap_or_default();
                (t.title, t.seconds, t.ok, detail)
            })
            .collect();
        if let Err(e) = result {
            // The failing step's own error, not the runner's summary line.
            let why = format!("{:#}", e.root_cause());
            if let Some(last) = st.steps.last_mut() {
                last.3 = why.clone();
            }
            // No scratch database could be made: the server's failure, not
            // the backup's.
            st.inconclusive = st.creating_scratch;
            st.failed = Some(why);
        }
        st
    }
}

/// What a rehearsal found, step by step.
#[derive(Default)]
pub(super) struct Rehearsal {
    /// (title, seconds, ok, detail)
    pub(super) steps: Vec<(String, f64, bool, String)>,
    pub(super) failed: Option<String>,
    /// The failure was the server's (no scratch database could be made),
    /// not the backup's: nothing was learnt about the backup.
    pub(super) inconclusive: bool,
    details: Vec<String>,
    scratch: Option<String>,
    creating_scratch: bool,
    /// The restored copy, kept (`keep`): the caller drops it.
    pub(super) kept: Option<String>,
}

impl Rehearsal {
    fn detail(&mut self, text: String) {
        self.details.push(text);
    }

    pub(super) fn seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.1).sum()
    }

    pub(super) fn steps_json(&self) -> Vec<serde_json::Value> {
        self.steps
            .iter()
            .map(
                |(t, s, ok, d)| serde_json::json!({"step": t, "seconds": s, "ok": ok, "detail": d}),
            )
            .collect()
    }

    /// One line a step: a mark, its title, how long it took, what it found.
    pub(super) fn step_lines(&self, out: &Output) -> Vec<String> {
        self.steps
            .iter()
            .map(|(title, secs, ok, d)| {
                let mark = if *ok {
                    out.paint(Tone::Good, "✓")
                } else {
                    out.paint(Tone::Bad, "✗")
                };
                format!("  {mark} {title} ({secs:.1}s): {d}")
            })
            .collect()
    }
}

pub fn drill(ops: &Ops, out: &Output, args: &DrillArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let t = Target::new(&env, None)?;
    if args.dry_run && args.from_offsite {
        let (dest, _, path) = t.offsite_ssh()?.ok_or_else(|| {
            crate::config::config_error(format!(
                "--from-offsite needs environments.{}.backups.offsite = \"ssh://...\"",
                env.name
            ))
        })?;
        out.line(&format!(
            "would fetch {} from ssh://{dest}{path}/{}/ (age --decrypt with ${}), check its SHA-256, then run the drill's steps on it:",
            args.backup,
            env.name,
            t.settings.offsite_identity_env.as_deref().unwrap_or("?")
        ));
        out.line("  restore into a scratch database, compare the row counts, drop it; report to the backup folder");
        return Ok(());
    }
    if args.dry_run {
        let backup = t.resolve(&args.backup)?;
        t.rehearsal_plan(&backup, false).print(out);
        if !out.json {
            out.line(&format!(
                "  then: write the report to {}/drill-TIMESTAMP.md",
                t.folder
            ));
        }
        return Ok(());
    }
    let started = Utc::now();
    let clock = Instant::now();
    let find = Instant::now();
    // From the off-site copy: fetched beside the backups (not into a small
    // /tmp), removed with its folder when the drill ends.
    let fetched;
    let backup = if args.from_offsite {
        super::manifest::create_dir_private(&t.folder)?;
        fetched = crate::core::files::TempDir::new_in(&t.folder, ".offsite-drill")?;
        t.fetch_offsite(&args.backup, fetched.path(), out)?
    } else {
        t.resolve(&args.backup)?
    };
    let find_secs = find.elapsed().as_secs_f64();
    let m = backup.manifest()?.clone();
    let mut r = t.rehearse(&backup, out, false);
    r.steps.insert(
        0,
        (
            if args.from_offsite {
                "Fetch and decrypt the off-site copy".into()
            } else {
                "Find the backup".into()
            },
            find_secs,
            true,
            backup.path.to_string(),
        ),
    );
    let total = clock.elapsed().as_secs_f64();
    let ok = r.failed.is_none();
    // A server that could not be reached says nothing about the backup.
    if !r.inconclusive {
        t.record(
            &backup,
            ok,
            r.seconds(),
            &format!("drill: {}", r.failed.as_deref().unwrap_or("ok")),
        )?;
    }

    let rows: i64 = m.tables.values().sum();
    let mut md = format!(
        "# Recovery drill: `{}`\n\n\
         - Started: {}\n- Result: **{}**\n- Total time: {:.1} s\n\
         - Backup: `{}` ({}, taken {} for \"{}\")\n\
         - Data as of: {}\n- Server: PostgreSQL {}; {}\n- Method: {:?}\n\
         - Live database: not touched (restored into a scratch database on {}, then dropped)\n\n\
         ## Steps\n\n| step | seconds | result | detail |\n|---|---:|---|---|\n",
        env.name,
        started.rfc3339(),
        if ok { "passed" } else { "FAILED" },
        total,
        backup.name,
        human_size(m.size),
        m.started_at,
        m.reason,
        m.started_at,
        m.server_version,
        m.pg_dump_version,
        t.method,
        describe_url(&t.url),
    );
    for (title, secs, ok, detail) in &r.steps {
        md.push_str(&format!(
            "| {title} | {secs:.2} | {} | {} |\n",
            if *ok { "ok" } else { "FAILED" },
            detail.replace('|', "\\|").replace('\n', " ")
        ));
    }
    md.push_str(&format!(
        "\n## What was checked\n\n\
         - The archive's SHA-256 and size against its manifest.\n\
         - A full `pg_restore --exit-on-error` into an empty scratch database.\n\
         - Row counts of all {} tables ({rows} rows) against the counts taken in the dump's own snapshot.\n\n\
         ## Tables\n\n| table | rows |\n|---|---:|\n",
        m.tables.len()
    ));
    for (t, n) in &m.tables {
        md.push_str(&format!("| {t} | {n} |\n"));
    }
    md.push_str(&format!(
        "\nTo restore this backup for real: `cargo xtask restore {} {}`\n",
        env.name, backup.name
    ));
    let report = t.folder.join(format!("drill-{}.md", started.compact()));
    write_private(&report, &md)?;
    let mut doc = Report::new(serde_json::json!({
        "environment": env.name, "ok": ok, "backup": backup.name, "report": report.as_str(),
        "seconds": total,
        "steps": r.steps_json(),
    }));
    for l in r.step_lines(out) {
        doc.line(l);
    }
    doc.line(format!("Drill report: {report}")).summary(md);
    doc.emit(out);
    match r.failed {
        None => Ok(()),
        Some(why) => bail!(
            "the recovery drill of `{}` FAILED: {why} (report: {report})",
            env.name
        ),
    }
}
