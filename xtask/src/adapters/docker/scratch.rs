//! Docker Engine API: throwaway containers made beside a service (a release
//! rehearsal's copies of the app): how a running container was started, a
//! new one started the same way with another image and environment, on the
//! same network, with no published port, and removed again.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};

use super::Docker;

/// How a container runs: enough to start another like it.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, secrets included: never print these.
    pub env: Vec<String>,
    /// Its (first) network.
    pub network: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

impl Docker {
    /// How container `name` was started (None: it does not exist).
    pub fn run_spec(&self, name: &str) -> Result<Option<RunSpec>> {
        match self.rt.block_on(self.client.inspect_container(name, None)) {
            Ok(c) => {
                let config = c.config.unwrap_or_default();
                let network = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|n| n.keys().min().cloned());
                Ok(Some(RunSpec {
                    cmd: config.cmd.unwrap_or_default(),
                    env: config.env.unwrap_or_default(),
                    network,
                    user: config.user.filter(|u| !u.is_empty()),
                    working_dir: config.working_dir.filter(|w| !w.is_empty()),
                }))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("inspecting container `{name}` on {}", self.host))
            }
        }
    }

    /// Create and start container `name` from `image` as `spec` says, with
    /// `labels`, publishing no port.
    pub fn run_detached(
        &self,
        name: &str,
        image: &str,
        spec: &RunSpec,
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
            host_config: Some(HostConfig {
                network_mode: spec.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.rt
            .block_on(self.client.create_container(Some(options), body))
            .with_context(|| {
                format!(
                    "creating container `{name}` from {image} on {}: is the image there (`docker pull`)?",
                    self.host
                )
            })?;
        self.start_container(name)
    }

    /// `docker rm -f NAME`; a container that is gone is fine.
    pub fn remove_container(&self, name: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .rt
            .block_on(self.client.remove_container(name, Some(options)))
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("removing container `{name}` on {}", self.host))
            }
        }
    }

    /// The names of the containers, running or not, labelled `key=value`.
    pub fn labelled(&self, key: &str, value: &str) -> Result<Vec<String>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{key}={value}")],
            )])),
            ..Default::default()
        };
        let list = self
            .rt
            .block_on(self.client.list_containers(Some(options)))
            .with_context(|| {
                format!("listing containers labelled {key}={value} on {}", self.host)
            })?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                c.names?
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
            })
            .collect())
    }
}
