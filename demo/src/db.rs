//! PostgreSQL access: URL handling (incl. Prisma's `?schema=`), connecting, error classification.

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use std::sync::Mutex;
use std::time::Duration;

/// What went wrong with a database call, as far as the HTTP layer cares.
#[derive(Debug)]
pub enum DbError {
    /// The migrations have not been applied (a table or column is missing).
    SchemaNotReady,
    /// Could not connect, or the connection broke.
    Unavailable(String),
    /// Unique constraint violated.
    Conflict,
    /// Any other database error.
    Other(String),
}

impl DbError {
    pub fn classify(e: &postgres::Error) -> DbError {
        match e.code() {
            Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
                DbError::SchemaNotReady
            }
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbError::Conflict,
            Some(_) => DbError::Other(error_text(e)),
            None if is_connection_error(e) => DbError::Unavailable(error_text(e)),
            None => DbError::Other(error_text(e)),
        }
    }
}

/// The error with its causes (`error connecting to server: Connection refused (os error 111)`).
pub fn error_text(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

fn is_connection_error(e: &postgres::Error) -> bool {
    use std::error::Error;
    e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>())
}

/// Parses a postgres URL the way Prisma writes them: Prisma-only query parameters are dropped
/// and `schema=X` becomes `search_path=X`.
pub fn config(url: &str) -> Result<Config, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    const PRISMA_ONLY: &[&str] = &[
        "schema",
        "connection_limit",
        "pool_timeout",
        "pgbouncer",
        "socket_timeout",
        "statement_cache_size",
        "sslaccept",
        "sslidentity",
        "sslpassword",
        "sslcert",
    ];
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            if key == "schema" {
                schema = kv.split_once('=').map(|(_, v)| v.to_string());
            }
            !PRISMA_ONLY.contains(&key)
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut cfg: Config = url
        .parse()
        .map_err(|e| format!("invalid DATABASE_URL ({}): {e}", redact(base)))?;
    if let Some(s) = schema.filter(|s| !s.is_empty() && s != "public") {
        cfg.options(&format!("-c search_path={s}"));
    }
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.keepalives_idle(Duration::from_secs(30));
    Ok(cfg)
}

/// The URL with any password replaced by `***`, for logging.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".into();
    };
    let (auth, host) = match rest.rfind('@') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => return url.to_string(),
    };
    let user = auth.split(':').next().unwrap_or("");
    let host = host.split('?').next().unwrap_or(host);
    if auth.contains(':') {
        format!("{scheme}://{user}:***@{host}")
    } else {
        format!("{scheme}://{user}@{host}")
    }
}

pub fn connect(cfg: &Config) -> Result<Client, DbError> {
    cfg.connect(NoTls)
        .map_err(|e| DbError::Unavailable(error_text(&e)))
}

/// One shared connection, (re)connected lazily. Calls are serialised; that is fine for a demo.
pub struct Db {
    cfg: Config,
    client: Mutex<Option<Client>>,
}

impl Db {
    pub fn new(cfg: Config) -> Db {
        Db {
            cfg,
            client: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection. A broken reused connection is replaced and `f` retried once.
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0.. {
            let reused = guard.as_ref().is_some_and(|c| !c.is_closed());
            if !reused {
                *guard = None;
                *guard = Some(connect(&self.cfg)?);
            }
            let client = guard.as_mut().expect("just connected");
            match f(client) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = DbError::classify(&e);
                    if matches!(err, DbError::Unavailable(_)) || client.is_closed() {
                        *guard = None;
                        if reused && attempt == 0 {
                            continue;
                        }
                        return Err(DbError::Unavailable(error_text(&e)));
                    }
                    return Err(err);
                }
            }
        }
        unreachable!()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact("postgres://u:s3cr3t@h:5432/db?schema=x"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn prisma_url() {
        let cfg =
            config("postgresql://u:p@localhost:5433/db?schema=public&sslmode=disable").unwrap();
        assert_eq!(cfg.get_dbname(), Some("db"));
        assert_eq!(cfg.get_ports(), &[5433]);
    }
}
