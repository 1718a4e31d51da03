//! Deployment Procedures on Docker Swarm, node maintenance: `node drain ENV
//! NODE` takes a node out for maintenance (the swarm moves its tasks to the
//! other nodes) and waits until it runs none, and until the stack's services
//! run all their replicas elsewhere; `node activate ENV NODE` gives it tasks
//! again. Both under the environment's lock, as plans (`--dry-run`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Driver, Env, Ops};
use crate::core::report::Report;
use crate::core::session;
use crate::core::steps::Plan;
use crate::core::wait::{self, Poll, Waited};

/// Take a swarm node out of service for maintenance, or give it tasks again.
///
/// Runbook: Deployment Procedures (Production Deployment on Docker Swarm,
/// docs/swarm.md): draining a node before maintenance. `drain` sets the
/// node's availability to `drain` (`docker node update --availability
/// drain`): the swarm stops its tasks and starts them on the other nodes
/// (start-first services keep answering); it waits until the node runs no
/// task and every service of the stack runs its replicas again. Ctrl-C or
/// SIGTERM while waiting makes the node active again. `activate` sets it
/// back to `active` (the swarm does not move running tasks back by itself).
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: NodeAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeAction {
    /// Move every task off NODE and wait until it runs none.
    ///
    /// Runbook: Deployment Procedures (Production Deployment on Docker
    /// Swarm: a node out of service for maintenance). Ctrl-C or SIGTERM
    /// while waiting makes the node active again.
    Drain(NodeTarget),
    /// Let NODE take tasks again.
    ///
    /// Runbook: Deployment Procedures (Production Deployment on Docker
    /// Swarm: a node back from maintenance). Running tasks stay where they
    /// are.
    Activate(NodeTarget),
}

#[derive(clap::Args, Debug)]
pub struct NodeTarget {
    /// Environment from ops.toml (`driver = "swarm"`).
    pub env: String,
    /// The node's host name (or id), as `cargo xtask status ENV` lists it.
    pub node: String,
    /// Print the steps without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the node to be empty.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub wait: u64,
}

pub fn node(ops: &Ops, out: &Output, args: &NodeArgs) -> Result<()> {
    let (t, drain) = match &args.action {
        NodeAction::Drain(t) => (t, true),
        NodeAction::Activate(t) => (t, false),
    };
    let env = session::env(ops, out, &t.env)?;
    if env.settings.driver != Driver::Swarm {
        return Err(config_error(format!(
            "`{}` is not a swarm environment (driver = \"swarm\"): it has no nodes to drain",
            env.name
        )));
    }
    let verb = if drain { "drain" } else { "activate" };
    let what = format!("node {verb} {} {}", env.name, t.node);
    let _lock = crate::core::lock::unless_dry_run(t.dry_run, &env, out, &what)?;
    let env = &env;
    let node = t.node.as_str();
    let limit = Duration::from_secs(t.wait);
    let start = Instant::now();
    let mut plan: Plan<Option<String>> = Plan::new(what);
    plan.step(
        "Find the node",
        format!("the manager's node `{node}` (docker node ls): its id, state and availability"),
        move |id: &mut Option<String>| {
            let docker = session::docker(env)?;
            let n = docker.node(node)?;
            if drain {
                let others = docker
                    .nodes()?
                    .into_iter()
                    .filter(|o| o.id != n.id && o.state == "ready" && o.availability == "active")
                    .count();
                if others == 0 {
                    bail!(
                        "no other node is ready and active: {node}'s tasks would have nowhere to go. \
                         Nothing was changed"
                    );
                }
            }
            out.detail(&format!(
                "{node}: {}",
                crate::health_checks::nodes::describe(&n)
            ));
            *id = Some(n.id);
            Ok(())
        },
    );
    if drain {
        plan.step(
            format!("Drain {node}"),
            format!("$ docker node update --availability drain {node} (the swarm moves its tasks)"),
            move |id: &mut Option<String>| set(env, id, "drain"),
        )
        .undo(
            format!("$ docker node update --availability active {node}"),
            move |id: &mut Option<String>| set(env, id, "active"),
        );
        plan.step(
            format!("Wait until {node} runs no task"),
            format!(
                "the node's tasks (docker node ps {node}) until none runs, at most {} s",
                t.wait
            ),
            move |id: &mut Option<String>| wait_empty(env, out, node, id, limit),
        );
        plan.step(
            "Wait for the stack's replicas elsewhere",
            "every service of the stack runs its desired tasks again",
            move |_: &mut Option<String>| wait_replicas(env, out, limit),
        );
    } else {
        plan.step(
            format!("Activate {node}"),
            format!("$ docker node update --availability active {node} (it takes new tasks; running ones stay where they are)"),
            move |id: &mut Option<String>| set(env, id, "active"),
        );
    }
    let mut id = None;
    plan.execute_with(out, t.dry_run, &mut id)?;
    if t.dry_run {
        return Ok(());
    }
    let secs = start.elapsed().as_secs_f64();
    let line = if drain {
        format!(
            "{node} is drained: it runs no task ({secs:.1} s). `cargo xtask node activate {} {node}` \
             when its maintenance is done",
            env.name
        )
    } else {
        format!(
            "{node} is active: it takes new tasks. Running tasks stay where they are \
             (`docker service update --force SERVICE` spreads one again)"
        )
    };
    let mut r = Report::new(serde_json::json!({
        "environment": env.name, "node": node,
        "availability": if drain { "drain" } else { "active" }, "seconds": secs,
    }));
    r.line(line);
    r.emit(out);
    Ok(())
}

