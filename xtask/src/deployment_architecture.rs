//! Deployment Architecture: the services, the network and the environments
//! (development, staging, production, ...) as `ops.toml` describes them, and
//! `cargo xtask config`, which validates that file and shows what it resolves
//! to. Secrets never live in `ops.toml`: they come from the process
//! environment or from the env file an environment names.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::adapters::output::{register_secret, Output};

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

// ---------------------------------------------------------------------------
// The file, exactly as written. Unknown keys are refused.

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct OpsFile {
    pub environments: BTreeMap<String, EnvironmentSettings>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    #[serde(default)]
    pub description: String,
    /// Destructive commands (restore) ask for confirmation: set for production.
    #[serde(default)]
    pub protected: bool,
    /// The Docker engine: `unix:///var/run/docker.sock` or `tcp://HOST:PORT`.
    /// Unset: `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// KEY=VALUE file with this environment's secrets (git-ignored), relative
    /// to ops.toml. Variables set in the process environment win over it.
    pub env_file: Option<String>,
    /// Secrets that `deploy` may create (random) in `env_file` when missing.
    /// For development only: never list production secrets here.
    #[serde(default)]
    pub generate_secrets: Vec<String>,
    pub compose: ComposeSettings,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSettings>,
    pub database: Option<DatabaseSettings>,
    #[serde(default)]
    pub deploy: DeploySettings,
    /// Prisma migrations: where they are and how they are applied.
    #[serde(default)]
    pub migrations: crate::database_migrations::MigrationSettings,
    /// Database backups: where they go, how they are taken, how long kept.
    pub backups: Option<crate::disaster_recovery::BackupSettings>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ComposeSettings {
    /// Compose files, relative to ops.toml.
    pub files: Vec<String>,
    /// The Compose project name (it prefixes the network: `<project>_mre-network`).
    pub project: String,
    /// `auto` (default), `docker compose` or `docker-compose`.
    #[serde(default)]
    pub command: ComposeCommand,
    /// Non-secret variables for the Compose files' `${...}` interpolation.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Commands run from ops.toml's folder before `compose build`, each an
    /// argument list (no shell).
    #[serde(default)]
    pub pre_build: Vec<Vec<String>>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComposeCommand {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "docker compose")]
    V2,
    #[serde(rename = "docker-compose")]
    V1,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// The container's name (`mre-app`); its Docker health is checked.
    pub container: Option<String>,
    /// Where people reach it, printed after a deploy.
    pub url: Option<String>,
    pub health: Option<HealthSettings>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    pub url: String,
    /// What a healthy answer looks like.
    #[serde(default)]
    pub expect: Expect,
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: f64,
}

fn default_health_timeout() -> f64 {
    5.0
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Status 200 and the runbook's JSON: `success: true`,
    /// `data.status: "healthy"`, `data.timestamp` in RFC 3339, `message`.
    RunbookJson,
    /// Any 2xx status.
    #[default]
    #[serde(rename = "http-2xx")]
    Http2xx,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The database container (`mre-postgres`), for `docker exec`-style steps
    /// and its Docker health.
    pub container: Option<String>,
    /// How the host reaches it. Ignored when `url_env` is set and present.
    #[serde(default = "default_db_host")]
    pub host: String,
    #[serde(default = "default_db_port")]
    pub port: u16,
    pub user: String,
    pub name: String,
    /// The variable (process environment or env file) holding the password.
    pub password_env: Option<String>,
    /// The variable holding a whole connection URL; wins when present.
    pub url_env: Option<String>,
}

fn default_db_host() -> String {
    "localhost".into()
}
fn default_db_port() -> u16 {
    5432
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DeploySettings {
    /// How long `deploy` waits for every check to pass.
    #[serde(default = "default_wait")]
    pub wait_secs: u64,
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            wait_secs: default_wait(),
        }
    }
}

fn default_wait() -> u64 {
    180
}

