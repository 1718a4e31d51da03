//! Disaster Recovery Procedures: verified database backups (runbook: Backup
//! Strategy, "Daily, 30 days, secure off-site location"; pre-deployment
//! "Backup of production database created"), restoring one (runbook:
//! Database Rollback, "Backup restoration"; Migration Rollback, "If
//! migration fails": stop the application, restore, retry), and a recovery
//! drill that rehearses the Recovery Procedures without touching anything
//! live.
//!
//! A backup is `<dir>/<env>/<database>-<UTC timestamp>.dump` (`pg_dump -Fc`)
//! and a manifest beside it, `<same name>.json`: SHA-256, size, versions,
//! times, and each table's row count taken in the dump's own snapshot. A
//! file without a manifest is never treated as a backup.
//!
//! Continuous archiving (`backup continuous`, `backup base`, `backup
//! status`) keeps base backups and every WAL segment in
//! `<dir>/<env>/archive/`; `restore --to-time/--to-latest` replays them.
//!
//! Split by concern: `manifest`, `pg_tools`, `store`, `create`, `verify`
//! (and drill), `restore`, `assess` (damage), `incidents` (the records
//! restores write), `schedule` (the timers), `continuous` (the archive),
//! `archiving` (its commands), `pitr` and `replay` (point-in-time
//! restore); this file holds the command line.

mod archiving;
mod assess;
mod continuous;
mod create;
mod incidents;
mod manifest;
mod offsite;
mod pg_tools;
mod pitr;
mod replay;
mod restore;
mod schedule;
mod server;
mod store;
mod verify;

use anyhow::{bail, Context, Result};

use crate::adapters::output::Output;
use crate::adapters::postgres::describe_url;
use crate::config::{config_error, Method, Ops};
use crate::core::report::Report;
use crate::core::session;

use manifest::{human_size, now_unix};
use pg_tools::Target;
use store::{list, prune};

pub use archiving::{archive_lag, ArchiveLag};
pub use assess::{assess, AssessArgs};
pub use create::create_backup;
pub(crate) use incidents::reason;
pub use incidents::{incidents, IncidentsArgs};
pub use replay::check_restored_volume;
pub use restore::restore;
pub use verify::drill;

