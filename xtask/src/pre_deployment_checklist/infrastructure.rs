//! Pre-Deployment Checklist, Infrastructure Checks: the Compose files'
//! images exist (and pass the image test command when one is configured),
//! and every container, as the Docker engine reports it (`docker inspect`),
//! has a health check, is on the declared network, and has memory and CPU
//! limits. On a swarm, two items more: every node is ready, and every node
//! pulls the live release's images from the registry itself.

use std::time::{Duration, Instant};

use super::{code_quality, Ctx, INFRASTRUCTURE};
use crate::adapters::docker::{Docker, Spec};
use crate::core::check::{Check, State};
use crate::core::session;

const IMAGES: &str = "Docker images built and tested";
const HEALTH: &str = "Container health checks configured";
const NETWORK: &str = "Network configuration verified";
const LIMITS: &str = "Resource limits configured";
const NODES: &str = "Swarm nodes ready";
const REGISTRY: &str = "Registry reachable from every node";

/// On a swarm: every node ready (a FAIL names those that are not), and the
/// live release's images pulled by every ready, active node (a one-shot
/// service per image, removed after; SKIP before the first release). No
/// items elsewhere.
pub(super) fn swarm_checks(ctx: &Ctx) -> Vec<Check> {
    let env = ctx.env;
    let Some(s) = env.settings.swarm.as_ref() else {
        return Vec::new();
    };
    let start = Instant::now();
    let host = env.docker_host();
    let fail = |name: &str, expected: &str, got: String, next: String| {
        Check::fail(
            name.into(),
            INFRASTRUCTURE,
            host.clone(),
            expected,
            got,
            next,
            start.elapsed(),
        )
    };
    let docker = match session::docker(env) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("{e:#}");
            let next = "check `docker info` on the manager".to_string();
            return vec![
                fail(
                    NODES,
                    "a reachable swarm manager",
                    why.clone(),
                    next.clone(),
                ),
                fail(REGISTRY, "a reachable swarm manager", why, next),
            ];
        }
    };
    let nodes = crate::health_checks::nodes::node_checks(env);
    let down: Vec<String> = nodes
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.detail.clone())
        .collect();
    let nodes_item = if down.is_empty() {
        let names: Vec<&str> = nodes.iter().map(|c| c.target.as_str()).collect();
        Check::pass(
            NODES.into(),
            INFRASTRUCTURE,
            host.clone(),
            format!("{} node(s) ready: {}", nodes.len(), names.join(", ")),
            start.elapsed(),
        )
    } else {
        fail(
            NODES,
            "every node ready",
            down.join("; "),
            format!(
                "start the node's Docker engine, or `docker node rm` it; `cargo xtask status {}`",
                env.name
            ),
        )
    };
    let live: Vec<String> = match docker.stack_services(&s.stack) {
        Ok(list) => {
            let released = env.settings.release.as_ref();
            let mut v: Vec<String> = list
                .into_iter()
                .filter(|svc| {
                    released.is_some_and(|r| {
                        r.services
                            .keys()
                            .any(|k| svc.name == format!("{}_{k}", s.stack))
                    })
                })
                .map(|svc| svc.image)
                .collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            return vec![
                nodes_item,
                fail(
                    REGISTRY,
                    "the stack's services",
                    format!("{e:#}"),
                    "`docker stack ls` on the manager".into(),
                ),
            ]
        }
    };
    if live.is_empty() {
        return vec![
            nodes_item,
            Check::skip(
                REGISTRY.into(),
                INFRASTRUCTURE,
                host,
                format!("stack `{}` has no release yet: nothing to pull (the deploy checks each node before its update)", s.stack),
            ),
        ];
    }
    let quiet = crate::adapters::output::Output::new(false, true, 0);
    let registry_item = match crate::health_checks::nodes::pull_on_every_node(
        env,
        &quiet,
        &live,
        Duration::from_secs(60),
    ) {
        Ok(results) => {
            let failed = crate::health_checks::nodes::pull_failures(&results);
            let count = results.values().map(Vec::len).max().unwrap_or(0);
            if failed.is_empty() {
                Check::pass(
                    REGISTRY.into(),
                    INFRASTRUCTURE,
                    host.clone(),
                    format!("{count} node(s) pulled {}", live.join(", ")),
                    start.elapsed(),
                )
            } else {
                fail(
                    REGISTRY,
                    "every node pulls the live images",
                    failed.join("; "),
                    "each node must reach the registry (its route, DNS, the CA in /etc/docker/certs.d) and get the login (--with-registry-auth)".into(),
                )
            }
        }
        Err(e) => fail(
            REGISTRY,
            "every node pulls the live images",
            format!("{e:#}"),
            "`docker node ps NODE` on the manager".into(),
        ),
    };
    vec![nodes_item, registry_item]
}

