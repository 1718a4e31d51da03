//! Docker Engine API, Swarm nodes: the nodes a manager knows (host name,
//! role, availability, state, address), a node's availability changed
//! (`docker node update --availability`), the tasks running on a node, and
//! a one-shot service whose tasks tell whether each node can pull an image.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use bollard::models::{NodeSpecAvailabilityEnum, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions, UpdateNodeOptions};

use super::Docker;

/// One node of the swarm, as its manager sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    /// The engine's words on the state (`heartbeat failure`).
    pub message: Option<String>,
    pub addr: Option<String>,
    /// The leader manager.
    pub leader: bool,
    /// The engine's version on the node.
    pub engine: Option<String>,
}

/// What a node did with a one-shot pull task.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullResult {
    pub node: String,
    /// None: pulled (the task got past preparing); Some: the engine's error.
    pub error: Option<String>,
}

impl Docker {
    /// Every node of the swarm (`docker node ls`), by host name.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        let list = self
            .rt
            .block_on(self.client.list_nodes(None::<ListNodesOptions>))
            .with_context(|| format!("listing the swarm's nodes on {}", self.host))?;
        let mut out: Vec<Node> = list
            .into_iter()
            .map(|n| {
                let spec = n.spec.unwrap_or_default();
                let status = n.status.unwrap_or_default();
                let desc = n.description.unwrap_or_default();
                Node {
                    id: n.id.unwrap_or_default(),
                    hostname: desc.hostname.unwrap_or_default(),
                    role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
                    availability: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
                    state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                    message: status.message.filter(|m| !m.is_empty()),
                    addr: status.addr,
                    leader: n.manager_status.and_then(|m| m.leader).unwrap_or(false),
                    engine: desc.engine.and_then(|e| e.engine_version),
                }
            })
            .collect();
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }

    /// One node by host name or id; an error lists the nodes there are.
    pub fn node(&self, name: &str) -> Result<Node> {
        let nodes = self.nodes()?;
        if let Some(n) = nodes.iter().find(|n| n.hostname == name || n.id == name) {
            return Ok(n.clone());
        }
        let names: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
        bail!(
            "the swarm at {} has no node `{name}`: its nodes are {} (`docker node ls`)",
            self.host,
            names.join(", ")
        )
    }

    /// Set a node's availability (`active`, `drain`, `pause`), keeping the
    /// rest of its spec: `POST /nodes/{id}/update` at its current version.
    pub fn set_availability(&self, id: &str, availability: &str) -> Result<()> {
        let node = self
            .rt
            .block_on(self.client.inspect_node(id))
            .with_context(|| format!("inspecting node {id} on {}", self.host))?;
        let version = node
            .version
            .and_then(|v| v.index)
            .context("the engine gave no version for the node")?;
        let mut spec = node.spec.unwrap_or_default();
        spec.availability = Some(match availability {
            "active" => NodeSpecAvailabilityEnum::ACTIVE,
            "drain" => NodeSpecAvailabilityEnum::DRAIN,
            "pause" => NodeSpecAvailabilityEnum::PAUSE,
            other => bail!("no availability `{other}`: active, drain or pause"),
        });
        self.rt
            .block_on(self.client.update_node(
                id,
                spec,
                UpdateNodeOptions {
                    version: version as i64,
                },
            ))
            .with_context(|| format!("setting node {id}'s availability to {availability}"))
    }

    /// The tasks on a node that run or are about to (`docker node ps NODE`
    /// without the finished ones), as (service name, state).
    pub fn node_tasks(&self, id: &str) -> Result<Vec<(String, String)>> {
        let filters = HashMap::from([("node".to_string(), vec![id.to_string()])]);
        let tasks = self
            .rt
            .block_on(self.client.list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            })))
            .with_context(|| format!("listing the tasks on node {id} on {}", self.host))?;
        let services = self.service_names()?;
        Ok(tasks
            .into_iter()
            .filter_map(|t| {
                let state = t.status.and_then(|s| s.state)?;
                let live = matches!(
                    state,
                    TaskState::ASSIGNED
                        | TaskState::ACCEPTED
                        | TaskState::PREPARING
                        | TaskState::READY
                        | TaskState::STARTING
                        | TaskState::RUNNING
                );
                if !live {
                    return None;
                }
                let sid = t.service_id.unwrap_or_default();
                let name = services.get(&sid).cloned().unwrap_or(sid);
                Some((name, state.to_string()))
            })
            .collect())
    }

    fn service_names(&self) -> Result<HashMap<String, String>> {
        Ok(self
            .rt
            .block_on(
                self.client
                    .list_services(None::<bollard::query_parameters::ListServicesOptions>),
            )
            .with_context(|| format!("listing the services on {}", self.host))?
            .into_iter()
            .filter_map(|s| Some((s.id?, s.spec?.name?)))
            .collect())
    }

    /// The tasks of a one-shot service by node host name: `None` while the
    /// node is still pulling, `Some(result)` once it is known. A task past
    /// `preparing` pulled the image; a rejected one names why.
    pub fn pull_results(&self, service: &str) -> Result<Vec<(String, Option<PullResult>)>> {
        let nodes: HashMap<String, String> = self
            .nodes()?
            .into_iter()
            .map(|n| (n.id, n.hostname))
            .collect();
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let tasks = self
            .rt
            .block_on(self.client.list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            })))
            .with_context(|| format!("listing the tasks of `{service}` on {}", self.host))?;
        let mut by_node: HashMap<String, Option<PullResult>> = HashMap::new();
        for t in tasks {
            let node_id = t.node_id.unwrap_or_default();
            if node_id.is_empty() {
                continue;
            }
            let node = nodes.get(&node_id).cloned().unwrap_or(node_id);
            let status = t.status.unwrap_or_default();
            let err = status.err.filter(|e| !e.is_empty());
            let result = match status.state {
                Some(TaskState::REJECTED) | Some(TaskState::FAILED)
                    if err.as_deref().is_some_and(is_image_error) =>
                {
                    Some(PullResult {
                        node: node.clone(),
                        error: err,
                    })
                }
                Some(
                    TaskState::STARTING
                    | TaskState::RUNNING
                    | TaskState::COMPLETE
                    | TaskState::FAILED
                    | TaskState::SHUTDOWN,
                ) => Some(PullResult {
                    node: node.clone(),
                    error: None,
                }),
                Some(TaskState::REJECTED) => Some(PullResult {
                    node: node.clone(),
                    error: err.or(status.message),
                }),
                _ => None,
            };
            // A node's first known result stands (a retry does not hide it).
            let slot = by_node.entry(node).or_insert(None);
            if slot.is_none() {
                *slot = result;
            }
        }
        let mut v: Vec<_> = by_node.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }
}