/// Create, list, verify and prune database backups.
///
/// Runbook: Disaster Recovery Procedures, Backup Strategy; pre-deployment
/// "Backup of production database created".
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub cmd: BackupCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum BackupCmd {
    /// `pg_dump -Fc` of the environment's database into the backup folder,
    /// with a manifest (SHA-256, sizes, versions, per-table row counts from
    /// the dump's own snapshot); copied off-site when configured. Prints
    /// the path written.
    Create {
        #[arg(default_value = "development")]
        env: String,
        /// Where pg_dump runs (default: `backups.method` in ops.toml).
        #[arg(long, value_enum)]
        method: Option<Method>,
        /// Leave the dump on the database's server, in `backups.server_dir`
        /// (a mount of the server's disk in the database container); only
        /// the manifest comes here. For databases too large to copy each day.
        #[arg(long)]
        keep_on_server: bool,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// The environment's backups, newest first: age, size, verified or not.
    List {
        #[arg(default_value = "development")]
        env: String,
    },
    /// Check a backup: SHA-256 against its manifest, a full restore into a
    /// scratch database (created and dropped here), and per-table row counts
    /// against the manifest. The result is recorded in the manifest.
    Verify {
        #[arg(default_value = "development")]
        env: String,
        /// A path, a name from `backup list`, or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a backup back from the off-site host (`backups.offsite =
    /// "ssh://..."`): decrypted with the age identity in
    /// `offsite_identity_env`, checked against its manifest's SHA-256, and
    /// kept in the backup folder (then `restore ENV NAME` takes it).
    Fetch {
        env: String,
        /// A name (as `backup list` shows it) or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// The automated backup schedule (runbook: Backup Strategy, "Automated
    /// backup schedule"): a systemd timer and service (or a cron entry where
    /// systemd is not PID 1, or what to add when neither can be written) that
    /// runs this checkout's `cargo xtask` daily (backup create, verify,
    /// prune; 03:17 UTC) and monthly (drill; 04:47 UTC on the 1st), as the
    /// GitHub backup.yml workflow does. The environment's secrets must come
    /// from its env file: the units carry none. `uninstall` removes exactly
    /// the files `install` wrote (they carry a marker line).
    Schedule {
        action: schedule::ScheduleAction,
        #[arg(default_value = "development")]
        env: String,
        /// systemd, cron, or print (write nothing); default: what this
        /// machine has.
        #[arg(long, value_enum, default_value = "auto")]
        init: schedule::Init,
        /// Install under this folder instead of / (tests, images): ROOT/etc/…;
        /// systemd is then enabled with `systemctl --root`, nothing started.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: camino::Utf8PathBuf,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Continuous archiving (runbook: Backup Strategy, to the minute):
    /// `start` checks the server, allows replication connections, creates a
    /// replication slot, starts `pg_receivewal --synchronous` in a container
    /// from the database's image (restart unless-stopped) and takes a base
    /// backup; `stop` removes the archiver and drops the slot (the archive
    /// is kept).
    Continuous {
        #[command(subcommand)]
        cmd: ContinuousCmd,
    },
    /// A base backup for continuous archiving (`pg_basebackup -Ft -X
    /// stream`, in a container from the database's image) into
    /// `<dir>/<env>/archive/base/<UTC>/`.
    Base {
        #[arg(default_value = "development")]
        env: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// The continuous archive: last base backup, last WAL segment, the lag
    /// (bytes and seconds) and any gap since the base backup. Exit 1, with
    /// what to do, when the archive cannot bring the database back to now.
    Status {
        #[arg(default_value = "development")]
        env: String,
    },
    /// Delete backups the retention policy (`keep_days`, `keep_min`) lets
    /// go; never the newest verified one. At an off-site host, by
    /// `offsite_keep_days` there.
    Prune {
        #[arg(default_value = "development")]
        env: String,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ContinuousCmd {
    /// Start archiving the environment's WAL (see `backup continuous`).
    Start {
        env: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop archiving: remove the archiver, drop the slot; keep the archive.
    Stop {
        env: String,
        /// Print the steps without running them.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Restore an environment's database from a backup.
///
/// Runbook: Database Rollback, "Backup restoration"; Migration Rollback, "If
/// migration fails".
///
/// Steps: refuse a backup whose checksum does not match; on a protected
/// environment ask for confirmation; stop the application containers; take
/// a safety backup; restore into a new database and check its row counts;
/// swap it in for the live one in one transaction; start the application;
/// run the health checks. A failure before the swap leaves the database as
/// it was. Every run, failed ones too, writes an incident record (`cargo
/// xtask incidents ENV`).
///
/// With `--to-time` or `--to-latest` (continuous archiving): the newest
/// base backup before the target and the archived WAL after it go into a
/// new volume, a container from the database's image replays them and
/// promotes, and it is swapped in for the database container (the old one
/// and its volume kept, renamed); then health, and archiving starts again.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// A path, a name from `backup list`, or `latest`.
    #[arg(required_unless_present_any = ["to_time", "to_latest"], conflicts_with_all = ["to_time", "to_latest"])]
    pub backup: Option<String>,
    /// Point-in-time restore from the continuous archive, to this time
    /// (with its offset: "2026-11-29 14:01:59+00").
    #[arg(long, value_name = "TIME", conflicts_with = "to_latest")]
    pub to_time: Option<String>,
    /// Point-in-time restore from the continuous archive, to the last
    /// transaction archived.
    #[arg(long)]
    pub to_latest: bool,
    /// Confirm replacing a protected environment's database (for CI).
    #[arg(long)]
    pub yes: bool,
    /// Accept a backup taken of another environment or database.
    #[arg(long)]
    pub from_other_environment: bool,
    /// Accept a backup whose last verification failed.
    #[arg(long)]
    pub force_unverified: bool,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for health afterwards (default: deploy.wait_secs).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Why, for the incident record (runbook: "Document incident"); on a
    /// protected environment it is asked for on the terminal unless given
    /// or --yes.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The operation the incident record names, when another command
    /// restores (`rollback --with-db to VERSION`); `restore` otherwise.
    #[arg(skip)]
    pub via: Option<String>,
}

/// Rehearse a restore from the latest backup, touching nothing live.
///
/// Rehearse the Recovery Procedures without touching anything live (runbook:
/// Disaster Recovery, Recovery Procedures): restore the latest backup into a
/// scratch database, verify it, time each step, and write a markdown report
/// beside the backups.
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    #[arg(default_value = "development")]
    pub env: String,
    /// The backup to rehearse with: a path, a name from `backup list`, or
    /// `latest` (the newest that has not failed verification).
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// Rehearse from the off-site host's copy alone (`backups.offsite =
    /// "ssh://..."`), as after losing the server: fetched, decrypted with
    /// the identity in `offsite_identity_env`, checked, restored into a
    /// scratch database, then removed from here.
    #[arg(long)]
    pub from_offsite: bool,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn backup(ops: &Ops, out: &Output, args: &BackupArgs) -> Result<()> {
    match &args.cmd {
        BackupCmd::Create {
            env,
            method,
            keep_on_server,
            dry_run,
        } => {
            let env = session::env(ops, out, env)?;
            let mut t = Target::new(&env, *method)?;
            if *keep_on_server {
                t.server_dir()?;
                t.on_server = true;
            }
            if *dry_run {
                t.create_plan(out, "manual").print(out);
                return Ok(());
            }
            let b = {
                let _s = out.section(&format!(
                    "Back up `{}` ({})",
                    env.name,
                    describe_url(&t.url)
                ));
                t.create(out, "manual")?
            };
            let m = b.manifest.as_ref().expect("written");
            if out.json {
                out.json_doc(&serde_json::json!({
                    "environment": env.name, "path": b.path.as_str(), "name": b.name, "manifest": m,
                }));
            } else {
                let rows: i64 = m.tables.values().sum();
                out.line(&format!(
                    "Backed up `{}`: {} tables, {rows} rows, {}, SHA-256 {}{}",
                    env.name,
                    m.tables.len(),
                    human_size(m.size),
                    &m.sha256[..16],
                    match (&m.offsite, &m.on_server) {
                        (_, Some(p)) => format!(
                            ", kept on the server at {p} (in {})",
                            t.container.as_deref().unwrap_or("?")
                        ),
                        (Some(o), None) => format!(", copied to {}", o.path),
                        (None, None) => String::new(),
                    }
                ));
                // The path alone on the last line, for scripts.
                println!("{}", b.path);
            }
            out.step_summary(&format!("Backup of `{}`: `{}`", env.name, b.path));
            out.github_output(&[("backup_path", b.path.as_str()), ("backup_name", &b.name)]);
            Ok(())
        }
        BackupCmd::List { env } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            list(&t, out)
        }
        BackupCmd::Verify {
            env,
            backup,
            dry_run,
        } => {
            if !ops.names().contains(&env.as_str())
                && (env == "latest" || env.contains('/') || env.ends_with(".dump"))
            {
                return Err(config_error(format!(
                    "`{env}` is a backup, not an environment: the environment comes first, \
                     e.g. `cargo xtask backup verify development {env}`"
                )));
            }
            let env = session::env(ops, out, env)?;
            verify_backup(&env, out, backup, *dry_run)
        }
        BackupCmd::Schedule {
            action,
            env,
            init,
            root,
            dry_run,
        } => {
            let env = session::env(ops, out, env)?;
            schedule::schedule(ops, &env, out, *action, root, *init, *dry_run)
        }
        BackupCmd::Continuous { cmd } => match cmd {
            ContinuousCmd::Start { env, dry_run } => {
                let env = session::env(ops, out, env)?;
                archiving::start(&env, out, *dry_run)
            }
            ContinuousCmd::Stop { env, dry_run } => {
                let env = session::env(ops, out, env)?;
                archiving::stop(&env, out, *dry_run)
            }
        },
        BackupCmd::Base { env, dry_run } => {
            let env = session::env(ops, out, env)?;
            archiving::base(&env, out, *dry_run)
        }
        BackupCmd::Status { env } => {
            let env = session::env(ops, out, env)?;
            archiving::status(&env, out)
        }
        BackupCmd::Prune { env, dry_run } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            let _lock = crate::core::lock::unless_dry_run(
                *dry_run,
                &env,
                out,
                &format!("backup prune {}", env.name),
            )?;
            prune(&t, out, *dry_run)?;
            if t.offsite_ssh()?.is_some() {
                let gone = t.prune_offsite(out, *dry_run)?;
                out.line(&format!(
                    "{} {} backup(s) of `{}` off-site (keep {} days there, at least {})",
                    if *dry_run { "Would delete" } else { "Deleted" },
                    gone.len(),
                    env.name,
                    t.settings.offsite_keep_days.unwrap_or(t.settings.keep_days),
                    t.settings.keep_min
                ));
            }
            Ok(())
        }
        BackupCmd::Fetch {
            env,
            backup,
            dry_run,
        } => {
            let env = session::env(ops, out, env)?;
            let t = Target::new(&env, None)?;
            if *dry_run {
                let Some((dest, _, path)) = t.offsite_ssh()? else {
                    return Err(config_error(format!(
                        "`backup fetch` needs environments.{}.backups.offsite = \"ssh://...\"",
                        env.name
                    )));
                };
                out.line(&format!(
                    "would fetch {backup} from ssh://{dest}{path}/{}/ through `age --decrypt` (the identity in ${}), \
                     check its SHA-256 and size against its manifest, and keep it in {} (nothing is kept if they differ)",
                    env.name,
                    t.settings.offsite_identity_env.as_deref().unwrap_or("?"),
                    t.folder
                ));
                return Ok(());
            }
            manifest::create_dir_private(&t.folder)?;
            let b = t.fetch_offsite(backup, &t.folder, out)?;
            let m = b.manifest.as_ref().expect("fetched");
            out.line(&format!(
                "Fetched {} of `{}` ({}, taken {}), decrypted and checked: {}",
                b.name,
                env.name,
                human_size(m.size),
                m.started_at,
                b.path
            ));
            Ok(())
        }
    }
}

/// `backup verify`: restore BACKUP (a path, a name, `latest`) into a
/// scratch database, compare its row counts, and record the result in its
/// manifest. Also the verification of a release's pre-deploy backup.
pub fn verify_backup(
    env: &crate::config::Env,
    out: &Output,
    backup: &str,
    dry_run: bool,
) -> Result<()> {
    verify(env, out, backup, dry_run, false).map(drop)
}

/// `verify_backup`, keeping the restored copy (a scratch database on the
/// environment's server) for a release rehearsal: its name. The caller
/// drops it with `drop_copy`; on a failure nothing is kept.
pub fn verify_backup_keeping_copy(
    env: &crate::config::Env,
    out: &Output,
    backup: &str,
) -> Result<String> {
    verify(env, out, backup, false, true)?
        .ok_or_else(|| anyhow::anyhow!("the verification kept no copy"))
}

/// Drop a copy `verify_backup_keeping_copy` kept.
pub fn drop_copy(env: &crate::config::Env, name: &str) -> Result<()> {
    let t = Target::new(env, None)?;
    pg_tools::drop_database(&t, name)
}

fn verify(
    env: &crate::config::Env,
    out: &Output,
    backup: &str,
    dry_run: bool,
    keep: bool,
) -> Result<Option<String>> {
    let t = Target::new(env, None)?;
    let b = t.resolve(backup)?;
    b.manifest()?;
    if dry_run {
        t.rehearsal_plan(&b, keep).print(out);
        return Ok(None);
    }
    let r = t.rehearse(&b, out, keep);

    let detail = r
        .failed
        .clone()
        .unwrap_or_else(|| "checksum, full restore and row counts ok".into());
    if r.inconclusive {
        for l in r.step_lines(out) {
            out.line(&l);
        }
        bail!(
            "could not verify {}: {}. The backup was not judged and its manifest is unchanged; \
             start the database (`cargo xtask status {}`) and run `cargo xtask backup verify {} {}` again",
            b.path,
            r.failed.as_deref().unwrap_or("?"),
            env.name,
            env.name,
            b.name
        );
    }
    if let Err(e) = t.record(&b, r.failed.is_none(), r.seconds(), &detail) {
        if let Some(copy) = &r.kept {
            let _ = pg_tools::drop_database(&t, copy);
        }
        return Err(e);
    }
    let mut doc = Report::new(serde_json::json!({
        "environment": env.name, "backup": b.name, "path": b.path.as_str(),
        "ok": r.failed.is_none(), "seconds": r.seconds(),
        "steps": r.steps_json(),
    }));
    for l in r.step_lines(out) {
        doc.line(l);
    }
    doc.emit(out);
    match r.failed {
        None => {
            out.line(&format!("Verified {} ({:.1}s)", b.path, r.seconds()));
            Ok(r.kept)
        }
        Some(why) => bail!("backup {} FAILED verification: {why}", b.path),
    }
}

/// Rows per table (`schema.table`) of `database` on the environment's
/// server (its own database when None), counted in one snapshot.
pub fn table_counts(
    env: &crate::config::Env,
    database: Option<&str>,
) -> Result<std::collections::BTreeMap<String, i64>> {
    let t = Target::new(env, None)?;
    let mut client = t.connect(database.unwrap_or(&t.database))?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .context("starting a snapshot to count rows in")?;
    let tables = pg_tools::list_tables(&mut client)?;
    pg_tools::count_rows(&mut client, &tables)
}

/// A backup's row counts per table and when it was taken (RFC 3339, and
/// seconds ago), from its manifest.
pub fn backup_counts(
    env: &crate::config::Env,
    backup: &str,
) -> Result<(std::collections::BTreeMap<String, i64>, String, i64)> {
    let t = Target::new(env, None)?;
    let b = t.resolve(backup)?;
    let m = b.manifest()?;
    Ok((
        m.tables.clone(),
        m.started_at.clone(),
        now_unix() - m.started_unix,
    ))
}

/// The age in seconds of the environment's newest backup whose last
/// verification passed (`down --volumes` wants one younger than an hour).
pub fn newest_verified_age(env: &crate::config::Env) -> Result<Option<i64>> {
    let t = Target::new(env, None)?;
    let now = now_unix();
    Ok(t.backups()?
        .iter()
        .filter_map(|b| b.manifest.as_ref())
        .filter(|m| m.verified() == Some(true))
        .map(|m| now - m.started_unix)
        .min())
}

#[cfg(test)]
mod tests {
    use super::store::retention;

    fn b(name: &str, days: i64, verified: bool) -> (String, i64, bool) {
        (name.to_string(), days * 86400 + 60, verified)
    }

    #[test]
    fn retention_keeps_recent_min_and_newest_verified() {
        // Newest first.
        let backups = vec![
            b("d0", 0, false),
            b("d10", 10, false),
            b("d31", 31, false),
            b("d40", 40, true),
            b("d45", 45, false),
            b("d50", 50, true),
        ];
        let d = retention(&backups, 30, 1);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(kept, ["d0", "d10", "d40"]);
        assert!(d[3].why.contains("newest verified"));
        // keep_min wins over age.
        let d = retention(&backups, 30, 4);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(kept, ["d0", "d10", "d31", "d40"]);
        // All old, none verified: only keep_min.
        let old = vec![b("a", 100, false), b("b", 200, false), b("c", 300, false)];
        let d = retention(&old, 30, 2);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        // keep_min 0 still keeps the newest verified.
        let old = vec![b("a", 100, false), b("b", 200, true)];
        let d = retention(&old, 30, 0);
        assert_eq!((d[0].keep, d[1].keep), (false, true));
    }
}
