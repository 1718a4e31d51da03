//! PostgreSQL (the sync `postgres` crate). It runs a runtime of its own:
//! never call it from inside the Docker adapter's `block_on`. The only
//! module that names the crate: every connection is made here (so the
//! transport and TLS are chosen in one place: `sslmode` and `sslrootcert`
//! in the URL, `tls.rs`), and the client's types are re-exported for the
//! sections that run SQL.

mod tls;

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};

pub use postgres::error::SqlState;
pub use postgres::{CancelToken, Client, Config, Error, SimpleQueryMessage};
pub use tls::{name_ca, Tls};

/// A connection URL's settings: the client's, and how it is encrypted.
#[derive(Clone)]
pub struct Settings {
    pub config: Config,
    pub tls: Tls,
}

/// A connection URL's settings. libpq's `sslmode` (`disable`, `prefer`,
/// `require`, `verify-full`) and `sslrootcert` are read here: the client
/// crate knows neither `verify-full` nor a CA file.
pub fn parse_url(url: &str) -> Result<Settings> {
    let (rest, mode, ca) = split_tls_params(url);
    let tls = Tls::from_params(mode.as_deref(), ca.as_deref())?;
    let mut config = Config::from_str(&rest)?;
    config.ssl_mode(tls.ssl_mode());
    Ok(Settings { config, tls })
}

/// The URL without `sslmode` and `sslrootcert`, and their values.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
        return (url.to_string(), None, None);
    };
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (mut mode, mut ca, mut keep) = (None, None, Vec::new());
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("sslmode", v)) => mode = Some(decode(v)),
            Some(("sslrootcert", v)) => ca = Some(decode(v)),
            _ => keep.push(kv),
        }
    }
    let rest = if keep.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", keep.join("&"))
    };
    (rest, mode, ca)
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

/// Connect with `settings`, to database `dbname`, naming the session
/// `application`; the caller says what the failure means (a refused
/// certificate already says it).
pub fn connect_config(
    settings: &Settings,
    dbname: &str,
    application: &str,
    timeout: Duration,
) -> Result<Client> {
    let mut config = settings.config.clone();
    if !dbname.is_empty() {
        config.dbname(dbname);
    }
    config.connect_timeout(timeout);
    config.application_name(application);
    let (_, port) = host_port(&config);
    let connected = match settings.tls.connector(port)? {
        None => config.connect(postgres::NoTls),
        Some(tls) => config.connect(tls),
    };
    connected.map_err(anyhow::Error::new)
}

/// Whether a connection failed because TLS refused the server's certificate
/// (the error says which setting to look at).
pub fn is_tls_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(tls::is_refusal)
}

/// PostgreSQL's cancel request for the query running on a connection (what
/// psql sends on Ctrl-C), encrypted as the connection is; best effort.
pub fn cancel(token: &CancelToken, tls: &Tls) {
    let _ = match tls.connector(0) {
        Ok(Some(c)) => token.cancel_query(c),
        _ => token.cancel_query(postgres::NoTls),
    };
}

/// Where a connection URL points, without its password, for messages.
pub fn describe_url(url: &str) -> String {
    match parse_url(url).map(|s| s.config) {
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
    let settings = parse_url(url).with_context(|| {
        format!(
            "the database URL for {} is not a valid PostgreSQL URL",
            describe_url(url)
        )
    })?;
    let db = dbname
        .map(str::to_string)
        .or_else(|| settings.config.get_dbname().map(str::to_string))
        .unwrap_or_default();
    connect_config(&settings, &db, application, timeout).map_err(|e| {
        if is_tls_refusal(&e) {
            return e.context(format!(
                "cannot connect to PostgreSQL at {} (database {db}) over TLS",
                describe_url(url)
            ));
        }
        e.context(format!(
            "cannot connect to PostgreSQL at {} (database {db}): is the database container running (`cargo xtask status`) \
             and are the host, port and password in ops.toml and its env file right?",
            describe_url(url)
        ))
    })
}