// ---------------------------------------------------------------------------
// Loading.

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
        let file = parse(&path, &text)?;
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
        ops.validate(&text)?;
        Ok(ops)
    }

    pub fn names(&self) -> Vec<&str> {
        self.file.environments.keys().map(String::as_str).collect()
    }

    /// The environment called `name`, with its secrets loaded.
    pub fn env(&self, name: &str) -> Result<Env> {
        let Some(settings) = self.file.environments.get(name) else {
            return Err(config_error(format!(
                "unknown environment `{name}`: {} defines {}. Add [environments.{name}] to it, or pick one of those",
                self.path,
                self.names().join(", ")
            )));
        };
        let env_file = settings.env_file.as_ref().map(|f| self.dir.join(f));
        let file_vars = match &env_file {
            Some(p) if p.exists() => read_env_file(p)?,
            _ => BTreeMap::new(),
        };
        for (key, value) in &file_vars {
            if std::env::var(key).is_ok_and(|v| !v.is_empty() && &v != value) {
                // Names only: the values are secrets.
                eprintln!(
                    "warning: ${key} is set in this shell and differs from {}: the shell's value is used for `{name}`",
                    env_file.as_ref().map(|p| p.as_str()).unwrap_or("the env file")
                );
            }
        }
        let env = Env {
            name: name.to_string(),
            dir: self.dir.clone(),
            settings: settings.clone(),
            env_file,
            file_vars,
        };
        for key in env.secret_names() {
            if let Some(v) = env.var(&key) {
                register_secret(&v);
            }
        }
        Ok(env)
    }

    /// Checks serde cannot make: each finding names the field and its line.
    fn validate(&self, text: &str) -> Result<()> {
        if self.file.environments.is_empty() {
            return Err(config_error(format!(
                "{}: no environments: add at least [environments.development]",
                self.path
            )));
        }
        for (name, env) in &self.file.environments {
            let at = |field: &str| {
                format!(
                    "{}:{}: environments.{name}.{field}",
                    self.path,
                    line_of(text, name, field)
                )
            };
            let at_value = |field: &str, value: &str| match locate(text, &format!("\"{value}\"")) {
                Some((line, col)) => {
                    format!("{}:{line}:{col}: environments.{name}.{field}", self.path)
                }
                None => at(field),
            };
            if env.compose.files.is_empty() {
                return Err(config_error(format!(
                    "{}: needs at least one Compose file",
                    at("compose.files")
                )));
            }
            for argv in &env.compose.pre_build {
                if argv.is_empty() {
                    return Err(config_error(format!(
                        "{}: an empty command; each entry is [program, args...]",
                        at("compose.pre_build")
                    )));
                }
            }
            for (svc, s) in &env.services {
                if let Some(h) = &s.health {
                    if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                        return Err(config_error(format!(
                            "{}: `{}` is not an http:// or https:// URL",
                            at_value(&format!("services.{svc}.health.url"), &h.url),
                            h.url
                        )));
                    }
                    if !(h.timeout_secs > 0.0 && h.timeout_secs <= 600.0) {
                        return Err(config_error(format!(
                            "{}: expected seconds between 0 and 600, found {}",
                            at(&format!("services.{svc}.health.timeout_secs")),
                            h.timeout_secs
                        )));
                    }
                }
            }
            if let Some(db) = &env.database {
                if db.password_env.is_none() && db.url_env.is_none() {
                    return Err(config_error(format!(
                        "{}: set password_env (the variable holding the password) or url_env (the variable holding the URL)",
                        at("database")
                    )));
                }
            }
            if let Some(host) = &env.docker_host {
                if !(host.starts_with("unix://")
                    || host.starts_with("tcp://")
                    || host.starts_with("http://"))
                {
                    return Err(config_error(format!(
                        "{}: `{host}` is not unix:///path or tcp://host:port",
                        at_value("docker_host", host)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Parse with errors as `ops.toml:LINE:COL: field.path: what is wrong`.
fn parse(path: &Utf8Path, text: &str) -> Result<OpsFile> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        toml_error(path, text, e.inner(), &field)
    })
}

fn toml_error(path: &Utf8Path, text: &str, e: &toml::de::Error, field: &str) -> anyhow::Error {
    let (line, col) = match e.span() {
        Some(span) => line_col(text, span.start),
        None => (1, 1),
    };
    let field = if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    };
    let message = e.message().trim().replace('\n', " ");
    config_error(format!(
        "{path}:{line}:{col}: {field}{message}\n  (the valid keys are documented in docs/ops-toml.md; `cargo xtask config` checks the file)"
    ))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.find(needle).map(|offset| line_col(text, offset))
}

/// Best-effort line of `field` inside `[environments.NAME...]`, for
/// messages about values that parsed but do not make sense.
fn line_of(text: &str, env: &str, field: &str) -> usize {
    let last = field.rsplit('.').next().unwrap_or(field);
    let mut in_env = false;
    let mut env_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_env = t.starts_with(&format!("[environments.{env}]"))
                || t.starts_with(&format!("[environments.{env}."));
            if t == format!("[environments.{env}]") {
                env_line = i + 1;
            }
            if in_env && t.trim_matches(|c| c == '[' || c == ']').ends_with(last) {
                return i + 1;
            }
            continue;
        }
        if in_env && (t.starts_with(&format!("{last} ")) || t.starts_with(&format!("{last}="))) {
            return i + 1;
        }
    }
    env_line
}

