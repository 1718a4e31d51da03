//! Releases for staging and production (runbook: Staging Deployment,
//! Production Deployment, Application Rollback): `[environments.NAME.release]`
//! in ops.toml. Pure data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSettings {
    /// The registry images are pushed to and the target pulls from:
    /// `HOST:PORT` (`127.0.0.1:5000`), optionally with a path prefix.
    pub registry: String,
    /// A variable that, when set, names the registry instead (CI: one both
    /// the runner and the server reach, e.g. ghcr.io/OWNER).
    pub registry_env: Option<String>,
    /// Variables (process environment or env file) holding the registry's
    /// user and password, when it needs a login. Never printed.
    pub registry_user_env: Option<String>,
    pub registry_password_env: Option<String>,
    /// Releases kept for rollback: their images and the idle colour's
    /// container are never pruned.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// How long a new release may take to become healthy.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// After the proxy points at the new colour, how long the old one keeps
    /// serving the requests it already has before it is stopped (and kept).
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    /// The variable holding a Slack-compatible webhook URL told of each
    /// release and rollback. A failing webhook warns, never fails a deploy.
    pub notify_webhook_env: Option<String>,
    /// The reverse proxy that owns the published ports.
    pub proxy: ProxySettings,
    /// Images built once per release: name → build context (relative to
    /// ops.toml). Tagged `<registry>/<name>:<version>`.
    pub images: BTreeMap<String, ImageSettings>,
    /// How each released service is switched, by Compose service name
    /// (without the colour suffix).
    pub services: BTreeMap<String, ReleasedService>,
    /// Rehearse each release with pending migrations on a copy of the data
    /// first (deploy's "Rehearse" step): migrations timed with their locks,
    /// integrity, the new release and the live one (the rollback proof)
    /// started against the migrated copy.
    #[serde(default = "default_true")]
    pub rehearse: bool,
    /// The variable holding the application's database URL in its
    /// container: a rehearsal points it at the copy.
    #[serde(default = "default_database_url_var")]
    pub database_url_var: String,
    /// The bake period (`"5m"`): after the switch, the new colour is
    /// watched through the proxy's own counters (HAProxy) this long while
    /// the old one stays ready; a breach of `max_error_rate` or
    /// `max_latency_ratio` switches back. Unset: no bake.
    pub bake: Option<String>,
    /// The bake's verdict: at most this share of the new colour's requests
    /// may be answered 5xx.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// The bake's verdict: the new colour's average response time may be at
    /// most this many times the old colour's.
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    /// No verdict on fewer requests than this (the bake goes on to its end).
    #[serde(default = "default_bake_min_requests")]
    pub bake_min_requests: u64,
    /// Leave the previous colour running after a release (instead of
    /// stopped, kept): it costs its memory, and makes `rollback` a switch
    /// of the proxy to a colour that already answers.
    #[serde(default)]
    pub keep_previous_running: bool,
    /// `deploy --canary PCT`: the share the new colour takes during the
    /// bake, before the full switch (not a file setting).
    #[serde(skip)]
    pub canary: Option<u32>,
}

fn default_max_error_rate() -> f64 {
    0.01
}
fn default_max_latency_ratio() -> f64 {
    3.0
}
fn default_bake_min_requests() -> u64 {
    20
}

fn default_true() -> bool {
    true
}
fn default_database_url_var() -> String {
    "DATABASE_URL".into()
}

fn default_keep() -> usize {
    5
}
fn default_health_timeout() -> u64 {
    120
}
fn default_drain() -> u64 {
    2
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// The proxy's Compose service.
    pub service: String,
    /// Which proxy runs there: how a switch and maintenance mode reach it.
    #[serde(default)]
    pub kind: ProxyKind,
    /// The file mre-ops writes with the live upstreams, inside the proxy
    /// (default: by kind, see `config_path()`).
    pub config_path: Option<String>,
}

impl ProxySettings {
    /// The file mre-ops writes inside the proxy: `config_path`, else
    /// `/etc/nginx/mre/upstreams.conf` or `/etc/haproxy/mre/live.cfg`.
    pub fn config_path(&self) -> &str {
        match (&self.config_path, self.kind) {
            (Some(p), _) => p,
            (None, ProxyKind::Nginx) => "/etc/nginx/mre/upstreams.conf",
            (None, ProxyKind::Haproxy) => "/etc/haproxy/mre/live.cfg",
        }
    }

    /// The maintenance file beside the config file: nginx includes
    /// `maintenance.inc` in every server; HAProxy reads `maintenance.map`.
    pub fn maintenance_path(&self) -> String {
        let path = self.config_path();
        let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
        match self.kind {
            ProxyKind::Nginx => format!("{dir}/maintenance.inc"),
            ProxyKind::Haproxy => format!("{dir}/maintenance.map"),
        }
    }
}

/// The reverse proxy in front of the blue-green colours.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyKind {
    /// nginx: a switch rewrites the upstream file and reloads (`nginx -s
    /// reload`), which closes idle keep-alive client connections.
    #[default]
    Nginx,
    /// HAProxy: both colours are servers of one backend; a switch sets
    /// their states through the runtime API (stats socket), no reload.
    Haproxy,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// The build context folder, relative to ops.toml.
    pub context: String,
    /// The Dockerfile, relative to the context (default: `Dockerfile`).
    pub dockerfile: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Two Compose services `<name>-blue` and `<name>-green`; the new colour
    /// starts beside the old, the proxy switches, the old is kept stopped.
    BlueGreen,
    /// One Compose service, replaced (the old stops first): for single
    /// writers such as the ingestion service.
    StopFirst,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReleasedService {
    /// Which of `images` it runs.
    pub image: String,
    pub strategy: Strategy,
    /// Blue-green: the port the service listens on inside its container,
    /// which the proxy also listens on.
    pub port: Option<u16>,
    /// Blue-green: the health path checked on the new colour before the
    /// switch (the service's `health.expect` applies).
    pub health_path: Option<String>,
}

impl ReleasedService {
    /// The Compose variable that holds the image of `colour` (or of the
    /// service itself): `MRE_APP_IMAGE_BLUE`, `MRE_LIVERC_INGESTION_SERVICE_IMAGE`.
    pub fn image_var(service: &str, colour: Option<&str>) -> String {
        let base = service.to_ascii_uppercase().replace('-', "_");
        match colour {
            Some(c) => format!("{base}_IMAGE_{}", c.to_ascii_uppercase()),
            None => format!("{base}_IMAGE"),
        }
    }
}