/// What a node has and what the tasks placed on it take (their
/// reservations, else their limits): the room a rolling update's extra
/// task needs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Room {
    pub hostname: String,
    /// Ready and active: the scheduler may place a task there.
    pub schedulable: bool,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub used_nano_cpus: i64,
    pub used_memory_bytes: i64,
}

impl Docker {
    /// Every node's resources and what its running tasks take.
    pub fn room(&self) -> Result<Vec<Room>> {
        let nodes = self
            .rt
            .block_on(self.client.list_nodes(None::<ListNodesOptions>))
            .with_context(|| format!("listing the swarm's nodes on {}", self.host))?;
        let filters = HashMap::from([("desired-state".to_string(), vec!["running".to_string()])]);
        let tasks = self
            .rt
            .block_on(self.client.list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            })))
            .with_context(|| format!("listing the running tasks on {}", self.host))?;
        let mut used: HashMap<String, (i64, i64)> = HashMap::new();
        for t in tasks {
            let (Some(node), Some(spec)) = (t.node_id, t.spec) else {
                continue;
            };
            let res = spec.resources.unwrap_or_default();
            let (rc, rm) = res
                .reservations
                .map(|r| (r.nano_cpus.unwrap_or(0), r.memory_bytes.unwrap_or(0)))
                .unwrap_or((0, 0));
            let (lc, lm) = res
                .limits
                .map(|l| (l.nano_cpus.unwrap_or(0), l.memory_bytes.unwrap_or(0)))
                .unwrap_or((0, 0));
            let e = used.entry(node).or_default();
            e.0 += if rc > 0 { rc } else { lc };
            e.1 += if rm > 0 { rm } else { lm };
        }
        let mut out: Vec<Room> = nodes
            .into_iter()
            .map(|n| {
                let id = n.id.unwrap_or_default();
                let desc = n.description.unwrap_or_default();
                let res = desc.resources.unwrap_or_default();
                let ready = n
                    .status
                    .and_then(|s| s.state)
                    .map(|s| s.to_string())
                    .as_deref()
                    == Some("ready");
                let active = n
                    .spec
                    .and_then(|s| s.availability)
                    .map(|a| a.to_string())
                    .as_deref()
                    == Some("active");
                let (uc, um) = used.get(&id).copied().unwrap_or((0, 0));
                Room {
                    hostname: desc.hostname.unwrap_or(id),
                    schedulable: ready && active,
                    nano_cpus: res.nano_cpus.unwrap_or(0),
                    memory_bytes: res.memory_bytes.unwrap_or(0),
                    used_nano_cpus: uc,
                    used_memory_bytes: um,
                }
            })
            .collect();
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }
}

/// Whether a task's error says the image was not there or not pulled.
fn is_image_error(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("no such image") || e.contains("pull") || e.contains("manifest")
}
