//! Health Check Procedures on a swarm of several nodes: each node's state
//! and availability as a check (a node that is down is named, and fails),
//! and whether every node can pull an image from the registry, asked of the
//! nodes themselves: a one-shot service (`global-job`, one task per active
//! node) of that image, created with the registry login forwarded
//! (`--with-registry-auth`); each node's task either gets past `preparing`
//! (pulled) or is rejected with the engine's words. Used by `health`,
//! `monitor`, `preflight` and a swarm release before its update.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::adapters::docker::{Docker, Node, PullResult};
use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::Env;
use crate::core::check::Check;
use crate::core::wait::{self, Poll, Waited};

/// One check per node: PASS when ready (and WARN when drained or paused:
/// it takes no tasks), FAIL when down or disconnected, naming it.
pub fn node_checks(env: &Env) -> Vec<Check> {
    let start = Instant::now();
    let nodes = match crate::core::session::docker(env).and_then(|d| d.nodes()) {
        Ok(n) => n,
        Err(e) => {
            return vec![Check::fail(
                "swarm nodes".into(),
                "node",
                env.docker_host(),
                "the manager's list of nodes",
                format!("{e:#}"),
                "is the engine a swarm manager? (`docker node ls` there)".into(),
                start.elapsed(),
            )]
        }
    };
    nodes
        .iter()
        .map(|n| {
            let name = format!("node {}", n.hostname);
            let what = describe(n);
            if n.state != "ready" {
                Check::fail(
                    name,
                    "node",
                    n.hostname.clone(),
                    "ready",
                    what,
                    format!(
                        "the engine on {} does not answer the swarm: is its dockerd running? \
                         (`docker node ps {}` lists what it ran; the swarm reschedules its tasks)",
                        n.hostname, n.hostname
                    ),
                    start.elapsed(),
                )
            } else if n.availability != "active" {
                Check::warn(
                    name,
                    "node",
                    n.hostname.clone(),
                    format!(
                        "{what}: takes no new tasks (`cargo xtask node activate {} {}`)",
                        env.name, n.hostname
                    ),
                    start.elapsed(),
                )
            } else {
                Check::pass(name, "node", n.hostname.clone(), what, start.elapsed())
            }
        })
        .collect()
}

/// `worker-2: worker, down (heartbeat failure), active`.
pub fn describe(n: &Node) -> String {
    format!(
        "{}{}, {}{}, {}",
        n.role,
        if n.leader { " (leader)" } else { "" },
        n.state,
        n.message
            .as_deref()
            .filter(|m| n.state != "ready" && !m.is_empty())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        n.availability
    )
}

/// The nodes that are not ready (down, disconnected, unknown).
pub fn not_ready(docker: &Docker) -> Result<Vec<Node>> {
    Ok(docker
        .nodes()?
        .into_iter()
        .filter(|n| n.state != "ready")
        .collect())
}

/// Ask every ready, active node to pull each image (pinned references),
/// through one one-shot service per image; the results by image. Waits at
/// most `limit` for the nodes to answer (a node that has not is an error
/// naming it). The services are removed afterwards, whatever happened.
pub fn pull_on_every_node(
    env: &Env,
    out: &Output,
    images: &[String],
    limit: Duration,
) -> Result<BTreeMap<String, Vec<PullResult>>> {
    let docker = crate::core::session::docker(env)?;
    let eligible: Vec<String> = docker
        .nodes()?
        .into_iter()
        .filter(|n| n.state == "ready" && n.availability == "active")
        .map(|n| n.hostname)
        .collect();
    let host = [("DOCKER_HOST".to_string(), env.docker_host())];
    let mut results = BTreeMap::new();
    for (i, image) in images.iter().enumerate() {
        let name = format!("mre-ops-pull-{}-{}-{i}", env.name, std::process::id());
        let create = Command::new(
            "docker",
            [
                "service",
                "create",
                "--detach",
                "--quiet",
                "--mode",
                "global-job",
                "--with-registry-auth",
                "--restart-condition",
                "none",
                "--label",
                "mre-ops.pull-check=true",
                "--name",
                &name,
                "--entrypoint",
                "true",
                image,
            ],
        )
        .envs(&host);
        out.detail(&format!("$ {}", create.display()));
        create.read()?;
        let what = format!("every node to pull {image}");
        let waited = wait::until(out, &what, limit, Duration::from_millis(500), || {
            let got = docker.pull_results(&name)?;
            let waiting: Vec<&str> = eligible
                .iter()
                .filter(|n| !got.iter().any(|(node, r)| node == *n && r.is_some()))
                .map(String::as_str)
                .collect();
            Ok(if waiting.is_empty() {
                Poll::Ready(got.into_iter().filter_map(|(_, r)| r).collect::<Vec<_>>())
            } else {
                Poll::Pending(format!("no answer yet from {}", waiting.join(", ")))
            })
        });
        let _ = Command::new("docker", ["service", "rm", name.as_str()])
            .envs(&host)
            .read();
        match waited? {
            Waited::Ready(r) => {
                results.insert(image.clone(), r);
            }
            Waited::TimedOut(last) => bail!(
                "the nodes did not all pull {image} within {} s ({last}): a node that cannot reach \
                 the registry, or a slow one (`docker node ps NODE` on the manager)",
                limit.as_secs()
            ),
        }
    }
    Ok(results)
}

/// The nodes that could not pull, as `worker-2 (error)` lines; empty when
/// every node could.
pub fn pull_failures(results: &BTreeMap<String, Vec<PullResult>>) -> Vec<String> {
    let mut failed = Vec::new();
    for (image, list) in results {
        for r in list {
            if let Some(e) = &r.error {
                failed.push(format!("{} cannot pull {image} ({e})", r.node));
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: &str, message: Option<&str>) -> Node {
        Node {
            id: "abc".into(),
            hostname: "worker-2".into(),
            role: "worker".into(),
            availability: "active".into(),
            state: state.into(),
            message: message.map(str::to_string),
            addr: None,
            leader: false,
            engine: None,
        }
    }

    #[test]
    fn a_node_is_described_with_the_engine_words_only_when_not_ready() {
        assert_eq!(
            describe(&node("down", Some("heartbeat failure"))),
            "worker, down (heartbeat failure), active"
        );
        assert_eq!(
            describe(&node("ready", Some("ignored"))),
            "worker, ready, active"
        );
    }

    #[test]
    fn pull_failures_name_the_node_and_the_image() {
        let results = BTreeMap::from([(
            "r/app@sha256:1".to_string(),
            vec![
                PullResult {
                    node: "worker-1".into(),
                    error: None,
                },
                PullResult {
                    node: "worker-2".into(),
                    error: Some("No such image: r/app@sha256:1".into()),
                },
            ],
        )]);
        assert_eq!(
            pull_failures(&results),
            ["worker-2 cannot pull r/app@sha256:1 (No such image: r/app@sha256:1)"]
        );
    }
}
