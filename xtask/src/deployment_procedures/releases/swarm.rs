//! Staging/Production Deployment and Application Rollback on Docker Swarm
//! (`driver = "swarm"`): the release's images pinned by digest, the stack
//! deployed with `docker stack deploy` and an override mre-ops writes (each
//! released service's image, replicas, placement, and an update policy of
//! `start-first` or `stop-first` with `failure_action: rollback`), so that
//! the engine does the rolling update and rolls a failing service back.
//! mre-ops waits for every service's update, then checks health and smoke;
//! any failure puts the whole stack back on the previous images (Swarm's
//! own rollback is per service).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::Utf8PathBuf;

use super::plan::RelState;
use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::{config_error, Env, ReleaseSettings, Strategy, SwarmSettings};
use crate::core::files::write_private;
use crate::core::steps::Plan;
use crate::core::wait::{self, Poll, Waited};

pub fn settings(env: &Env) -> Result<&SwarmSettings> {
    env.settings.swarm.as_ref().ok_or_else(|| {
        config_error(format!(
            "environment `{}` has no [environments.{}.swarm] in ops.toml (docs/swarm.md)",
            env.name, env.name
        ))
    })
}

/// Before anything runs: the engine must be a swarm manager.
pub fn check_manager(env: &Env) -> Result<()> {
    if crate::core::session::docker(env)?.swarm_manager()? {
        return Ok(());
    }
    Err(config_error(format!(
        "the engine at {} is not a swarm manager: run `docker swarm init` there (docs/swarm.md), \
         or use driver = \"compose\"; nothing was changed",
        env.docker_host()
    )))
}

/// Before anything runs: every node of the swarm ready, or the operator's
/// `--allow-degraded` (warned about). A node that is down took its tasks'
/// capacity with it, and an update now would be judged on fewer nodes.
pub fn check_nodes(env: &Env, out: &Output, allow_degraded: bool) -> Result<()> {
    let docker = crate::core::session::docker(env)?;
    let down = crate::health_checks::nodes::not_ready(&docker)?;
    if down.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = down
        .iter()
        .map(|n| {
            format!(
                "{} ({})",
                n.hostname,
                crate::health_checks::nodes::describe(n)
            )
        })
        .collect();
    if allow_degraded {
        out.warn(&format!(
            "releasing while node(s) are not ready (--allow-degraded): {}",
            names.join(", ")
        ));
        return Ok(());
    }
    bail!(
        "node(s) of the swarm are not ready: {}. Nothing was changed. Bring the node back (start \
         its Docker engine), or remove it (`docker node rm NODE` on the manager), or release \
         anyway with `--allow-degraded`",
        names.join(", ")
    )
}

/// `STACK_service`.
pub fn service_name(s: &SwarmSettings, svc: &str) -> String {
    format!("{}_{svc}", s.stack)
}

/// The image each released service runs now (empty on a first release).
pub fn live_images(env: &Env, rel: &ReleaseSettings) -> Result<BTreeMap<String, String>> {
    let s = settings(env)?;
    let docker = crate::core::session::docker(env)?;
    let running = docker.stack_services(&s.stack)?;
    Ok(rel
        .services
        .keys()
        .filter_map(|svc| {
            let name = service_name(s, svc);
            let found = running.iter().find(|r| r.name == name)?;
            Some((svc.clone(), found.image.clone()))
        })
        .collect())
}

/// The override stack file: each released service's image (pinned), its
/// replicas and placement from ops.toml, and the update policy.
fn override_file(
    rel: &ReleaseSettings,
    s: &SwarmSettings,
    images: &BTreeMap<String, String>,
) -> String {
    let mut services = BTreeMap::new();
    let placement = |svc: &str| {
        s.services
            .get(svc)
            .filter(|o| !o.constraints.is_empty())
            .map(|o| Placement {
                constraints: o.constraints.clone(),
            })
    };
    let replicas = |svc: &str| s.services.get(svc).and_then(|o| o.replicas);
    for (svc, r) in &rel.services {
        let Some(image) = images.get(svc) else {
            continue;
        };
        let order = match r.strategy {
            Strategy::BlueGreen => "start-first",
            Strategy::StopFirst => "stop-first",
        };
        let monitor = format!("{}s", s.monitor_secs);
        services.insert(
            svc.clone(),
            OverrideService {
                image: Some(image.clone()),
                deploy: Deploy {
                    replicas: replicas(svc),
                    placement: placement(svc),
                    update_config: Some(UpdatePolicy {
                        order,
                        parallelism: 1,
                        failure_action: "rollback",
                        monitor: monitor.clone(),
                        delay: Some("0s"),
                    }),
                    rollback_config: Some(UpdatePolicy {
                        order,
                        parallelism: 1,
                        failure_action: "pause",
                        monitor,
                        delay: None,
                    }),
                },
            },
        );
    }
    // Services not released (the database, the proxy) keep the stack file's
    // image; their replicas and placement may still come from ops.toml.
    for svc in s.services.keys() {
        if rel.services.contains_key(svc) {
            continue;
        }
        services.insert(
            svc.clone(),
            OverrideService {
                image: None,
                deploy: Deploy {
                    replicas: replicas(svc),
                    placement: placement(svc),
                    update_config: None,
                    rollback_config: None,
                },
            },
        );
    }
    // JSON is YAML: `docker stack deploy -c` reads it.
    let file = OverrideFile {
        version: "3.8",
        services,
    };
    serde_json::to_string_pretty(&file).expect("an override file serializes") + "\n"
}

