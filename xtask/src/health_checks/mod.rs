//! Health Check Procedures: the application's `/api/health` (status and the
//! runbook's JSON shape), the ingestion service's `/health`, each
//! container's Docker health (`docker ps` STATUS), and the database
//! connection test (`SELECT 1`), run concurrently, once or until they pass.

pub mod nodes;
pub mod swarm;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::adapters::{clock, http, postgres};
use crate::config::{Env, Expect, HealthSettings, Ops};
use crate::core::check::{self, Check, Probe};
use crate::core::session;

/// Run the runbook's health checks.
///
/// Runbook: Health Check Procedures.
///
/// Checks, concurrently: each service's health URL (the app's /api/health
/// must answer 200 with the runbook's JSON), each container's Docker health,
/// and `SELECT 1` on the database. Exit 0 only when every check passes.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// Environment from ops.toml.
    #[arg(default_value = "development")]
    pub env: String,
    /// Poll until every check passes or SECS have passed.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

pub fn health(ops: &Ops, out: &Output, args: &HealthArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let start = Instant::now();
    let checks = match args.wait {
        Some(secs) => check::poll(&probes(&env), out, "health", Duration::from_secs(secs)),
        None => run_all(&env),
    };
    check::report(
        out,
        "health",
        &format!("Health of `{}`", env.name),
        serde_json::json!({ "environment": env.name }),
        &checks,
        start.elapsed(),
    )
    .emit(out);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} health checks failed in `{}`: {}",
            failed.len(),
            checks.len(),
            env.name,
            failed.join(", ")
        );
    }
    Ok(())
}

/// Poll the services' checks until all pass or `limit` runs out; the last
/// round's results. Shows progress on a terminal. What a change (a
/// release, a restore) waits for: its services, not the swarm's nodes (a
/// node that is down refuses a release unless `--allow-degraded`, and
/// would otherwise fail every check of a release that chose to go on).
pub fn wait_until_healthy(env: &Env, out: &Output, limit: Duration) -> Vec<Check> {
    check::poll(&service_probes(env, &[]), out, "health", limit)
}

/// The same, without the HTTP checks of the services named in `skip`
/// (reached through a proxy that answers a maintenance page).
pub fn wait_until_healthy_without(
    env: &Env,
    out: &Output,
    limit: Duration,
    skip: &[String],
) -> Vec<Check> {
    check::poll(&service_probes(env, skip), out, "health", limit)
}

/// Every check of the environment, run concurrently, in a stable order:
/// HTTP endpoints, containers, database.
pub fn run_all(env: &Env) -> Vec<Check> {
    check::run(&probes(env))
}

/// The environment's health probes: HTTP endpoints, containers (on a
/// swarm: each service's replicas, then each node), database.
pub fn probes(env: &Env) -> Vec<Probe<'_>> {
    let mut probes = service_probes(env, &[]);
    if env.settings.driver == crate::config::Driver::Swarm {
        probes.push(Box::new(move || {
            crate::health_checks::nodes::node_checks(env)
        }));
    }
    probes
}

/// The probes of the services alone (no swarm node checks), without the
/// HTTP checks of the services in `skip`.
fn service_probes<'a>(env: &'a Env, skip: &[String]) -> Vec<Probe<'a>> {
    let mut probes: Vec<Probe<'_>> = Vec::new();
    for (svc, settings) in &env.settings.services {
        if skip.contains(svc) {
            continue;
        }
        if let Some(h) = settings.health.as_ref() {
            probes.push(Box::new(move || vec![http_check(env, svc, h)]));
        }
    }
    if env.settings.driver == crate::config::Driver::Swarm {
        probes.push(Box::new(move || {
            crate::health_checks::swarm::replica_checks(env)
        }));
    } else {
        probes.push(Box::new(move || container_checks(env)));
    }
    if env.settings.database.is_some() {
        probes.push(Box::new(move || vec![database_check(env)]));
    }
    probes
}

