//! Deployment Architecture: one environment, resolved: its settings, the
//! secrets from the process environment and its env file, the database URL.
//! Reading only; registering secrets for redaction is the caller's job
//! (`crate::core::session`).

use std::collections::BTreeMap;

use anyhow::Result;
use camino::Utf8PathBuf;

use super::config_error;
use super::settings::EnvironmentSettings;

#[derive(Clone)]
pub struct Env {
    pub name: String,
    /// ops.toml's folder.
    pub dir: Utf8PathBuf,
    pub settings: EnvironmentSettings,
    pub env_file: Option<Utf8PathBuf>,
    file_vars: BTreeMap<String, String>,
    /// Another database of the same server instead of the configured one
    /// (a release rehearsal's copy): see `on_database`.
    database_name: Option<String>,
}

impl Env {
    pub(super) fn new(
        name: &str,
        dir: Utf8PathBuf,
        settings: EnvironmentSettings,
        env_file: Option<Utf8PathBuf>,
        file_vars: BTreeMap<String, String>,
    ) -> Env {
        Env {
            name: name.to_string(),
            dir,
            settings,
            env_file,
            file_vars,
            database_name: None,
        }
    }

    /// The same environment, connected to database `name` of the same
    /// server (same user, password, host, parameters): a rehearsal runs
    /// migrations, checks and smoke tests on a copy this way.
    pub fn on_database(&self, name: &str) -> Env {
        Env {
            database_name: Some(name.to_string()),
            ..self.clone()
        }
    }

    /// Whether the env file sets `key` (for `config`: where a secret comes from).
    pub fn in_env_file(&self, key: &str) -> bool {
        self.file_vars.contains_key(key)
    }

    /// The values of every secret that is set, to be masked in all output.
    pub fn secret_values(&self) -> Vec<String> {
        self.secret_names()
            .iter()
            .filter_map(|k| self.var(k))
            .collect()
    }