fn read_env_file(path: &Utf8Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the env file {path}"))?;
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            return Err(config_error(format!(
                "{path}:{}: expected KEY=VALUE",
                i + 1
            )));
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

// ---------------------------------------------------------------------------
// One environment, resolved.

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
        names.sort();
        names.dedup();
        names
    }

    pub fn compose_files(&self) -> Vec<Utf8PathBuf> {
        self.settings
            .compose
            .files
            .iter()
            .map(|f| self.dir.join(f))
            .collect()
    }

    /// The environment Compose runs with: its `env` table and the secrets.
    pub fn compose_env(&self) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> = self.settings.compose.env.clone();
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

    /// Create the secrets `generate_secrets` lists and the env file lacks.
    /// Returns the names created; `dry_run` only reports them.
    pub fn ensure_generated_secrets(&mut self, dry_run: bool) -> Result<Vec<String>> {
        let missing: Vec<String> = self
            .settings
            .generate_secrets
            .iter()
            .filter(|k| self.var(k).is_none())
            .cloned()
            .collect();
        if missing.is_empty() || dry_run {
            return Ok(missing);
        }
        let Some(path) = self.env_file.clone() else {
            return Err(config_error(format!(
                "environments.{}.generate_secrets needs env_file: where should the generated secrets go?",
                self.name
            )));
        };
        let mut text = if path.exists() {
            std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?
        } else {
            format!(
                "# Secrets of the `{}` environment, created by mre-ops. Never commit this file.\n",
                self.name
            )
        };
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for key in &missing {
            let value = random_hex(24)?;
            register_secret(&value);
            text.push_str(&format!("{key}={value}\n"));
            self.file_vars.insert(key.clone(), value);
        }
        write_private(&path, &text)?;
        Ok(missing)
    }
}

/// Write a file readable by its owner only, through a temporary file and a
/// rename so that a crash never leaves half of it.
pub fn write_private(path: &Utf8Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = Utf8PathBuf::from(format!("{path}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {tmp}"))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {tmp}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {tmp} to {path}"))?;
    Ok(())
}

pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// `cargo xtask config [ENV]`

/// Validate ops.toml and show what an environment resolves to (runbook:
/// Deployment Architecture; pre-deployment "Environment variables reviewed").
/// Secrets are shown as set or missing, never their values.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The environment to show (default: all of them).
    pub env: Option<String>,
}

