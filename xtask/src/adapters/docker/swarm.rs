//! Docker Engine API, Swarm mode: whether the engine is a swarm manager,
//! a stack's services (image, replicas, update status) and their tasks
//! (state, node), and an image's registry digest. Reduced to what the
//! runbook's steps look at.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bollard::query_parameters::{ListNodesOptions, ListServicesOptions, ListTasksOptions};

use super::Docker;

/// One service of a stack.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Service {
    /// `STACK_service`.
    pub name: String,
    /// The image the spec asks for (`registry/name:tag@sha256:...`).
    pub image: String,
    /// Replicated services: how many tasks are wanted.
    pub replicas: Option<u64>,
    /// The last update: `updating`, `completed`, `paused`, `rollback_started`,
    /// `rollback_paused`, `rollback_completed`; None for a service never updated.
    pub update_state: Option<String>,
    pub update_message: Option<String>,
}

/// One task (a container the orchestrator runs for a service).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Task {
    pub slot: Option<i64>,
    /// The node's host name.
    pub node: String,
    /// new, pending, assigned, starting, running, complete, failed, shutdown, rejected, ...
    pub state: String,
    /// What the orchestrator wants it to be: running, shutdown.
    pub desired: String,
    pub image: String,
    pub error: Option<String>,
    /// The engine's last word on it (`started`, `no suitable node ...`).
    pub message: Option<String>,
}