/// A Compose file (format 3.8) that `docker stack deploy` merges over the
/// stack's own files.
#[derive(serde::Serialize)]
struct OverrideFile {
    version: &'static str,
    services: BTreeMap<String, OverrideService>,
}

#[derive(serde::Serialize)]
struct OverrideService {
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    deploy: Deploy,
}

#[derive(serde::Serialize)]
struct Deploy {
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_config: Option<UpdatePolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback_config: Option<UpdatePolicy>,
}

#[derive(serde::Serialize)]
struct Placement {
    constraints: Vec<String>,
}

#[derive(serde::Serialize)]
struct UpdatePolicy {
    order: &'static str,
    parallelism: u32,
    failure_action: &'static str,
    monitor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<&'static str>,
}

fn override_path(env: &Env) -> Utf8PathBuf {
    env.dir
        .join(".mre-ops/swarm")
        .join(format!("{}.override.yml", env.name))
}

/// `docker stack deploy -c FILE... -c OVERRIDE STACK`, with the stack
/// files' variables and secrets in its environment (never on its line).
fn stack_deploy(env: &Env, s: &SwarmSettings) -> Command {
    let mut args = vec![
        "stack".to_string(),
        "deploy".into(),
        "--with-registry-auth".into(),
    ];
    for f in &s.files {
        args.extend(["-c".to_string(), env.dir.join(f).to_string()]);
    }
    args.extend([
        "-c".to_string(),
        override_path(env).to_string(),
        s.stack.clone(),
    ]);
    let mut vars = env.compose_env();
    vars.extend(env.docker_cli_env());
    Command::new("docker", args).dir(&env.dir).envs(&vars)
}

/// Deploy the stack with these images for the released services.
fn deploy_stack(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    images: &BTreeMap<String, String>,
) -> Result<()> {
    let s = settings(env)?;
    let path = override_path(env);
    std::fs::create_dir_all(path.parent().expect("a folder"))
        .with_context(|| format!("creating {}", path.parent().unwrap()))?;
    write_private(&path, &override_file(rel, s, images))?;
    stack_deploy(env, s).run(out)
}

/// `docker stack rm STACK`, then wait until its tasks are gone (the
/// network and the host ports are free again).
pub fn remove_stack(env: &Env, out: &Output) -> Result<()> {
    let s = settings(env)?;
    Command::new("docker", ["stack", "rm", s.stack.as_str()])
        .envs(&env.docker_cli_env())
        .run(out)?;
    let docker = crate::core::session::docker(env)?;
    let what = format!("stack `{}` to be removed", s.stack);
    let waited = wait::until(
        out,
        &what,
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let (services, containers) = (
                docker.stack_services(&s.stack)?.len(),
                docker.stack_containers(&s.stack)?,
            );
            Ok(if services == 0 && containers == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending(format!(
                    "{services} service(s), {containers} container(s) left"
                ))
            })
        },
    )?;
    if let Waited::TimedOut(last) = waited {
        bail!(
            "stack `{}` is still being removed after 60 s ({last}): `docker stack ps {}`",
            s.stack,
            s.stack
        );
    }
    Ok(())
}

