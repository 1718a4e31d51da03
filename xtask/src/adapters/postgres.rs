//! PostgreSQL (the sync `postgres` crate). It runs a runtime of its own:
//! never call it from inside the Docker adapter's `block_on`. The only
//! module that names the crate: every connection is made here (so the
//! transport and TLS are chosen in one place), and the client's types are
//! re-exported for the sections that run SQL.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};

pub use postgres::error::SqlState;
pub use postgres::{CancelToken, Client, Config, Error, SimpleQueryMessage};

/// A connection URL's settings.
pub fn parse_url(url: &str) -> Result<Config, Error> {
    Config::from_str(url)
}

/// The host (or socket directory) and port a URL's settings point at.
pub fn host_port(config: &Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// Connect with `config`, to database `dbname`, naming the session
/// `application`; the caller says what the failure means.
pub fn connect_config(
    config: &Config,
    dbname: &str,
    application: &str,
    timeout: Duration,
) -> Result<Client, Error> {
    let mut config = config.clone();
    config.dbname(dbname);
    config.connect_timeout(timeout);
    config.application_name(application);
    config.connect(postgres::NoTls)
}

/// PostgreSQL's cancel request for the query running on a connection (what
/// psql sends on Ctrl-C); best effort.
pub fn cancel(token: &CancelToken) {
    let _ = token.cancel_query(postgres::NoTls);
}

/// Where a connection URL points, without its password, for messages.
pub fn describe_url(url: &str) -> String {
    match Config::from_str(url) {
        Ok(c) => {
            let (host, port) = host_port(&c);
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
