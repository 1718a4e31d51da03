//! Post-Deployment Verification: the services as `docker compose ps` shows
//! them (`status`), and the runbook's "Check Logs" (`logs`), both through
//! the Docker Engine API.

pub mod smoke_tests;
pub mod swarm;

use anyhow::{bail, Result};

use crate::adapters::docker::Container;
use crate::adapters::output::{Output, Tone};
use crate::config::{config_error, Env, Ops};
use crate::core::report::Report;
use crate::core::session;

/// Show the services of an environment.
///
/// Runbook: "Verify services", `docker compose ps`, and "Check Container
/// Health", `docker ps`.
///
/// Lists every container of the Compose project and every container
/// ops.toml expects: service, container, state, health, image, ports.
/// Exit 1 when an expected container is missing, stopped or unhealthy.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Environment from ops.toml.
    #[arg(default_value = "development")]
    pub env: String,
}

/// Print a service's logs.
///
/// Runbook: Post-Deployment Verification, Check Logs: `docker logs -f mre-app`.
///
/// SERVICE is a service name from ops.toml (`mre-app`), `database`, or a
/// container name.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// A service from ops.toml (`mre-app`), `database`, or a container name.
    pub service: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Environment from ops.toml.
    #[arg(long, default_value = "development")]
    pub env: String,
}

pub fn status(ops: &Ops, out: &Output, args: &StatusArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    show_status(&env, out)
}

struct Row {
    service: String,
    container: String,
    found: Option<Container>,
    expected: bool,
}

/// The `docker compose ps`-like table; Err when an expected container is
/// missing, not running or unhealthy.
pub fn show_status(env: &Env, out: &Output) -> Result<()> {
    if env.settings.driver == crate::config::Driver::Swarm {
        return self::swarm::status(env, out);
    }
    let docker = crate::core::session::docker(env)?;
    let project = &env.compose()?.project;
    let mut rows: Vec<Row> = Vec::new();
    let expected = env.containers();
    let names: Vec<String> = expected.iter().map(|(_, c)| c.clone()).collect();
    for ((service, container), found) in expected.into_iter().zip(docker.containers(&names)) {
        let found = found?;
        // The Compose service name where the container says it (mre-postgres
        // rather than ops.toml's `database`).
        let service = found
            .as_ref()
            .and_then(|c| c.service.clone())
            .unwrap_or(service);
        rows.push(Row {
            service,
            container,
            found,
            expected: true,
        });
    }
    for c in docker.project_containers(project)? {
        if !rows.iter().any(|r| r.container == c.name) {
            rows.push(Row {
                service: c.service.clone().unwrap_or_default(),
                container: c.name.clone(),
                found: Some(c),
                expected: false,
            });
        }
    }

    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.expected
                && match &r.found {
                    None => true,
                    Some(c) => {
                        c.state != "running"
                            || c.health
                                .as_deref()
                                .is_some_and(|h| h != "healthy" && h != "none")
                    }
                }
        })
        .collect();

    let services: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "service": r.service,
                    "container": r.container,
                    "expected": r.expected,
                    "exists": r.found.is_some(),
                    "state": r.found.as_ref().map(|c| c.state.clone()).unwrap_or_else(|| "missing".into()),
                    "health": r.found.as_ref().and_then(|c| c.health.clone()),
                    "image": r.found.as_ref().map(|c| c.image.clone()),
                    "ports": r.found.as_ref().map(|c| c.ports.clone()).unwrap_or_default(),
                })
            })
            .collect();
    // Maintenance mode of a release's proxy (unknown: not shown).
    let maintenance = crate::core::proxy::maintenance_state(env).ok().flatten();
    let mut report = Report::new(serde_json::json!({
        "environment": env.name,
        "project": project,
        "docker_host": docker.host,
        "ok": bad.is_empty(),
        "services": services,
        "maintenance": maintenance,
    }));
    if let Some(m) = &maintenance {
        report.line(format!(
            "MAINTENANCE MODE is on: the proxy answers every request 503 (\"{m}\"). `cargo xtask maintenance off {}` ends it.",
            env.name
        ));
    }
    {
        report.line(format!(
            "Services of `{}` (Compose project {project}, {}):",
            env.name, docker.host
        ));
        let ws = rows
            .iter()
            .map(|r| r.service.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let wc = rows
            .iter()
            .map(|r| r.container.len())
            .max()
            .unwrap_or(0)
            .max(9);
        let wi = rows
            .iter()
            .filter_map(|r| r.found.as_ref().map(|c| c.image.len()))
            .max()
            .unwrap_or(0)
            .max(5);
        report.line(format!(
            "  {:<ws$} {:<wc$} {:<10} {:<10} {:<wi$} PORTS",
            "SERVICE", "CONTAINER", "STATE", "HEALTH", "IMAGE"
        ));
        for r in &rows {
            let (state, health, image, ports) = match &r.found {
                None => (
                    "missing".to_string(),
                    "-".to_string(),
                    "-".to_string(),
                    String::new(),
                ),
                Some(c) => (
                    c.state.clone(),
                    // Docker keeps the last health of a stopped container.
                    if c.state == "running" {
                        c.health.clone().unwrap_or_else(|| "-".into())
                    } else {
                        "-".into()
                    },
                    c.image.clone(),
                    c.ports.join(", "),
                ),
            };
            let tone = match (state.as_str(), health.as_str()) {
                ("running", "healthy" | "-") => Tone::Good,
                ("running", "starting") => Tone::Warn,
                _ => Tone::Bad,
            };
            let state_col = out.paint(tone, &format!("{state:<10}"));
            report.line(format!(
                "  {:<ws$} {:<wc$} {state_col} {:<10} {:<wi$} {ports}",
                r.service, r.container, health, image
            ));
        }
    }
    report.emit(out);
    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().map(|r| r.container.as_str()).collect();
        let first = bad[0].service.clone();
        bail!(
            "in `{}`, not running and healthy: {}. Next: `cargo xtask logs {first} --tail 100 --env {}` (and the others'), \
             then `cargo xtask deploy {}`",
            env.name,
            names.join(", "),
            env.name,
            env.name
        );
    }
    Ok(())
}

pub fn logs(ops: &Ops, out: &Output, args: &LogsArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    if env.settings.driver == crate::config::Driver::Swarm {
        return self::swarm::logs(&env, out, &args.service, args.follow, args.tail);
    }
    let known = env.containers();
    let container = known
        .iter()
        .find(|(svc, c)| svc == &args.service || c == &args.service)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| args.service.clone());
    let docker = crate::core::session::docker(&env)?;
    if docker.container(&container)?.is_none() {
        let choices: Vec<String> = known.iter().map(|(s, c)| format!("{s} ({c})")).collect();
        return Err(config_error(format!(
            "no service or container `{}` in `{}`: choose one of {}",
            args.service,
            env.name,
            choices.join(", ")
        )));
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    docker.logs(&container, args.follow, args.tail, &mut lock)
}
