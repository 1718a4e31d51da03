//! Database Rollback to a point in time, the two long steps: the base
//! backup and the WAL put into a new volume, and the WAL replayed there by
//! a container from the database's image until it promotes; and the guard
//! that keeps `docker compose up` off the data from before a restore.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::docker::{Docker, Job, Template};
use crate::adapters::output::Output;
use crate::core::files::random_hex;
use crate::core::wait::{self, Poll, Waited};

use super::continuous::{Archive, Base, PGDATA};
use super::pg_tools::Target;

/// The timeline history files in the archive (`00000002.history`).
pub(super) fn history_files(dir: &camino::Utf8Path) -> Result<Vec<String>> {
    let mut list = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let name = e
                .with_context(|| format!("listing {dir}"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".history") && name.len() == 16 {
                list.push(name);
            }
        }
    }
    list.sort();
    Ok(list)
}

/// Extract the base backup and copy the WAL files into `volume`, in a
/// container from the database's image (as root: the files become the
/// image's `postgres` user's).
pub(super) fn fill_volume(
    a: &Archive,
    docker: &Docker,
    out: &Output,
    template: &Template,
    base: &Base,
    volume: &str,
    files: &[String],
) -> Result<()> {
    const SCRIPT: &str = "set -e; D=/var/lib/postgresql/data; A=/mre-archive; B=\"$1\"; shift; \
        find \"$D\" -mindepth 1 -delete; tar -xf \"$A/base/$B/base.tar\" -C \"$D\"; \
        tar -xf \"$A/base/$B/pg_wal.tar\" -C \"$D/pg_wal\"; \
        for f in \"$@\"; do cp \"$A/wal/$f\" \"$D/pg_wal/${f%.partial}\"; done; \
        touch \"$D/recovery.signal\"; chown -R postgres:postgres \"$D\"; chmod 700 \"$D\"";
    let root = a
        .root
        .canonicalize_utf8()
        .with_context(|| format!("resolving {}", a.root))?;
    let mut cmd = vec![SCRIPT.to_string(), "sh".into(), base.name.clone()];
    cmd.extend(files.iter().cloned());
    let job = Job {
        image: template.image(),
        entrypoint: vec!["sh".into(), "-c".into()],
        cmd,
        user: Some("0:0".into()),
        binds: vec![
            format!("{volume}:{PGDATA}"),
            format!("{root}:/mre-archive:ro"),
        ],
        network: Some("none".into()),
        labels: vec![("org.mre-ops.pitr".into(), a.t.env.name.clone())],
        ..Job::default()
    };
    let name = format!("{}-pitr-fill-{}", a.container, random_hex(3)?);
    docker.start_job(&name, &job)?;
    let waited = wait::until(
        out,
        "the base backup and WAL to be copied",
        Duration::from_secs(6 * 3600),
        Duration::from_millis(200),
        || {
            Ok(match docker.container(&name)? {
                Some(c) if c.state == "exited" || c.state == "dead" => {
                    Poll::Ready(c.exit_code.unwrap_or(-1))
                }
                Some(c) => Poll::Pending(c.state),
                None => Poll::Ready(-1),
            })
        },
    );
    let logs = docker.log_tail(&name, 20).unwrap_or_default();
    let _ = docker.remove_container(&name);
    match waited? {
        Waited::Ready(0) => Ok(()),
        Waited::Ready(code) => bail!(
            "copying the base backup into volume {volume} failed (exit code {code}):\n{}",
            logs.trim()
        ),
        Waited::TimedOut(why) => bail!("copying the base backup did not finish: {why}"),
    }
}

/// Wait until the recovery container has promoted; the time of the last
/// transaction it replayed.
pub(super) fn wait_promoted(
    t: &Target,
    docker: &Docker,
    out: &Output,
    name: &str,
    user: &str,
) -> Result<String> {
    let env: Vec<String> = t
        .password
        .iter()
        .map(|p| format!("PGPASSWORD={p}"))
        .collect();
    let sql = "SELECT pg_is_in_recovery()::text || ' ' || coalesce(pg_last_xact_replay_timestamp()::text, 'none')";
    let waited = wait::until(
        out,
        "the WAL to be replayed",
        Duration::from_secs(6 * 3600),
        Duration::from_millis(300),
        || {
            match docker.container(name)? {
                Some(c) if c.state == "running" => {}
                Some(c) => {
                    let logs = docker.log_tail(name, 30).unwrap_or_default();
                    bail!(
                        "the recovery container {name} stopped ({}) before it reached the target; its last lines:\n{}",
                        c.state,
                        logs.trim()
                    );
                }
                None => bail!("the recovery container {name} is gone"),
            }
            let mut buf = Vec::new();
            let o = docker.exec(
                name,
                &[
                    "psql",
                    "-X",
                    "-A",
                    "-t",
                    "-U",
                    user,
                    "-d",
                    &t.settings.maintenance_db,
                    "-c",
                    sql,
                ],
                &env,
                None,
                &mut buf,
            )?;
            let text = String::from_utf8_lossy(&buf).trim().to_string();
            Ok(match (o.exit_code, text.split_once(' ')) {
                (0, Some(("false", at))) => Poll::Ready(at.to_string()),
                (0, _) => Poll::Pending("replaying".into()),
                _ => Poll::Pending(o.stderr.lines().last().unwrap_or("starting").to_string()),
            })
        },
    )?;
    match waited {
        Waited::Ready(at) => Ok(at),
        Waited::TimedOut(why) => bail!("the WAL replay did not finish: {why}"),
    }
}

/// Before `docker compose up` may recreate the database container: refuse
/// when a point-in-time restore moved it to a volume of its own
/// (`...-pitr-UTC`) that the Compose file does not name, because Compose
/// would recreate it on the volume the file names, which holds the data
/// from before the restore.
pub fn check_restored_volume(env: &crate::config::Env) -> Result<()> {
    let Some(c) = env
        .settings
        .database
        .as_ref()
        .and_then(|d| d.container.clone())
    else {
        return Ok(());
    };
    let docker = crate::core::session::docker(env)?;
    let Some(spec) = docker
        .specs(std::slice::from_ref(&c))
        .pop()
        .expect("one name")?
    else {
        return Ok(());
    };
    let Some((volume, _)) = spec
        .volumes
        .iter()
        .find(|(n, d)| n.contains("-pitr-") && d == super::continuous::PGDATA)
    else {
        return Ok(());
    };
    let config = crate::core::session::compose(env)?
        .cmd(&["config"])
        .read()
        .context("reading the Compose configuration (`docker compose config`)")?;
    if config.contains(volume.as_str()) {
        return Ok(());
    }
    Err(crate::config::config_error(format!(
        "the database container `{c}` runs on volume {volume} since a point-in-time restore, and the Compose file \
         names another volume for it: `docker compose up` would recreate it on the data from before the restore. \
         Point the Compose file at {volume} (under `volumes:`, `pgdata: {{ external: true, name: {volume} }}`), \
         then run this again (docs/disaster-recovery.md)"
    )))
}