    /// Names of env-file variables that the shell overrides with another
    /// value (names only: the values are secrets).
    pub fn shell_overrides(&self) -> Vec<String> {
        self.file_vars
            .iter()
            .filter(|(k, v)| std::env::var(k).is_ok_and(|s| !s.is_empty() && &s != *v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A secret or setting: the process environment first, then the env file.
    pub fn var(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.file_vars.get(key).cloned())
    }

    /// Every variable whose value must never be printed.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.file_vars.keys().cloned().collect();
        names.extend(self.settings.generate_secrets.iter().cloned());
        if let Some(db) = &self.settings.database {
            names.extend(db.password_env.iter().cloned());
            names.extend(db.url_env.iter().cloned());
        }
        if let Some(r) = &self.settings.release {
            names.extend(r.registry_user_env.iter().cloned());
            names.extend(r.registry_password_env.iter().cloned());
            names.extend(r.notify_webhook_env.iter().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn compose_files(&self) -> Vec<Utf8PathBuf> {
        self.settings
            .compose
            .iter()
            .flat_map(|c| c.files.iter())
            .map(|f| self.dir.join(f))
            .collect()
    }

    /// The database mre-ops connects to for CREATE/DROP/RENAME DATABASE, the
    /// environment's lock and the release journal.
    pub fn maintenance_db(&self) -> String {
        self.settings
            .backups
            .as_ref()
            .map(|b| b.maintenance_db.clone())
            .unwrap_or_else(|| "postgres".into())
    }

    /// The Compose settings; a configuration error naming the section when
    /// the environment has none.
    pub fn compose(&self) -> Result<&super::settings::ComposeSettings> {
        self.settings.compose.as_ref().ok_or_else(|| {
            config_error(format!(
                "environment `{}` has no [environments.{}.compose] in ops.toml: this command drives its containers. \
                 Add the section (docs/ops-toml.md)",
                self.name, self.name
            ))
        })
    }

    /// The Compose project name, when there is one.
    pub fn project(&self) -> Option<&str> {
        self.settings.compose.as_ref().map(|c| c.project.as_str())
    }

    /// Commands to run before building (none without Compose).
    pub fn pre_build(&self) -> &[Vec<String>] {
        match (&self.settings.compose, &self.settings.swarm) {
            (Some(c), _) => c.pre_build.as_slice(),
            (None, Some(s)) => s.pre_build.as_slice(),
            (None, None) => &[],
        }
    }

    /// The environment Compose runs with: its `env` table and the secrets.
    pub fn compose_env(&self) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> =
            match (&self.settings.compose, &self.settings.swarm) {
                (Some(c), _) => c.env.clone(),
                (None, Some(s)) => s.env.clone(),
                (None, None) => BTreeMap::new(),
            };
        for key in self.secret_names() {
            if let Some(v) = self.var(&key) {
                vars.insert(key, v);
            }
        }
        vars.into_iter().collect()
    }

    /// The engine this process talks to: with `ssh`, the local end of the
    /// forward of the server's socket (`tunnel_dir()/docker.sock`).
    pub fn docker_host(&self) -> String {
        if self.ssh().is_some() {
            return format!("unix://{}/docker.sock", self.tunnel_dir());
        }
        crate::adapters::docker::resolve_host(self.settings.docker_host.as_deref())
    }

    /// Docker's `DOCKER_CERT_PATH` folder of a `tcp://` engine with TLS.
    pub fn docker_cert_path(&self) -> Option<Utf8PathBuf> {
        self.settings
            .docker_cert_path
            .as_ref()
            .map(|p| self.dir.join(p))
    }

    /// The variables that point the `docker` CLI (compose, stack, pull) at
    /// this environment's engine: `DOCKER_HOST`, and for an engine with TLS
    /// `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`.
    pub fn docker_cli_env(&self) -> Vec<(String, String)> {
        let mut vars = vec![("DOCKER_HOST".to_string(), self.docker_host())];
        if let Some(certs) = self.docker_cert_path() {
            vars.push(("DOCKER_TLS_VERIFY".into(), "1".into()));
            vars.push(("DOCKER_CERT_PATH".into(), certs.to_string()));
        }
        vars
    }

    /// The server of an environment with `ssh`.
    pub fn ssh(&self) -> Option<SshTarget> {
        let mut t = SshTarget::parse(self.settings.ssh.as_deref()?)?;
        t.config = self.settings.ssh_config.as_ref().map(|c| self.dir.join(c));
        Some(t)
    }

    /// Where this process keeps the local ends of an `ssh` environment's
    /// forwards and the connection's control socket: private to it.
    pub fn tunnel_dir(&self) -> Utf8PathBuf {
        Utf8PathBuf::from(format!("/tmp/mre-ops-{}", std::process::id())).join(&self.name)
    }

    /// The engine's socket on the server (`ssh` environments).
    pub fn server_docker_socket(&self) -> String {
        self.settings
            .docker_host
            .as_deref()
            .and_then(|h| h.strip_prefix("unix://"))
            .unwrap_or("/var/run/docker.sock")
            .to_string()
    }

    /// The database's host and port as the server sees them (`ssh`
    /// environments forward a local socket to it).
    pub fn server_database_addr(&self) -> Result<(String, u16)> {
        // Known before the password is (a first deploy generates it later).
        if let Some(db) = &self.settings.database {
            if db.url_env.as_ref().and_then(|k| self.var(k)).is_none() {
                return Ok((db.host.clone(), db.port));
            }
        }
        let url = self.direct_database_url()?;
        let (_, host, port, _) = split_authority(&url).ok_or_else(|| {
            config_error(format!(
                "the database URL of `{}` names no host: with `ssh` it must say where the server reaches the database",
                self.name
            ))
        })?;
        Ok((host, port))
    }

    /// The containers whose Docker health counts, with the service they belong to.
    pub fn containers(&self) -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = self
            .settings
            .services
            .iter()
            .filter_map(|(svc, s)| Some((svc.clone(), s.container.clone()?)))
            .collect();
        if let Some(c) = self
            .settings
            .database
            .as_ref()
            .and_then(|d| d.container.clone())
        {
            list.push(("database".into(), c));
        }
        list
    }

    /// The connection URL from this machine: with `ssh`, through the local
    /// socket forwarded to the server's database (`tunnel_dir()`), so the
    /// database port is never published. Errors name the missing variable.
    /// With `sslmode` (a database reached over a network directly), libpq's
    /// `sslmode` and `sslrootcert` (an absolute path) are added to its query,
    /// unless a URL from `url_env` sets them itself.
    pub fn database_url(&self) -> Result<String> {
        let url = self.direct_database_url()?;
        if self.ssh().is_none() {
            return Ok(self.with_tls_params(url));
        }
        let (userinfo, _, port, rest) = split_authority(&url).ok_or_else(|| {
            config_error(format!(
                "the database URL of `{}` names no host: with `ssh` it must say where the server reaches the database",
                self.name
            ))
        })?;
        let tunnel = self.tunnel_dir();
        let dir = percent_encoding::utf8_percent_encode(
            tunnel.as_str(),
            percent_encoding::NON_ALPHANUMERIC,
        );
        Ok(format!("postgresql://{userinfo}{dir}:{port}{rest}"))
    }

    /// The CA file of `database.sslrootcert`, relative to ops.toml's folder.
    pub fn database_sslrootcert(&self) -> Option<Utf8PathBuf> {
        let db = self.settings.database.as_ref()?;
        db.sslrootcert.as_ref().map(|p| self.dir.join(p))
    }

    fn with_tls_params(&self, url: String) -> String {
        let Some(mode) = self.settings.database.as_ref().and_then(|d| d.sslmode) else {
            return url;
        };
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if query
            .split('&')
            .any(|kv| kv.starts_with("sslmode=") || kv.starts_with("sslrootcert="))
        {
            return url;
        }
        let mut params = format!("sslmode={}", mode.as_str());
        if let Some(ca) = self.database_sslrootcert() {
            params.push_str(&format!("&sslrootcert={}", encode(ca.as_str())));
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{params}")
    }

    /// The connection URL as ops.toml and the env file give it.
    fn direct_database_url(&self) -> Result<String> {
        let Some(db) = &self.settings.database else {
            return Err(config_error(format!(
                "environment `{}` has no [database] section in ops.toml",
                self.name
            )));
        };
        if let Some(url) = db.url_env.as_ref().and_then(|k| self.var(k)) {
            return Ok(match &self.database_name {
                Some(name) => with_database_name(&url, name),
                None => url,
            });
        }
        let Some(key) = &db.password_env else {
            return Err(config_error(format!(
                "the database URL of `{}` comes from ${}, which is not set: export it or add it to {}",
                self.name,
                db.url_env.as_deref().unwrap_or("?"),
                self.env_file_hint()
            )));
        };
        let Some(password) = self.var(key) else {
            return Err(config_error(format!(
                "the database password of `{}` comes from ${key}, which is not set: export it or add it to {}{}",
                self.name,
                self.env_file_hint(),
                if self.settings.generate_secrets.contains(key) {
                    format!(" (`cargo xtask deploy {}` creates it)", self.name)
                } else {
                    String::new()
                }
            )));
        };
        Ok(format!(
            "postgres://{}:{}@{}:{}/{}",
            encode(&db.user),
            encode(&password),
            db.host,
            db.port,
            encode(self.database_name.as_ref().unwrap_or(&db.name))
        ))
    }

    pub fn env_file_hint(&self) -> String {
        match &self.env_file {
            Some(p) => p.to_string(),
            None => "an env file named by `env_file` in ops.toml".into(),
        }
    }

    /// The secrets `generate_secrets` lists that the env file lacks.
    pub fn missing_generated_secrets(&self) -> Vec<String> {
        self.settings
            .generate_secrets
            .iter()
            .filter(|k| self.var(k).is_none())
            .cloned()
            .collect()
    }

    /// Know a variable just written to the env file (`core::secrets`).
    pub fn learn_file_var(&mut self, key: &str, value: String) {
        self.file_vars.insert(key.to_string(), value);
    }
}

/// Percent-encode one part of a connection URL (user, password, database).
fn encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

/// `user@host[:port]` of an environment's `ssh`, and its client config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// `user@host` (or `host`), as OpenSSH takes it.
    pub destination: String,
    pub port: Option<u16>,
    /// `ssh -F`, from `ssh_config`.
    pub config: Option<Utf8PathBuf>,
}

impl SshTarget {
    pub fn parse(text: &str) -> Option<SshTarget> {
        let text = text.trim();
        let (user, rest) = match text.split_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u), r),
            Some(_) => return None,
            None => (None, text),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !rest.starts_with('[') || h.ends_with(']') => {
                (h, Some(p.parse().ok()?))
            }
            _ => (rest, None),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || "-._[]:".contains(c);
        if host.is_empty() || !host.chars().all(valid) || host.starts_with('-') {
            return None;
        }
        let user_ok = user.is_none_or(|u| {
            u.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                && !u.starts_with('-')
        });
        if !user_ok {
            return None;
        }
        Some(SshTarget {
            destination: match user {
                Some(u) => format!("{u}@{host}"),
                None => host.to_string(),
            },
            port,
            config: None,
        })
    }
}

