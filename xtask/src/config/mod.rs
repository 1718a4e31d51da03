//! Deployment Architecture: the services, the network and the environments
//! (development, staging, production, ...) as `ops.toml` describes them.
//! Every settings type lives here, and loading is free of side effects: it
//! prints nothing and registers nothing (`crate::core::session` does that
//! once per command). Secrets never live in `ops.toml`: they come from the
//! process environment or from the env file an environment names.

mod backups;
mod env;
mod migrations;
mod parse;
mod release;
mod settings;
mod swarm;
mod verification;

use std::fmt;

use anyhow::Result;
use camino::{Utf8Path, Utf8PathBuf};

pub use env::{with_database_name, Env};
pub use migrations::*;
pub use release::*;
pub use settings::*;
pub use swarm::*;

/// A problem with the configuration or the command line: exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub fn config_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError(msg.into()))
}

pub struct Ops {
    pub path: Utf8PathBuf,
    /// The folder of ops.toml: relative paths in it start here.
    pub dir: Utf8PathBuf,
    pub file: OpsFile,
}

/// The workspace root, wherever the command is run from.
pub fn workspace_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

impl Ops {
    pub fn load(path: Option<&Utf8Path>) -> Result<Ops> {
        let path = match path {
            Some(p) => p.to_owned(),
            None => workspace_root().join("ops.toml"),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            config_error(format!("cannot read {path}: {e}. Pass --config PATH, or create it from the README's example"))
        })?;
        let file = parse::parse(&path, &text)?;
        let dir = path
            .parent()
            .map(Utf8Path::to_owned)
            .unwrap_or_else(|| ".".into());
        let dir = if dir.as_str().is_empty() {
            Utf8PathBuf::from(".")
        } else {
            dir
        };
        let ops = Ops { path, dir, file };
        parse::validate(&ops, &text)?;
        Ok(ops)
    }

    pub fn names(&self) -> Vec<&str> {
        self.file.environments.keys().map(String::as_str).collect()
    }

    /// The environment called `name`, with its secrets read (not registered
    /// for redaction: commands go through `core::session::env`).
    pub fn resolve(&self, name: &str) -> Result<Env> {
        let Some(settings) = self.file.environments.get(name) else {
            return Err(config_error(format!(
                "unknown environment `{name}`: {} defines {}. Add [environments.{name}] to it, or pick one of those",
                self.path,
                self.names().join(", ")
            )));
        };
        let env_file = settings.env_file.as_ref().map(|f| self.dir.join(f));
        let file_vars = match &env_file {
            Some(p) if p.exists() => parse::read_env_file(p)?,
            _ => Default::default(),
        };
        let mut env = Env::new(
            name,
            self.dir.clone(),
            settings.clone(),
            env_file,
            file_vars,
        );
        // Values CI gives through variables (`ssh_env`, `registry_env`),
        // checked as if ops.toml said them.
        if let Some(target) = settings.ssh_env.as_ref().and_then(|k| env.var(k)) {
            if env::SshTarget::parse(&target).is_none() {
                return Err(config_error(format!(
                    "${} (environments.{name}.ssh_env) is `{target}`, not user@host or user@host:port",
                    settings.ssh_env.as_deref().unwrap_or("")
                )));
            }
            env.settings.ssh = Some(target);
        }
        let registry = (settings.release.as_ref())
            .and_then(|r| r.registry_env.as_ref())
            .and_then(|k| env.var(k));
        if let (Some(rel), Some(registry)) = (env.settings.release.as_mut(), registry) {
            rel.registry = registry;
        }
        Ok(env)
    }
}
