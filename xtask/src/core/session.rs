//! One command's session with an environment: resolve it from ops.toml,
//! register its secrets for redaction, say once which shell variables
//! override its env file, and hold the command's one client per Docker
//! engine. The only place that turns a loaded environment into side
//! effects, so that `crate::config` stays pure, and the one place a
//! transport to an engine is chosen.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use crate::adapters::compose::{Compose, Flavor};
use crate::adapters::docker::{resolve_host, Docker};
use crate::adapters::output::{register_secret, Output};
use crate::adapters::ssh::Master;
use crate::config::{ComposeCommand, Env, Ops};

static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// The command's clients, one per engine address, made on first use.
static ENGINES: Mutex<Option<HashMap<String, Docker>>> = Mutex::new(None);

/// The environment's Docker engine: the one client (one runtime, one
/// connection pool) this command uses for it, whichever step asks.
pub fn docker(env: &Env) -> Result<Docker> {
    let certs = env.docker_cert_path();
    docker_at(&env.docker_host(), certs.as_ref().map(|c| c.as_std_path()))
}

/// The engine at `host` (`None`: DOCKER_HOST, else the local socket), for
/// commands that have no environment (`demo prepare`).
pub fn docker_at_default() -> Result<Docker> {
    docker_at(&resolve_host(None), None)
}

/// `certs`: Docker's `DOCKER_CERT_PATH` folder for a `tcp://` engine with TLS.
fn docker_at(host: &str, certs: Option<&std::path::Path>) -> Result<Docker> {
    if let Some(d) = ENGINES.lock().unwrap().as_ref().and_then(|m| m.get(host)) {
        return Ok(d.clone());
    }
    // Connected outside the lock: a slow engine does not hold up the others.
    let d = Docker::connect(host, certs)?;
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
    let env = env_offline(ops, out, name)?;
    if env.ssh().is_some() {
        tunnel(&env, out)?;
    }
    Ok(env)
}

/// The environment without connecting to its server (`config`).
pub fn env_offline(ops: &Ops, out: &Output, name: &str) -> Result<Env> {
    let env = ops.resolve(name)?;
    protect(&env);
    if let Some(ca) = env.database_sslrootcert() {
        // A refused certificate names the setting to look at.
        crate::adapters::postgres::name_ca(
            ca.as_std_path(),
            &format!("environments.{}.database.sslrootcert", env.name),
        );
    }
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

/// The open SSH connections of this command, by environment, with the
/// forwards made on each (local end → server end).
static TUNNELS: Mutex<Option<HashMap<String, Tunnel>>> = Mutex::new(None);

struct Tunnel {
    master: Master,
    forwards: HashMap<String, String>,
}

/// Connect to an `ssh` environment's server (once per command) and forward
/// its Docker socket and its database to sockets in `env.tunnel_dir()`, the
/// addresses `env.docker_host()` and `env.database_url()` name. Closed by
/// `close_tunnels` when the command ends; the connection dies with mre-ops.
fn tunnel(env: &Env, out: &Output) -> Result<()> {
    let target = env.ssh().expect("an ssh environment");
    let dir = env.tunnel_dir();
    let mut tunnels = TUNNELS.lock().unwrap();
    let tunnels = tunnels.get_or_insert_with(HashMap::new);
    if !tunnels.contains_key(&env.name) {
        remove_dead_tunnel_dirs();
        out.detail(&format!("connecting to {} over SSH", target.destination));
        let master = Master::open(
            &target.destination,
            target.port,
            target.config.as_deref(),
            &dir,
            &|| super::interrupt::pending().is_some(),
        )
        .map_err(|e| match super::interrupt::pending() {
            // Ctrl-C while connecting: exit 130/143 like any interrupted step.
            Some(sig) => anyhow::Error::new(super::interrupt::Interrupted(sig)),
            None => e,
        })
        .with_context(|| {
            format!(
                "environment `{}` (ssh = \"{}\")",
                env.name,
                env.settings.ssh.as_deref().unwrap_or("")
            )
        })?;
        tunnels.insert(
            env.name.clone(),
            Tunnel {
                master,
                forwards: HashMap::new(),
            },
        );
    }
    let t = tunnels.get_mut(&env.name).expect("inserted above");
    let mut want = vec![(format!("{dir}/docker.sock"), env.server_docker_socket())];
    // The database: once its URL is known (a generated password may come
    // later in a deploy; the steps resolve the environment again).
    if env.settings.database.is_some() {
        if let Ok((host, port)) = env.server_database_addr() {
            want.push((format!("{dir}/.s.PGSQL.{port}"), format!("{host}:{port}")));
        }
    }
    for (local, remote) in want {
        if t.forwards.get(&local) != Some(&remote) {
            let _ = std::fs::remove_file(&local);
            t.master.forward(&local, &remote)?;
            t.forwards.insert(local, remote);
        }
    }
    Ok(())
}

/// Where this machine reaches `url` of an `ssh` environment: a URL on the
/// server's loopback or a private address (a container's) goes through a
/// local port forwarded over the connection; any other URL (a public one)
/// is used as it is.
pub fn reach(env: &Env, url: &str) -> Result<String> {
    if env.ssh().is_none() {
        return Ok(url.to_string());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(url.to_string());
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hostport, path) = rest.split_at(end);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with('[') => (h, p.parse::<u16>().ok()),
        _ => (hostport, None),
    };
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let private = bare == "localhost"
        || match bare.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                ip.is_loopback() || ip.is_private() || ip.is_link_local()
            }
            Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
            Err(_) => false,
        };
    if !private {
        return Ok(url.to_string());
    }
    let remote = format!("{host}:{port}");
    let mut tunnels = TUNNELS.lock().unwrap();
    let t = tunnels
        .as_mut()
        .and_then(|m| m.get_mut(&env.name))
        .with_context(|| format!("no SSH connection to `{}` is open", env.name))?;
    if let Some((local, _)) = t.forwards.iter().find(|(_, r)| **r == remote) {
        return Ok(format!("{scheme}://{local}{path}"));
    }
    let local = format!("127.0.0.1:{}", free_port()?);
    t.master.forward(&local, &remote)?;
    t.forwards.insert(local.clone(), remote);
    Ok(format!("{scheme}://{local}{path}"))
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(l.local_addr()?.port())
}

/// `sh -c SCRIPT` on an `ssh` environment's server (None for an
/// environment on this machine), stdin and stdout piped.
pub fn on_server(env: &Env, script: &str) -> Result<Option<std::process::Child>> {
    if env.ssh().is_none() {
        return Ok(None);
    }
    let tunnels = TUNNELS.lock().unwrap();
    let t = tunnels
        .as_ref()
        .and_then(|m| m.get(&env.name))
        .with_context(|| format!("no SSH connection to `{}` is open", env.name))?;
    t.master.spawn(script).map(Some)
}

/// The socket folders of commands that died without closing their
/// connections (killed: their connection died with them).
fn remove_dead_tunnel_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mre-ops-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Close every SSH connection this command opened, and their sockets.
pub fn close_tunnels() {
    let tunnels = TUNNELS.lock().unwrap().take();
    for (_, t) in tunnels.into_iter().flatten() {
        t.master.close();
    }
    let _ = std::fs::remove_dir_all(format!("/tmp/mre-ops-{}", std::process::id()));
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
        env.docker_cli_env()
            .into_iter()
            .chain(env.compose_env())
            .collect(),
        env.dir.clone(),
    )
}