/// A PostgreSQL URL split around its host: (`user:password@` or empty, host,
/// port (5432 when unset), the path and query after it).
/// `url` with its database (the path) replaced by `name`; the query stays.
pub fn with_database_name(url: &str, name: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{}{query}", encode(name))
}

fn split_authority(url: &str) -> Option<(String, String, u16, String)> {
    let (_, after) = url.split_once("://")?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with('[') => (h, p.parse().ok()?),
        _ => (hostport, 5432),
    };
    if host.is_empty() || host.contains(',') {
        return None;
    }
    let host = percent_encoding::percent_decode_str(host)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some((userinfo, host, port, rest.to_string()))
}

#[cfg(test)]
mod ssh_tests {
    use super::*;

    #[test]
    fn database_name_replaced() {
        assert_eq!(
            with_database_name("postgresql://u:p@h:5432/pacetracer?schema=public", "copy_1"),
            "postgresql://u:p@h:5432/copy_1?schema=public"
        );
        assert_eq!(
            with_database_name("postgres://u@h", "c"),
            "postgres://u@h/c"
        );
    }

    #[test]
    fn ssh_targets() {
        let t = SshTarget::parse("deploy@staging.example.com:2222").unwrap();
        assert_eq!(
            (t.destination.as_str(), t.port),
            ("deploy@staging.example.com", Some(2222))
        );
        assert_eq!(SshTarget::parse("root@10.0.0.2").unwrap().port, None);
        assert_eq!(SshTarget::parse("host").unwrap().destination, "host");
        for bad in [
            "",
            "@host",
            "user@",
            "-oProxyCommand=x",
            "user@-x",
            "a b@c",
            "u@h:port",
        ] {
            assert!(SshTarget::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn authority_split() {
        let (u, h, p, r) =
            split_authority("postgresql://pt:s%40c@localhost:5433/pacetracer?x=1").unwrap();
        assert_eq!(
            (u.as_str(), h.as_str(), p, r.as_str()),
            ("pt:s%40c@", "localhost", 5433, "/pacetracer?x=1")
        );
        let (_, h, p, _) = split_authority("postgres://db.internal/x").unwrap();
        assert_eq!((h.as_str(), p), ("db.internal", 5432));
        assert!(split_authority("postgresql://a,b/x").is_none());
    }
}