fn set(env: &Env, id: &Option<String>, availability: &str) -> Result<()> {
    let Some(id) = id else {
        return Ok(());
    };
    session::docker(env)?.set_availability(id, availability)
}

/// Wait until the node has no task that runs or is about to.
fn wait_empty(
    env: &Env,
    out: &Output,
    node: &str,
    id: &Option<String>,
    limit: Duration,
) -> Result<()> {
    let Some(id) = id else {
        return Ok(());
    };
    let docker = session::docker(env)?;
    let what = format!("node {node} to run no task");
    let waited = wait::until(out, &what, limit, Duration::from_millis(500), || {
        let tasks = docker.node_tasks(id)?;
        Ok(if tasks.is_empty() {
            Poll::Ready(())
        } else {
            let list: Vec<String> = tasks.iter().map(|(s, st)| format!("{s} ({st})")).collect();
            Poll::Pending(format!("{} task(s) left: {}", tasks.len(), list.join(", ")))
        })
    })?;
    if let Waited::TimedOut(last) = waited {
        bail!(
            "{node} still runs tasks after {} s ({last}): `docker node ps {node}` on the manager says \
             why (a task with nowhere else to go stays: a placement constraint, or too few nodes)",
            limit.as_secs()
        );
    }
    Ok(())
}

/// Wait until every service of the environment's stack runs its replicas.
fn wait_replicas(env: &Env, out: &Output, limit: Duration) -> Result<()> {
    let s = crate::health_checks::swarm::settings(env)?;
    let docker = session::docker(env)?;
    let waited = wait::until(
        out,
        "the stack's services to run their replicas",
        limit,
        Duration::from_millis(500),
        || {
            let mut short = Vec::new();
            for svc in docker.stack_services(&s.stack)? {
                let (running, desired) = crate::health_checks::swarm::replicas(&docker, &svc)?;
                if running < desired {
                    short.push(format!("{} {running}/{desired}", svc.name));
                }
            }
            Ok(if short.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending(short.join(", "))
            })
        },
    )?;
    if let Waited::TimedOut(last) = waited {
        bail!(
            "the stack's services do not all run their replicas after {} s ({last}): \
             `cargo xtask status {}`",
            limit.as_secs(),
            env.name
        );
    }
    Ok(())
}
