//! Post-Deployment Verification on Docker Swarm (`driver = "swarm"`):
//! `status` (every service's replicas, image and update state, each task's
//! state and node; every node's role, state and availability with the
//! stack's tasks on it) and `logs` (`docker service logs`).

use anyhow::Result;

use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::{config_error, Env};
use crate::core::report::Report;
use crate::health_checks::swarm::{replicas, settings};

/// `status` of a stack: every service with its replicas, image and update
/// state, and its current tasks with their node. Err when a service runs
/// fewer tasks than it wants.
pub fn status(env: &Env, out: &Output) -> Result<()> {
    let s = settings(env)?;
    let docker = crate::core::session::docker(env)?;
    let services = docker.stack_services(&s.stack)?;
    let mut rows = Vec::new();
    let mut lines = vec![format!(
        "Stack `{}` of `{}` on {} ({} services):",
        s.stack,
        env.name,
        docker.host,
        services.len()
    )];
    let mut short = Vec::new();
    // Node host name → the stack's running tasks on it.
    let mut on_node: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for svc in &services {
        let tasks = docker.service_tasks(&svc.name)?;
        let (running, desired) = replicas(&docker, svc)?;
        if running < desired {
            short.push(format!("{} ({running}/{desired})", svc.name));
        }
        lines.push(format!(
            "  {:<45} {running}/{desired} running  update: {:<18} {}",
            svc.name,
            svc.update_state.as_deref().unwrap_or("-"),
            svc.image
        ));
        let current: Vec<_> = tasks.iter().filter(|t| t.desired == "running").collect();
        for t in &current {
            let short_name = svc
                .name
                .strip_prefix(&format!("{}_", s.stack))
                .unwrap_or(&svc.name);
            on_node.entry(t.node.clone()).or_default().push(format!(
                "{short_name}.{}",
                t.slot.map(|n| n.to_string()).unwrap_or_default()
            ));
            lines.push(format!(
                "      task {:<3} on {:<12} {:<10}{}",
                t.slot.map(|n| n.to_string()).unwrap_or_default(),
                t.node,
                t.state,
                t.error
                    .as_deref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            ));
        }
        rows.push(serde_json::json!({
            "service": svc.name, "image": svc.image, "running": running, "desired": desired,
            "update_state": svc.update_state, "update_message": svc.update_message,
            "tasks": current,
        }));
    }
    if services.is_empty() {
        lines.push(format!(
            "  (no services: `cargo xtask deploy {}` creates the stack)",
            env.name
        ));
    }
    let nodes = docker.nodes()?;
    lines.push(format!("Nodes ({}):", nodes.len()));
    let mut down = Vec::new();
    let mut node_rows = Vec::new();
    for n in &nodes {
        if n.state != "ready" {
            down.push(n.hostname.clone());
        }
        let tasks = on_node.remove(&n.hostname).unwrap_or_default();
        lines.push(format!(
            "  {:<16} {:<8} {:<8} {:<7} tasks: {}",
            n.hostname,
            n.role,
            n.state,
            n.availability,
            if tasks.is_empty() {
                "-".to_string()
            } else {
                tasks.join(", ")
            }
        ));
        node_rows.push(serde_json::json!({
            "hostname": n.hostname, "role": n.role, "state": n.state,
            "availability": n.availability, "leader": n.leader, "addr": n.addr,
            "message": n.message, "tasks": tasks,
        }));
    }
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "stack": s.stack, "docker_host": docker.host,
        "ok": short.is_empty() && !services.is_empty() && down.is_empty(), "services": rows,
        "nodes": node_rows,
    }));
    for l in lines {
        r.line(l);
    }
    r.emit(out);
    if services.is_empty() {
        anyhow::bail!("stack `{}` has no services", s.stack);
    }
    if !down.is_empty() {
        anyhow::bail!(
            "node(s) not ready: {} (`docker node ls` on the manager; the swarm reschedules their tasks)",
            down.join(", ")
        );
    }
    if !short.is_empty() {
        anyhow::bail!(
            "fewer tasks run than wanted: {}; `docker service ps SERVICE --no-trunc` says why",
            short.join(", ")
        );
    }
    Ok(())
}

/// `logs SERVICE` of a stack: `docker service logs`.
pub fn logs(
    env: &Env,
    out: &Output,
    service: &str,
    follow: bool,
    tail: Option<usize>,
) -> Result<()> {
    let s = settings(env)?;
    let docker = crate::core::session::docker(env)?;
    let services = docker.stack_services(&s.stack)?;
    let full = format!("{}_{service}", s.stack);
    let Some(found) = services
        .iter()
        .find(|x| x.name == full || x.name == service)
    else {
        let names: Vec<String> = services
            .iter()
            .map(|x| {
                x.name
                    .trim_start_matches(&format!("{}_", s.stack))
                    .to_string()
            })
            .collect();
        return Err(config_error(format!(
            "no service `{service}` in stack `{}` of `{}`: choose one of {}",
            s.stack,
            env.name,
            names.join(", ")
        )));
    };
    let mut args = vec!["service".to_string(), "logs".into(), "--timestamps".into()];
    if let Some(n) = tail {
        args.extend(["--tail".to_string(), n.to_string()]);
    }
    if follow {
        args.push("--follow".into());
    }
    args.push(found.name.clone());
    let cmd = Command::new("docker", args).envs(&env.docker_cli_env());
    out.detail(&format!("$ {}", cmd.display()));
    let (code, stderr) = cmd.stream(None, &mut std::io::stdout().lock())?;
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    if code != 0 {
        anyhow::bail!("`docker service logs {}` exited with {code}", found.name);
    }
    Ok(())
}