pub(super) fn checks(ctx: &Ctx) -> Vec<Check> {
    let env = ctx.env;
    let start = Instant::now();
    let host = env.docker_host();
    let docker = match crate::core::session::docker(env) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("{e:#}");
            return [IMAGES, HEALTH, NETWORK, LIMITS]
                .into_iter()
                .map(|n| {
                    Check::fail(
                        n.into(),
                        INFRASTRUCTURE,
                        host.clone(),
                        "a reachable Docker engine",
                        why.clone(),
                        "check `docker info`; set docker_host in ops.toml or DOCKER_HOST".into(),
                        start.elapsed(),
                    )
                })
                .collect();
        }
    };
    let specs: Vec<(String, Result<Option<Spec>, String>)> = match &env.settings.swarm {
        // On a swarm, the stack's services stand for the containers.
        Some(sw) if env.settings.driver == crate::config::Driver::Swarm => {
            match docker.stack_specs(&sw.stack) {
                Ok(list) => list
                    .into_iter()
                    .map(|s| (s.name.clone(), Ok(Some(s))))
                    .collect(),
                Err(e) => vec![(sw.stack.clone(), Err(format!("{e:#}")))],
            }
        }
        _ => {
            let names: Vec<String> = env.containers().into_iter().map(|(_, c)| c).collect();
            names
                .iter()
                .cloned()
                .zip(
                    docker
                        .specs(&names)
                        .into_iter()
                        .map(|r| r.map_err(|e| format!("{e:#}"))),
                )
                .collect()
        }
    };
    let mut images = images(ctx, &docker);
    if images.state == State::Pass && env.settings.preflight.image_test.is_some() {
        let tested = code_quality::command_item(
            ctx,
            INFRASTRUCTURE,
            IMAGES,
            "image_test",
            env.settings.preflight.image_test.as_deref(),
        );
        images = if tested.state == State::Pass {
            Check {
                detail: format!("{}; tested: {}", images.detail, tested.detail),
                ..images
            }
        } else {
            tested
        };
    }
    let network = env.settings.preflight.network.clone().unwrap_or_else(|| {
        let prefix = env
            .project()
            .or(env.settings.swarm.as_ref().map(|s| s.stack.as_str()))
            .unwrap_or("?");
        format!("{prefix}_mre-network")
    });
    vec![
        images,
        per_container(&specs, env, HEALTH, "a health check", |s| {
            match &s.healthcheck {
                Some(test) => Ok(test
                    .iter()
                    .skip(1)
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")),
                None => Err("no healthcheck".into()),
            }
        }),
        per_container(&specs, env, NETWORK, &format!("network {network}"), |s| {
            if s.networks.iter().any(|n| n == &network) {
                Ok(network.clone())
            } else {
                Err(format!("on {}", s.networks.join(", ")))
            }
        }),
        per_container(&specs, env, LIMITS, "memory and CPU limits", |s| {
            match (s.memory_bytes, s.cpus()) {
                (m, Some(c)) if m > 0 => Ok(format!("{} MiB, {c} CPU", m / (1024 * 1024))),
                (0, None) => Err("no memory or CPU limit".into()),
                (0, Some(_)) => Err("no memory limit".into()),
                _ => Err("no CPU limit".into()),
            }
        }),
    ]
}