impl Docker {
    /// Whether this engine is a swarm manager (`docker swarm init` was run).
    pub fn swarm_manager(&self) -> Result<bool> {
        match self.rt.block_on(self.client.inspect_swarm()) {
            Ok(_) => Ok(true),
            // 503: not a swarm member; 406: a worker, not a manager.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 503 | 406,
                ..
            }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("asking {} about its swarm", self.host)),
        }
    }

    /// The engine's own description of a stack's services.
    fn list_stack_services(&self, stack: &str) -> Result<Vec<bollard::models::Service>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.stack.namespace={stack}")],
        )]);
        self.rt
            .block_on(self.client.list_services(Some(ListServicesOptions {
                filters: Some(filters),
                status: None,
            })))
            .with_context(|| format!("listing the services of stack `{stack}` on {}", self.host))
    }

    /// The services of a stack (`docker stack services STACK`), by name.
    pub fn stack_services(&self, stack: &str) -> Result<Vec<Service>> {
        let list = self.list_stack_services(stack)?;
        let mut out: Vec<Service> = list
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                let image = spec
                    .task_template
                    .and_then(|t| t.container_spec)
                    .and_then(|c| c.image)
                    .unwrap_or_default();
                let replicas = spec
                    .mode
                    .and_then(|m| m.replicated)
                    .and_then(|r| r.replicas);
                let (update_state, update_message) = match s.update_status {
                    Some(u) => (
                        u.state.map(|st| st.to_string()).filter(|st| !st.is_empty()),
                        u.message,
                    ),
                    None => (None, None),
                };
                Service {
                    name: spec.name.unwrap_or_default(),
                    image,
                    replicas: replicas.map(|r| r.max(0) as u64),
                    update_state,
                    update_message,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The containers of a stack's tasks on this engine (`all`: stopped too).
    fn list_stack_containers(
        &self,
        stack: &str,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.stack.namespace={stack}")],
        )]);
        self.rt
            .block_on(self.client.list_containers(Some(
                bollard::query_parameters::ListContainersOptions {
                    all,
                    filters: Some(filters),
                    ..Default::default()
                },
            )))
            .with_context(|| format!("listing the containers of stack `{stack}` on {}", self.host))
    }

    /// The running containers of a stack's tasks on this engine, as
    /// (service without the stack prefix, container name).
    pub fn stack_task_containers(&self, stack: &str) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = self
            .list_stack_containers(stack, false)?
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_string();
                let service = c
                    .labels
                    .and_then(|l| l.get("com.docker.swarm.service.name").cloned())
                    .unwrap_or_default();
                let short = service
                    .strip_prefix(&format!("{stack}_"))
                    .unwrap_or(&service)
                    .to_string();
                Some((short, name))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// How many containers of a stack's tasks exist on this engine.
    pub fn stack_containers(&self, stack: &str) -> Result<usize> {
        Ok(self.list_stack_containers(stack, true)?.len())
    }

    /// The tasks of one service, newest first (`docker service ps`).
    pub fn service_tasks(&self, service: &str) -> Result<Vec<Task>> {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let tasks = self
            .rt
            .block_on(self.client.list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            })))
            .with_context(|| {
                format!("listing the tasks of service `{service}` on {}", self.host)
            })?;
        let nodes: HashMap<String, String> = self
            .rt
            .block_on(self.client.list_nodes(None::<ListNodesOptions>))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let host = n.description.and_then(|d| d.hostname)?;
                Some((n.id?, host))
            })
            .collect();
        let mut rows: Vec<(String, Task)> = tasks
            .into_iter()
            .map(|t| {
                let status = t.status.unwrap_or_default();
                let created = t.created_at.map(|c| c.to_string()).unwrap_or_default();
                let image = t
                    .spec
                    .and_then(|s| s.container_spec)
                    .and_then(|c| c.image)
                    .unwrap_or_default();
                let node_id = t.node_id.unwrap_or_default();
                (
                    created,
                    Task {
                        slot: t.slot,
                        node: nodes.get(&node_id).cloned().unwrap_or(node_id),
                        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
                        desired: t.desired_state.map(|s| s.to_string()).unwrap_or_default(),
                        image,
                        error: status.err.filter(|e| !e.is_empty()),
                        message: status.message,
                    },
                )
            })
            .collect();
        rows.sort_by(|a, b| b.0.cmp(&a.0));
        Ok(rows.into_iter().map(|(_, t)| t).collect())
    }

    /// Each service of a stack as the checklist reads a container: its
    /// health check, limits and networks (by name), from the service spec.
    pub fn stack_specs(&self, stack: &str) -> Result<Vec<super::inspect::Spec>> {
        let list = self.list_stack_services(stack)?;
        let networks: HashMap<String, String> = self
            .rt
            .block_on(
                self.client
                    .list_networks(None::<bollard::query_parameters::ListNetworksOptions>),
            )
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| Some((n.id?, n.name?)))
            .collect();
        let mut out: Vec<super::inspect::Spec> = list
            .into_iter()
            .map(|svc| {
                let spec = svc.spec.unwrap_or_default();
                let task = spec.task_template.unwrap_or_default();
                let container = task.container_spec.unwrap_or_default();
                let limits = task.resources.and_then(|r| r.limits).unwrap_or_default();
                let name = spec.name.clone().unwrap_or_default();
                // The engine spells it `Healthcheck`, bollard's model
                // `HealthCheck` (so it is always None): ask the CLI.
                let healthcheck = container
                    .health_check
                    .and_then(|h| h.test)
                    .or_else(|| self.service_healthcheck(&name))
                    .filter(|t| !t.is_empty() && t[0] != "NONE");
                let attached = task.networks.or(spec.networks).unwrap_or_default();
                super::inspect::Spec {
                    name,
                    image: container.image.unwrap_or_default(),
                    healthcheck,
                    memory_bytes: limits.memory_bytes.unwrap_or(0),
                    nano_cpus: limits.nano_cpus.unwrap_or(0),
                    cpu_quota: 0,
                    cpu_period: 0,
                    networks: attached
                        .into_iter()
                        .filter_map(|a| a.target)
                        .map(|id| networks.get(&id).cloned().unwrap_or(id))
                        .collect(),
                    started_at: None,
                    mounts: container
                        .mounts
                        .iter()
                        .flatten()
                        .filter_map(|m| m.target.clone())
                        .collect(),
                    volumes: Vec::new(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A service's health check test, through `docker service inspect`.
    fn service_healthcheck(&self, service: &str) -> Option<Vec<String>> {
        let out = crate::adapters::process::Command::new(
            "docker",
            [
                "service",
                "inspect",
                "--format",
                "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck.Test}}",
                service,
            ],
        )
        .envs(&self.cli_env())
        .read()
        .ok()?;
        serde_json::from_str(out.trim()).ok()
    }

    /// The registry digest of a pushed image (`registry/name@sha256:...`),
    /// for pinning services to exactly what was built.
    pub fn repo_digest(&self, image: &str) -> Result<Option<String>> {
        let repo = image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(r, _)| r)
            .unwrap_or(image);
        let info = self
            .rt
            .block_on(self.client.inspect_image(image))
            .with_context(|| format!("inspecting image `{image}` on {}", self.host))?;
        Ok(info
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|d| d.starts_with(&format!("{repo}@"))))
    }
}