fn http_check(env: &Env, service: &str, h: &HealthSettings) -> Check {
    let name = format!("{service} {}", path_of(&h.url));
    let start = Instant::now();
    let logs = format!("`cargo xtask logs {service} --env {}`", env.name);
    let fail = |expected: &str, got: String, next: String| {
        Check::fail(
            name.clone(),
            "http",
            h.url.clone(),
            expected,
            got,
            next,
            start.elapsed(),
        )
    };
    // On an `ssh` environment, through the connection.
    let url = match crate::core::session::reach(env, &h.url) {
        Ok(u) => u,
        Err(e) => {
            return fail(
                "an SSH forward to it",
                format!("{e:#}"),
                "does `ssh` to the server work?".into(),
            )
        }
    };
    let reply = match http::get(&url, Duration::from_secs_f64(h.timeout_secs)).map_err(|e| e.to_string()) {
        Ok(r) => r,
        Err(why) => {
            return fail(
                "an answer",
                why,
                format!("is {service} running? `cargo xtask status {}`, then {logs}; check the port in ops.toml", env.name),
            )
        }
    };
    let excerpt = excerpt(&reply.body);
    match h.expect {
        Expect::Http2xx => {
            if !(200..300).contains(&reply.status) {
                return fail(
                    "a 2xx status",
                    format!("{} with body {excerpt}", reply.status),
                    format!("read {logs}"),
                );
            }
            Check::pass(
                name,
                "http",
                h.url.clone(),
                format!("{} in {} ms", reply.status, reply.elapsed.as_millis()),
                start.elapsed(),
            )
        }
        Expect::RunbookJson => match validate_runbook_json(reply.status, &reply.body) {
            Ok(detail) => Check::pass(
                name,
                "http",
                h.url.clone(),
                format!("{detail} in {} ms", reply.elapsed.as_millis()),
                start.elapsed(),
            ),
            Err((expected, got)) => fail(
                &expected,
                got,
                format!("the service answers but is not healthy: read {logs}"),
            ),
        },
    }
}

/// The runbook's expected response: 200 and
/// `{"success":true,"data":{"status":"healthy","timestamp":RFC 3339},"message":...}`.
/// Err holds (what was expected, what came back).
pub fn validate_runbook_json(status: u16, body: &str) -> Result<String, (String, String)> {
    if status != 200 {
        return Err((
            "status 200".into(),
            format!("status {status} with body {}", excerpt(body)),
        ));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        (
            "a JSON body".to_string(),
            format!("malformed JSON ({e}): {}", excerpt(body)),
        )
    })?;
    if v.get("success") != Some(&serde_json::Value::Bool(true)) {
        return Err((
            "\"success\": true".into(),
            format!("\"success\": {}", show(v.get("success"))),
        ));
    }
    let status = v.pointer("/data/status");
    if status.and_then(|s| s.as_str()) != Some("healthy") {
        return Err((
            "\"data.status\": \"healthy\"".into(),
            format!("\"data.status\": {}", show(status)),
        ));
    }
    let ts = v.pointer("/data/timestamp");
    let Some(secs) = ts.and_then(|t| t.as_str()).and_then(clock::parse_rfc3339) else {
        return Err((
            "\"data.timestamp\" in RFC 3339".into(),
            format!("\"data.timestamp\": {}", show(ts)),
        ));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - secs).abs() > 300 {
        return Err((
            "a current \"data.timestamp\" (within 5 minutes)".into(),
            format!(
                "{} ({} s off): a cached or stuck answer?",
                show(ts),
                now - secs
            ),
        ));
    }
    if !v.get("message").is_some_and(|m| m.is_string()) {
        return Err((
            "a \"message\" string".into(),
            format!("\"message\": {}", show(v.get("message"))),
        ));
    }
    Ok("200, healthy".into())
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| "(missing)".into())
}

fn excerpt(body: &str) -> String {
    let one_line: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.is_empty() {
        return "(empty)".into();
    }
    let cut: String = one_line.chars().take(160).collect();
    if cut.len() < one_line.len() {
        format!("`{cut}…`")
    } else {
        format!("`{cut}`")
    }
}

fn path_of(url: &str) -> &str {
    url.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/")
}

