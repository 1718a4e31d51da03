//! Production on Docker Swarm (`driver = "swarm"`): `[environments.NAME.swarm]`
//! in ops.toml: the stack, its files, and per-service replicas and
//! placement. The images, registry, journal and notifications are the
//! release's (`[environments.NAME.release]`). Pure data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What runs an environment's services.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Docker Compose on one engine (`[compose]`).
    #[default]
    Compose,
    /// A Docker Swarm stack (`[swarm]`): the engine does the rolling update
    /// and its automatic rollback.
    Swarm,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct SwarmSettings {
    /// The stack's name: services are `<stack>_<service>`.
    pub stack: String,
    /// Stack files (Compose format with `deploy:`), relative to ops.toml.
    pub files: Vec<String>,
    /// Non-secret variables for the stack files' `${...}` interpolation.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Commands run from ops.toml's folder before the images are built,
    /// each an argument list (no shell).
    #[serde(default)]
    pub pre_build: Vec<Vec<String>>,
    /// How long the engine watches a service's new tasks before an update
    /// counts as done (`update_config.monitor`); a failure inside it rolls
    /// the service back.
    #[serde(default = "default_monitor")]
    pub monitor_secs: u64,
    /// Per service (the stack file's name): replicas and placement.
    #[serde(default)]
    pub services: BTreeMap<String, SwarmService>,
}

fn default_monitor() -> u64 {
    10
}

#[derive(Deserialize, Serialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct SwarmService {
    /// How many tasks (replicated mode).
    pub replicas: Option<u64>,
    /// Placement constraints, as `docker service create --constraint`
    /// takes them (`node.role == manager`, `node.labels.db == true`).
    #[serde(default)]
    pub constraints: Vec<String>,
}