/// `down` on a swarm: remove the stack (and, with `volumes`, the stack's
/// volumes once its tasks are gone).
pub fn down_steps<'a>(plan: &mut Plan<'a, ()>, env: &'a Env, out: &'a Output, volumes: bool) {
    let stack = env
        .settings
        .swarm
        .as_ref()
        .map(|s| s.stack.clone())
        .unwrap_or_default();
    plan.action(
        "Remove the stack",
        format!("$ docker stack rm {stack}, then wait until its tasks are gone"),
        move || remove_stack(env, out),
    );
    if volumes {
        let filter = format!("label=com.docker.stack.namespace={stack}");
        plan.action(
            "Delete the stack's volumes",
            format!("$ docker volume rm (every volume with {filter})"),
            move || {
                let host = env.docker_cli_env();
                let list = Command::new(
                    "docker",
                    ["volume", "ls", "-q", "--filter", filter.as_str()],
                )
                .envs(&host)
                .read()?;
                let names: Vec<&str> = list.split_whitespace().collect();
                if names.is_empty() {
                    return Ok(());
                }
                let mut args = vec!["volume", "rm"];
                args.extend(names);
                Command::new("docker", args).envs(&host).run(out)
            },
        );
    }
}

/// Wait until the engine has finished updating every released service:
/// `completed` (or, for a new service, all its tasks running); an engine
/// rollback or pause is an error naming the service and the engine's words.
fn wait_updated(
    env: &Env,
    rel: &ReleaseSettings,
    out: &Output,
    images: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<()> {
    let s = settings(env)?;
    let docker = crate::core::session::docker(env)?;
    let start = Instant::now();
    let mut pending: Vec<String> = rel
        .services
        .keys()
        .filter(|k| images.contains_key(*k))
        .cloned()
        .collect();
    while !pending.is_empty() {
        crate::core::interrupt::check()?;
        let services = docker.stack_services(&s.stack)?;
        let mut still = Vec::new();
        for svc in &pending {
            let name = service_name(s, svc);
            let Some(found) = services.iter().find(|x| x.name == name) else {
                still.push(svc.clone());
                continue;
            };
            let wanted = found.image == images[svc];
            match found.update_state.as_deref() {
                Some("completed") if wanted => {}
                // Already on the wanted image after an engine rollback (an
                // undo deploying the previous images changes nothing).
                Some("rollback_completed") if wanted => {}
                // The engine is rolling it back: let it finish first.
                Some("rollback_started") if start.elapsed() < timeout => still.push(svc.clone()),
                Some(
                    st @ ("rollback_started" | "rollback_completed" | "rollback_paused" | "paused"),
                ) => bail!(
                    "the engine did not take the new version of {name}: its update is `{st}` ({}); \
                     `docker service ps {name} --no-trunc` shows the tasks' errors",
                    found.update_message.as_deref().unwrap_or("no message")
                ),
                Some(_) => still.push(svc.clone()),
                None => {
                    // Created, not updated: converged when every wanted task runs.
                    let tasks = docker.service_tasks(&name)?;
                    let running = tasks
                        .iter()
                        .filter(|t| t.desired == "running" && t.state == "running")
                        .count() as u64;
                    if running < found.replicas.unwrap_or(1) {
                        still.push(svc.clone());
                    }
                }
            }
        }
        if still.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            let names: Vec<String> = still.iter().map(|x| service_name(s, x)).collect();
            let (names, first) = (names.join(", "), names[0].clone());
            bail!(
                "the engine has not finished updating {names} after {} s (release.health_timeout_secs): \
                 `docker service ps {first} --no-trunc` shows why; every service goes back to the previous release",
                timeout.as_secs()
            );
        }
        out.progress(&format!(
            "waiting for the engine's update of {}",
            still.join(", ")
        ));
        wait::sleep(Duration::from_millis(500))?;
        pending = still;
    }
    out.progress_done();
    Ok(())
}

/// `REF` → `REF@sha256:...` from the engine that pushed it (pulled first
/// when it is not here).
fn pin(env: &Env, reference: &str) -> Result<String> {
    let docker = crate::core::session::docker(env)?;
    if !docker.image_present(reference)? {
        Command::new("docker", ["pull", "--quiet", reference])
            .envs(&env.docker_cli_env())
            .read()?;
    }
    docker.repo_digest(reference)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{reference} has no registry digest: was it pushed? (`docker push {reference}`)"
        )
    })
}