/// One item over every container: `test` says what it found (Ok) or what
/// is wrong (Err).
fn per_container(
    specs: &[(String, Result<Option<Spec>, String>)],
    env: &crate::config::Env,
    name: &str,
    expected: &str,
    test: impl Fn(&Spec) -> Result<String, String>,
) -> Check {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut absent = Vec::new();
    for (container, spec) in specs {
        match spec {
            Err(e) => bad.push(format!("{container}: {e}")),
            Ok(None) => absent.push(container.clone()),
            Ok(Some(s)) => match test(s) {
                Ok(what) => good.push(format!("{container}: {what}")),
                Err(why) => bad.push(format!("{container}: {why}")),
            },
        }
    }
    let target = format!("{} containers", specs.len());
    if !bad.is_empty() {
        return Check::fail(
            name.into(),
            INFRASTRUCTURE,
            target,
            &format!("{expected} on every container"),
            bad.join("; "),
            format!(
                "declare it in the Compose file ({}), deploy, and run preflight again",
                env.settings
                    .compose
                    .as_ref()
                    .map(|c| &c.files)
                    .or(env.settings.swarm.as_ref().map(|s| &s.files))
                    .map(|f| f.join(", "))
                    .unwrap_or_default()
            ),
            Duration::ZERO,
        );
    }
    if !absent.is_empty() {
        return Check {
            next: Some(format!(
                "`cargo xtask deploy {}` creates them; run preflight again after",
                env.name
            )),
            ..Check::warn(
                name.into(),
                INFRASTRUCTURE,
                target,
                format!(
                    "not created yet, so not verified: {}{}",
                    absent.join(", "),
                    if good.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", good.join("; "))
                    }
                ),
                Duration::ZERO,
            )
        };
    }
    if specs.is_empty() {
        return Check::skip(
            name.into(),
            INFRASTRUCTURE,
            target,
            match &env.settings.swarm {
                Some(sw) => format!("stack `{}` has no service yet (a first release)", sw.stack),
                None => "no containers named in ops.toml".into(),
            },
        );
    }
    Check::pass(
        name.into(),
        INFRASTRUCTURE,
        target,
        good.join("; "),
        Duration::ZERO,
    )
}

/// The images the Compose files name (`compose config`), each present on
/// the engine.
fn images(ctx: &Ctx, docker: &Docker) -> Check {
    let env = ctx.env;
    let start = Instant::now();
    let target = env
        .settings
        .compose
        .as_ref()
        .map(|c| c.files.join(", "))
        .unwrap_or_default();
    let fail = |got: String, next: String| {
        Check::fail(
            IMAGES.into(),
            INFRASTRUCTURE,
            target.clone(),
            "every image the Compose files name, built",
            got,
            next,
            start.elapsed(),
        )
    };
    if let Some(rel) = &env.settings.release {
        return release_images(ctx, rel, start);
    }
    let config = session::compose(env).and_then(|c| c.cmd(&["config"]).read());
    let yaml = match config {
        Ok(y) => y,
        Err(e) => {
            return fail(
                format!("{e:#}"),
                "fix the Compose files or their variables".into(),
            )
        }
    };
    let mut names: Vec<String> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(|i| i.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|i| !i.is_empty())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return fail(
            "no `image:` in the Compose files".into(),
            "name each service's image in the Compose file so that the build can be checked".into(),
        );
    }
    let mut missing = Vec::new();
    for image in &names {
        match docker.image_present(image) {
            Ok(true) => {}
            Ok(false) => missing.push(image.clone()),
            Err(e) => return fail(format!("{e:#}"), "check `docker info`".into()),
        }
    }
    if missing.is_empty() {
        Check::pass(
            IMAGES.into(),
            INFRASTRUCTURE,
            target,
            format!("{} images present: {}", names.len(), names.join(", ")),
            start.elapsed(),
        )
    } else {
        fail(
            format!("not built: {}", missing.join(", ")),
            format!(
                "build them (`cargo xtask deploy {} --dry-run` shows the build step)",
                env.name
            ),
        )
    }
}

/// With releases, the images that go live are built by `deploy` from
/// release.images (the Compose file's defaults are never used): each
/// build context must hold its Dockerfile.
fn release_images(ctx: &Ctx, rel: &crate::config::ReleaseSettings, start: Instant) -> Check {
    let env = ctx.env;
    let mut bad = Vec::new();
    for (name, img) in &rel.images {
        let context = env.dir.join(&img.context);
        let dockerfile = context.join(img.dockerfile.as_deref().unwrap_or("Dockerfile"));
        if !dockerfile.is_file() {
            bad.push(format!("{name}: no {dockerfile}"));
        }
    }
    let names: Vec<&str> = rel.images.keys().map(String::as_str).collect();
    let target = format!("release.images ({})", names.join(", "));
    if !bad.is_empty() {
        return Check::fail(
            IMAGES.into(),
            INFRASTRUCTURE,
            target,
            "a build context with its Dockerfile for every release image",
            bad.join("; "),
            format!("fix [environments.{}.release.images] in ops.toml", env.name),
            start.elapsed(),
        );
    }
    let how = if ctx.deploying {
        "this deploy builds them next"
    } else {
        "`deploy` builds them"
    };
    Check::pass(
        IMAGES.into(),
        INFRASTRUCTURE,
        target,
        format!(
            "{how}, tags them with the version and pushes them to {} ({} build contexts ready)",
            rel.registry,
            rel.images.len()
        ),
        start.elapsed(),
    )
}