pub fn config(ops: &Ops, out: &Output, args: &ConfigArgs) -> Result<()> {
    let names: Vec<String> = match &args.env {
        Some(n) => vec![n.clone()],
        None => ops.file.environments.keys().cloned().collect(),
    };
    let mut docs = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for name in &names {
        let env = ops.env(name)?;
        let s = &env.settings;
        let secrets: BTreeMap<String, &str> = env
            .secret_names()
            .into_iter()
            .map(|k| {
                let state = if std::env::var(&k).is_ok_and(|v| !v.is_empty()) {
                    "set (process environment)"
                } else if env.file_vars.contains_key(&k) {
                    "set (env file)"
                } else if s.generate_secrets.contains(&k) {
                    "missing (deploy generates it)"
                } else {
                    "MISSING"
                };
                (k, state)
            })
            .collect();
        let db = s.database.as_ref().map(|d| {
            serde_json::json!({
                "container": d.container,
                "url": env.database_url().map(|u| crate::adapters::postgres::describe_url(&u))
                    .unwrap_or_else(|e| format!("unresolved: {e}")),
                "user": d.user, "name": d.name,
            })
        });
        // What would stop a command half-way, found now.
        if let Some(db) = &s.database {
            let needed = db.url_env.iter().chain(db.password_env.iter());
            if env.database_url().is_err()
                && !needed.clone().any(|k| s.generate_secrets.contains(k))
            {
                let names: Vec<&String> = needed.collect();
                problems.push(format!(
                    "`{name}`: the database secret is not set (${}); export it or add it to {}",
                    names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(" or $"),
                    env.env_file_hint()
                ));
            }
        }
        for f in env.compose_files() {
            if !f.exists() {
                problems.push(format!(
                    "`{name}`: the Compose file {f} does not exist (paths are relative to {})",
                    ops.path
                ));
            }
        }
        docs.push(serde_json::json!({
            "environment": name,
            "description": s.description,
            "protected": s.protected,
            "docker_host": env.docker_host(),
            "env_file": env.env_file.as_ref().map(|p| p.to_string()),
            "secrets": secrets,
            "compose": {
                "files": env.compose_files().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "project": s.compose.project,
                "command": s.compose.command,
                "env": s.compose.env,
                "pre_build": s.compose.pre_build,
            },
            "services": s.services,
            "database": db,
            "deploy": s.deploy,
            "migrations": s.migrations,
            "backups": s.backups,
        }));
    }
    if out.json {
        out.json_doc(&serde_json::json!({
            "config": ops.path.as_str(), "valid": true, "ready": problems.is_empty(),
            "problems": problems, "environments": docs,
        }));
    } else {
        out.line(&format!(
            "{}: valid ({} environments: {})",
            ops.path,
            ops.names().len(),
            ops.names().join(", ")
        ));
        for doc in docs {
            out.line("");
            out.line(&format!("[{}]", doc["environment"].as_str().unwrap_or("?")));
            let mut lines = Vec::new();
            tree(&doc, 1, &mut lines);
            for l in lines {
                out.line(&l);
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "the file is valid, but {} would stop a command half-way:\n  - {}",
            if problems.len() == 1 {
                "this".to_string()
            } else {
                format!("these {}", problems.len())
            },
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// An indented `key: value` view of a JSON value, nulls left out.
fn tree(value: &serde_json::Value, depth: usize, lines: &mut Vec<String>) {
    let pad = "  ".repeat(depth);
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::Object(m) if m.is_empty() => {}
                serde_json::Value::Object(_) => {
                    lines.push(format!("{pad}{k}:"));
                    tree(v, depth + 1, lines);
                }
                serde_json::Value::String(s) => lines.push(format!("{pad}{k}: {s}")),
                other => lines.push(format!("{pad}{k}: {other}")),
            }
        }
    }
}
