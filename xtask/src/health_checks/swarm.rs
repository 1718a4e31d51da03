//! Health Check Procedures on Docker Swarm (`driver = "swarm"`): the
//! stack's services read through the Engine's Services and Tasks API
//! instead of containers by name: desired against running replicas and the
//! update state, as `health`'s replica checks.

use std::time::Instant;

use anyhow::Result;

use crate::adapters::docker::Docker;
use crate::config::{config_error, Env, SwarmSettings};
use crate::core::check::Check;

pub(crate) fn settings(env: &Env) -> Result<&SwarmSettings> {
    env.settings
        .swarm
        .as_ref()
        .ok_or_else(|| config_error(format!("environment `{}` has no [swarm]", env.name)))
}

/// One service's replicas: (running, desired).
pub(crate) fn replicas(
    docker: &Docker,
    svc: &crate::adapters::docker::SwarmService,
) -> Result<(u64, u64)> {
    let tasks = docker.service_tasks(&svc.name)?;
    let running = tasks
        .iter()
        .filter(|t| t.desired == "running" && t.state == "running")
        .count() as u64;
    Ok((running, svc.replicas.unwrap_or(1)))
}

/// Health: one check per service of the stack, its running replicas
/// against the desired ones.
pub fn replica_checks(env: &Env) -> Vec<Check> {
    let start = Instant::now();
    let fail = |name: String, target: String, expected: &str, got: String| {
        Check::fail(
            name,
            "service",
            target,
            expected,
            got,
            format!(
                "`cargo xtask status {}`; `docker service ps SERVICE --no-trunc`",
                env.name
            ),
            start.elapsed(),
        )
    };
    let Ok(s) = settings(env) else {
        return Vec::new();
    };
    let docker = match crate::core::session::docker(env) {
        Ok(d) => d,
        Err(e) => {
            return vec![fail(
                "stack".into(),
                env.docker_host(),
                "a reachable engine",
                format!("{e:#}"),
            )]
        }
    };
    let services = match docker.stack_services(&s.stack) {
        Ok(list) if !list.is_empty() => list,
        Ok(_) => {
            return vec![fail(
                format!("stack {}", s.stack),
                s.stack.clone(),
                "its services",
                "no services".into(),
            )]
        }
        Err(e) => {
            return vec![fail(
                format!("stack {}", s.stack),
                s.stack.clone(),
                "its services",
                format!("{e:#}"),
            )]
        }
    };
    services
        .iter()
        .map(|svc| match replicas(&docker, svc) {
            Ok((running, desired)) if running >= desired => Check::pass(
                format!("{} replicas", svc.name),
                "service",
                svc.name.clone(),
                format!("{running}/{desired} running"),
                start.elapsed(),
            ),
            Ok((running, desired)) => fail(
                format!("{} replicas", svc.name),
                svc.name.clone(),
                &format!("{desired} running"),
                format!("{running}/{desired} running"),
            ),
            Err(e) => fail(
                format!("{} replicas", svc.name),
                svc.name.clone(),
                "its tasks",
                format!("{e:#}"),
            ),
        })
        .collect()
}
