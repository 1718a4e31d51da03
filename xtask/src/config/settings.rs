//! Deployment Architecture: the types of `ops.toml`, exactly as written
//! (unknown keys refused). Pure data: nothing here reads a file, prints or
//! touches the environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::backups::{BackupSettings, Method, OffsiteTarget};
pub use super::verification::{
    parse_duration, Alert, Direction, MonitorSettings, PreflightSettings, SmokeSettings,
};
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
    /// The Docker engine: `unix:///var/run/docker.sock` or `tcp://HOST:PORT`
    /// (loopback only, unless `docker_cert_path` is set). Unset:
    /// `DOCKER_HOST`, else the local socket. With `ssh`, the engine's socket
    /// on the server (`unix:///PATH`; default /var/run/docker.sock).
    pub docker_host: Option<String>,
    /// Docker's `DOCKER_CERT_PATH` for a `tcp://` engine with TLS
    /// (`dockerd --tlsverify`): a folder, relative to ops.toml, with
    /// `ca.pem` (the engine's CA), `cert.pem` and `key.pem` (this client's
    /// certificate and key).
    pub docker_cert_path: Option<String>,
    /// The server, reached with the system's OpenSSH client (`user@host` or
    /// `user@host:port`): the Docker engine, the database and the services'
    /// URLs go through one multiplexed connection; nothing else is exposed.
    pub ssh: Option<String>,
    /// A variable (process environment or env file) that, when set, gives
    /// `ssh`: CI sets it from a secret, while the same environment runs on
    /// this machine where it is unset.
    pub ssh_env: Option<String>,
    /// An OpenSSH client config file for `ssh` (`ssh -F`), relative to
    /// ops.toml. Unset: ~/.ssh/config.
    pub ssh_config: Option<String>,
    /// KEY=VALUE file with this environment's secrets (git-ignored), relative
    /// to ops.toml. Variables set in the process environment win over it.
    pub env_file: Option<String>,
    /// Secrets that `deploy` may create (random) in `env_file` when missing.
    /// For development only: never list production secrets here.
    #[serde(default)]
    pub generate_secrets: Vec<String>,
    /// What runs the services: `compose` (default) or `swarm`.
    #[serde(default)]
    pub driver: super::swarm::Driver,
    /// The Compose project; an environment that only runs migrations or
    /// backups needs none.
    pub compose: Option<ComposeSettings>,
    /// The Swarm stack (`driver = "swarm"`).
    pub swarm: Option<super::swarm::SwarmSettings>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSettings>,
    pub database: Option<DatabaseSettings>,
    #[serde(default)]
    pub deploy: DeploySettings,
    /// Prisma migrations: where they are and how they are applied.
    #[serde(default)]
    pub migrations: super::migrations::MigrationSettings,
    /// Database backups: where they go, how they are taken, how long kept.
    pub backups: Option<BackupSettings>,
    /// Versioned releases through a registry, with a zero-downtime cutover
    /// (staging, production). Without it, `deploy` builds and starts the
    /// Compose project in place (the development path).
    pub release: Option<super::release::ReleaseSettings>,
    /// The Pre-Deployment Checklist's commands and expectations.
    #[serde(default)]
    pub preflight: PreflightSettings,
    /// Post-Deployment Verification: the smoke tests.
    #[serde(default)]
    pub smoke: SmokeSettings,
    /// Monitoring and Alerting: probes, thresholds, the webhook.
    #[serde(default)]
    pub monitor: MonitorSettings,
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
    /// TLS to a database reached over a network (a managed one). Unset:
    /// none, as before (`disable`).
    pub sslmode: Option<SslMode>,
    /// The CA file the server's certificate must chain to (`verify-full`),
    /// relative to ops.toml.
    pub sslrootcert: Option<String>,
}

/// libpq's `sslmode` values mre-ops supports (`verify-ca` is not one: a
/// certificate is checked with its host name or not at all).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text.
    Disable,
    /// TLS when the server offers it, no certificate check (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is not checked (as libpq).
    Require,
    /// TLS, the certificate chained to `sslrootcert` and valid for the host.
    VerifyFull,
}

impl SslMode {
    /// The value as libpq spells it (`PGSSLMODE`, `?sslmode=`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
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
