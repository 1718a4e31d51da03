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

    pub fn docker_host(&self) -> String {
        crate::adapters::docker::resolve_host(self.settings.docker_host.as_deref())
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

    /// The connection URL from the host. Errors name the missing variable.
    pub fn database_url(&self) -> Result<String> {
        let Some(db) = &self.settings.database else {
            return Err(config_error(format!(
                "environment `{}` has no [database] section in ops.toml",
                self.name
            )));
        };
        if let Some(url) = db.url_env.as_ref().and_then(|k| self.var(k)) {
            return Ok(url);
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
            encode(&db.name)
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