/// The swarm steps of a release (or rollback) to `targets` (released
/// service → image reference, by tag): take the lock, pin
/// by digest, start the stack on a first release, migrate (deploys), update
/// the stack (undo: the previous images, every service), wait for the
/// engine, then health and smoke.
#[allow(clippy::too_many_arguments)]
pub fn steps<'a>(
    plan: &mut Plan<'a, RelState>,
    env: &'a Env,
    rel: &'a ReleaseSettings,
    out: &'a Output,
    targets: BTreeMap<String, String>,
    what: &'a str,
    migrate: Option<bool>,
    journal: impl FnOnce(&mut Plan<'a, RelState>),
) {
    let s = env
        .settings
        .swarm
        .as_ref()
        .expect("validated: swarm settings");
    let timeout = Duration::from_secs(rel.health_timeout_secs);
    super::plan::lock_step(plan, env, out, what);
    let mut shown: Vec<String> = targets.values().cloned().collect();
    shown.dedup();
    plan.step(
        "Pin the images by digest",
        format!(
            "{} → REF@sha256:... (what was pushed, exactly, on every node)",
            shown.join(", ")
        ),
        move |st: &mut RelState| {
            for (svc, r) in &targets {
                st.pinned.insert(svc.clone(), pin(env, r)?);
            }
            st.swarm_previous = live_images(env, rel)?;
            Ok(())
        },
    );
    plan.step(
        "Check that every node can pull the images",
        "a one-shot service of each pinned image on every ready, active node (docker service create \
         --mode global-job --with-registry-auth), removed after: a node that cannot pull is named \
         before anything is updated",
        move |st: &mut RelState| {
            let mut images: Vec<String> = st.pinned.values().cloned().collect();
            images.sort();
            images.dedup();
            let results = crate::health_checks::nodes::pull_on_every_node(env, out, &images, timeout)?;
            let failed = crate::health_checks::nodes::pull_failures(&results);
            if !failed.is_empty() {
                bail!(
                    "{}. Nothing was updated: each node must reach the registry {} and be given \
                     the login (`docker stack deploy --with-registry-auth`, as mre-ops does); \
                     `docker node ps NODE` on the manager shows the task",
                    failed.join("; "),
                    rel.registry
                );
            }
            let nodes: usize = results.values().map(Vec::len).max().unwrap_or(0);
            out.detail(&format!("{} image(s) pulled on {nodes} node(s)", images.len()));
            Ok(())
        },
    );
    plan.step(
        "Start the stack (first release)",
        format!(
            "when stack `{}` has no service yet: docker stack deploy, then wait for the database",
            s.stack
        ),
        move |st: &mut RelState| {
            if !st.swarm_previous.is_empty() {
                out.detail("the stack runs: nothing to start");
                return Ok(());
            }
            st.cutover_started = true;
            let pinned = st.pinned.clone();
            deploy_stack(env, rel, out, &pinned)
        },
    )
    .undo(
        format!(
            "only if this run created the stack (a first release): docker stack rm {} (the volumes stay)",
            s.stack
        ),
        move |st: &mut RelState| {
            if !st.swarm_previous.is_empty() {
                return Ok(());
            }
            remove_stack(env, out)
        },
    );
    plan.action(
        "Wait for the database",
        format!("SELECT 1 until it answers, at most {} s", timeout.as_secs()),
        move || crate::database_migrations::wait_for_database(env, out, timeout),
    );
    journal(plan);
    if let Some(allow_risky) = migrate {
        plan.action(
            "Lint and apply pending migrations",
            format!(
                "cargo xtask migrate deploy {} before the update (one run, from here; the lint blocks risky statements outside development)",
                env.name
            ),
            move || {
                let o = crate::database_migrations::DeployOptions { dry_run: false, allow_risky, backup: false, report: false };
                crate::database_migrations::deploy(env, out, &o)
            },
        );
    }
    let cmd = stack_deploy(env, s);
    plan.step(
        "Update the stack",
        format!(
            "write {} (images pinned, replicas, placement, update order per service, failure_action: rollback, monitor {} s), then $ {}",
            override_path(env),
            s.monitor_secs,
            cmd.display()
        ),
        move |st: &mut RelState| {
            st.cutover_started = true;
            let pinned = st.pinned.clone();
            deploy_stack(env, rel, out, &pinned)?;
            wait_updated(env, rel, out, &pinned, timeout)
        },
    )
    .undo("docker stack deploy with the previous images, every service (the whole stack back on one release)", move |st: &mut RelState| {
        if st.swarm_previous.is_empty() {
            return Ok(());
        }
        let previous = st.swarm_previous.clone();
        deploy_stack(env, rel, out, &previous)?;
        wait_updated(env, rel, out, &previous, timeout)
    });
    super::plan::verify_steps(plan, env, out, timeout, migrate.is_some());
}