fn container_checks(env: &Env) -> Vec<Check> {
    let wanted = env.containers();
    if wanted.is_empty() {
        return Vec::new();
    }
    let start = Instant::now();
    let host = env.docker_host();
    let docker = match crate::core::session::docker(env) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("{e:#}");
            return wanted
                .into_iter()
                .map(|(_, c)| {
                    Check::fail(
                        format!("container {c}"),
                        "container",
                        c,
                        "a reachable Docker engine",
                        why.clone(),
                        format!("check `docker info` works against {host}; set docker_host in ops.toml or DOCKER_HOST"),
                        start.elapsed(),
                    )
                })
                .collect();
        }
    };
    let names: Vec<String> = wanted.iter().map(|(_, c)| c.clone()).collect();
    let results = docker.containers(&names);
    let took = start.elapsed();
    wanted
        .into_iter()
        .zip(results)
        .map(|((service, name), result)| {
            let fail = |expected: &str, got: String, next: String| {
                Check::fail(format!("container {name}"), "container", name.clone(), expected, got, next, took)
            };
            match result {
                Err(e) => fail("an answer from the Docker engine", format!("{e:#}"), "retry; check `docker info`".into()),
                Ok(None) => fail(
                    "the container to exist",
                    "no such container".into(),
                    format!("deploy it: `cargo xtask deploy {}`", env.name),
                ),
                Ok(Some(c)) if c.state != "running" => fail(
                    "state running",
                    format!("state {}{}", c.state, c.exit_code.map(|x| format!(" (exit code {x})")).unwrap_or_default()),
                    format!(
                        "read `cargo xtask logs {service} --tail 100 --env {0}`, then `cargo xtask deploy {0}`",
                        env.name
                    ),
                ),
                Ok(Some(c)) => match c.health.as_deref() {
                    Some("healthy") => Check::pass(format!("container {name}"), "container", name.clone(), "running, healthy".into(), took),
                    None | Some("none") | Some("") => Check::warn(
                        format!("container {name}"),
                        "container",
                        name.clone(),
                        "running (no healthcheck configured)".into(),
                        took,
                    ),
                    Some(h) => fail(
                        "health healthy",
                        format!(
                            "health {h}{}",
                            c.health_output.as_deref().map(|o| format!(" (last check said: {})", excerpt(o))).unwrap_or_default()
                        ),
                        if h == "starting" {
                            format!("wait: `cargo xtask health {} --wait 60`", env.name)
                        } else {
                            format!("read `cargo xtask logs {service} --tail 100 --env {}`", env.name)
                        },
                    ),
                },
            }
        })
        .collect()
}

fn database_check(env: &Env) -> Check {
    let start = Instant::now();
    let fail = |target: String, got: String, next: &str| {
        Check::fail(
            "database".into(),
            "database",
            target,
            "`SELECT 1` to answer 1",
            got,
            next.into(),
            start.elapsed(),
        )
    };
    let url = match env.database_url() {
        Ok(u) => u,
        Err(e) => {
            return fail(
                "(no URL)".into(),
                format!("{e:#}"),
                "set the variable named in ops.toml [database]",
            )
        }
    };
    let target = postgres::describe_url(&url);
    match postgres::select_one(&url, Duration::from_secs(5)) {
        Ok(()) => Check::pass("database".into(), "database", target, "SELECT 1 ok".into(), start.elapsed()),
        Err(e) => fail(
            target,
            format!("{e:#}"),
            &format!(
                "is the database container healthy? `cargo xtask status {0}`, then `cargo xtask logs database --env {0}`",
                env.name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runbook_shape() {
        // A current, well-formed answer passes (so the refusals below are
        // for their reasons, not a validator that refuses everything).
        let now = clock::Utc::now().rfc3339();
        let good = format!(
            r#"{{"success":true,"data":{{"status":"healthy","timestamp":"{now}"}},"message":"ok"}}"#
        );
        assert!(validate_runbook_json(200, &good).is_ok(), "{good}");
        let no_message =
            format!(r#"{{"success":true,"data":{{"status":"healthy","timestamp":"{now}"}}}}"#);
        assert!(validate_runbook_json(200, &no_message)
            .unwrap_err()
            .1
            .contains("message"));
        assert!(validate_runbook_json(500, "{}").is_err());
        assert!(validate_runbook_json(200, "{\"success\":tru")
            .unwrap_err()
            .1
            .contains("malformed JSON"));
        let wrong = r#"{"success":true,"data":{"status":"degraded","timestamp":"2025-01-27T00:00:00.000Z"},"message":"x"}"#;
        assert!(validate_runbook_json(200, wrong)
            .unwrap_err()
            .1
            .contains("degraded"));
        let stale = r#"{"success":true,"data":{"status":"healthy","timestamp":"2025-01-27T00:00:00.000Z"},"message":"x"}"#;
        assert!(validate_runbook_json(200, stale)
            .unwrap_err()
            .1
            .contains("cached"));
    }
}
