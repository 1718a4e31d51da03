//! One command's session with an environment: resolve it from ops.toml,
//! register its secrets for redaction, say once which shell variables
//! override its env file, and hold the command's one client per Docker
//! engine. The only place that turns a loaded environment into side
//! effects, so that `crate::config` stays pure, and the one place a
//! transport to an engine is chosen.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use anyhow::{bail, Result};

use crate::adapters::compose::{Compose, Flavor};
use crate::adapters::docker::{resolve_host, Docker};
use crate::adapters::output::{register_secret, Output};
use crate::config::{ComposeCommand, Env, Ops};

static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// The command's clients, one per engine address, made on first use.
static ENGINES: Mutex<Option<HashMap<String, Docker>>> = Mutex::new(None);

/// The environment's Docker engine: the one client (one runtime, one
/// connection pool) this command uses for it, whichever step asks.
pub fn docker(env: &Env) -> Result<Docker> {
    docker_at(&env.docker_host())
}

/// The engine at `host` (`None`: DOCKER_HOST, else the local socket), for
/// commands that have no environment (`demo prepare`).
pub fn docker_at_default() -> Result<Docker> {
    docker_at(&resolve_host(None))
}

fn docker_at(host: &str) -> Result<Docker> {
    if let Some(d) = ENGINES.lock().unwrap().as_ref().and_then(|m| m.get(host)) {
        return Ok(d.clone());
    }
    // Connected outside the lock: a slow engine does not hold up the others.
    let d = Docker::connect(host)?;
    let mut engines = ENGINES.lock().unwrap();
    Ok(engines
        .get_or_insert_with(HashMap::new)
        .entry(host.to_string())
        .or_insert(d)
        .clone())
}

/// The environment `name`, its secrets masked in every line printed from now
/// on. Warnings about shell overrides are printed once per process, however
/// often a step re-reads the environment.
pub fn env(ops: &Ops, out: &Output, name: &str) -> Result<Env> {
    let env = ops.resolve(name)?;
    protect(&env);
    for key in env.shell_overrides() {
        if WARNED
            .lock()
            .unwrap()
            .insert((env.name.clone(), key.clone()))
        {
            out.warn(&format!(
                "${key} is set in this shell and differs from {}: the shell's value is used for `{}`",
                env.env_file_hint(),
                env.name
            ));
        }
    }
    if let Some(i) = super::intent::pending(&env) {
        if WARNED
            .lock()
            .unwrap()
            .insert((env.name.clone(), "\0intent".into()))
        {
            out.warn(&format!(
                "{}: `cargo xtask recover {}` starts what it stopped and drops what it staged",
                i.describe(),
                env.name
            ));
        }
    }
    Ok(env)
}

/// Mask every secret value the environment holds (again after a step created
/// one, e.g. a generated password).
pub fn protect(env: &Env) {
    for v in env.secret_values() {
        register_secret(&v);
    }
}

/// The environment's Compose project, its files checked to exist.
pub fn compose(env: &Env) -> Result<Compose> {
    let settings = env.compose()?;
    for f in env.compose_files() {
        if !f.exists() {
            bail!(
                "the Compose file {f} named by environments.{}.compose.files does not exist (paths are relative to ops.toml)",
                env.name
            );
        }
    }
    let flavor = match settings.command {
        ComposeCommand::Auto => Flavor::Auto,
        ComposeCommand::V2 => Flavor::V2,
        ComposeCommand::V1 => Flavor::V1,
    };
    Compose::new(
        flavor,
        env.compose_files(),
        settings.project.clone(),
        // Compose talks to the same engine as the Engine API calls.
        [("DOCKER_HOST".to_string(), env.docker_host())]
            .into_iter()
            .chain(env.compose_env())
            .collect(),
        env.dir.clone(),
    )
}
