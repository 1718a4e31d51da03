//! PostgreSQL (the sync `postgres` crate). It runs a runtime of its own:
//! never call it from inside the Docker adapter's `block_on`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};

/// Where a connection URL points, without its password, for messages.
pub fn describe_url(url: &str) -> String {
    match postgres::Config::from_str(url) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_else(|| "localhost".into());
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "{}@{host}:{port}/{}",
                c.get_user().unwrap_or("?"),
                c.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "(unparseable connection URL)".to_string(),
    }
}

pub fn connect(url: &str, timeout: Duration) -> Result<postgres::Client> {
    connect_with(url, None, "mre-ops", timeout)
}

/// `SELECT 1`, as the runbook's connection test does.
pub fn select_one(url: &str, timeout: Duration) -> Result<()> {
    let mut client = connect(url, timeout)?;
    let row = client
        .query_one("SELECT 1", &[])
        .context("running `SELECT 1`")?;
    let one: i32 = row.get(0);
    anyhow::ensure!(one == 1, "`SELECT 1` returned {one}");
    Ok(())
}

/// Connect to another database of the same server (the maintenance database
/// for locks and CREATE/DROP DATABASE), naming the session `application`
/// (shown in `pg_stat_activity`; PostgreSQL keeps 63 bytes).
pub fn connect_to(
    url: &str,
    dbname: &str,
    application: &str,
    timeout: Duration,
) -> Result<postgres::Client> {
    connect_with(url, Some(dbname), application, timeout)
}

fn connect_with(
    url: &str,
    dbname: Option<&str>,
    application: &str,
    timeout: Duration,
) -> Result<postgres::Client> {
    let mut config = postgres::Config::from_str(url).with_context(|| {
        format!(
            "the database URL for {} is not a valid PostgreSQL URL",
            describe_url(url)
        )
    })?;
    config.connect_timeout(timeout);
    if let Some(db) = dbname {
        config.dbname(db);
    }
    config.application_name(application);
    let db = dbname
        .map(str::to_string)
        .or_else(|| config.get_dbname().map(str::to_string))
        .unwrap_or_default();
    config.connect(postgres::NoTls).with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {} (database {db}): is the database container running (`cargo xtask status`) \
             and are the host, port and password in ops.toml and its env file right?",
            describe_url(url)
        )
    })
}
