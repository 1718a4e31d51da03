//! Docker Engine API: volumes, containers started with mounts (one-shot
//! jobs and long-running helpers with a restart policy), renaming, and a
//! container's creation template: enough to create another like it on
//! another volume, even after the first is gone.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bollard::models::{
    ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveVolumeOptions, RenameContainerOptions,
};
use serde::{Deserialize, Serialize};

use super::Docker;

/// A container to start: image, command, environment (secrets included:
/// never print `env`), mounts `SOURCE:TARGET[:ro]` (a volume name or an
/// absolute host path), labels.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub binds: Vec<String>,
    pub network: Option<String>,
    pub labels: Vec<(String, String)>,
    /// `unless-stopped` (a helper that must outlive restarts of the engine).
    pub keep_running: bool,
}

/// How a container was created, with its mounts as `SOURCE:TARGET[:ro]`
/// binds: `Docker::create_from_template` makes another like it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Template {
    /// The Engine API's create body (Image, Env, Cmd, Labels, HostConfig,
    /// NetworkingConfig), as JSON. `Image` is the image's ID: the exact
    /// image the container ran, even after its tag moved (a rebuilt or
    /// pulled `postgres:15` may run as another user id).
    pub body: serde_json::Value,
    /// The image's name as the container was created with it (`postgres:15`).
    #[serde(default)]
    pub image_name: String,
}

impl Template {
    pub fn env(&self) -> Vec<String> {
        self.body["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn set_env(&mut self, env: Vec<String>) {
        self.body["Env"] = serde_json::json!(env);
    }
    pub fn image(&self) -> String {
        self.body["Image"].as_str().unwrap_or_default().to_string()
    }
    /// Run `image` instead (the name, when the ID is gone from the engine).
    pub fn set_image(&mut self, image: &str) {
        self.body["Image"] = serde_json::json!(image);
    }
    pub fn binds(&self) -> Vec<String> {
        self.body["HostConfig"]["Binds"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The volume (or host folder) mounted at `target`.
    pub fn source_of(&self, target: &str) -> Option<String> {
        self.binds().into_iter().find_map(|b| {
            let mut parts = b.split(':');
            let source = parts.next()?;
            (parts.next()? == target).then(|| source.to_string())
        })
    }
    /// Mount `source` at `target` instead of what was there.
    pub fn set_bind(&mut self, target: &str, source: &str) {
        let mut binds: Vec<String> = self
            .binds()
            .into_iter()
            .filter(|b| b.split(':').nth(1) != Some(target))
            .collect();
        binds.push(format!("{source}:{target}"));
        self.body["HostConfig"]["Binds"] = serde_json::json!(binds);
    }
    /// The first network, for helpers started beside it.
    pub fn network(&self) -> Option<String> {
        self.body["NetworkingConfig"]["EndpointsConfig"]
            .as_object()
            .and_then(|m| m.keys().min().cloned())
            .or_else(|| {
                self.body["HostConfig"]["NetworkMode"]
                    .as_str()
                    .map(str::to_string)
            })
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Docker {
    pub fn volume_exists(&self, name: &str) -> Result<bool> {
        match self.rt.block_on(self.client.inspect_volume(name)) {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("inspecting volume `{name}` on {}", self.host))
            }
        }
    }

    pub fn create_volume(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let body = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        self.rt
            .block_on(self.client.create_volume(body))
            .with_context(|| format!("creating volume `{name}` on {}", self.host))
            .map(drop)
    }

    /// `docker volume rm NAME`; a volume that is gone is fine.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        match self.rt.block_on(
            self.client
                .remove_volume(name, Some(RemoveVolumeOptions { force: false })),
        ) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "removing volume `{name}` on {} (a container still uses it?)",
                    self.host
                )
            }),
        }
    }

    /// Create and start container `name` as `job` says.
    pub fn start_job(&self, name: &str, job: &Job) -> Result<()> {
        let body = ContainerCreateBody {
            image: Some(job.image.clone()),
            entrypoint: (!job.entrypoint.is_empty()).then(|| job.entrypoint.clone()),
            cmd: (!job.cmd.is_empty()).then(|| job.cmd.clone()),
            env: Some(job.env.clone()),
            user: job.user.clone(),
            labels: Some(job.labels.iter().cloned().collect::<HashMap<_, _>>()),
            host_config: Some(HostConfig {
                binds: Some(job.binds.clone()),
                network_mode: job.network.clone(),
                restart_policy: job.keep_running.then_some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_body(name, body)?;
        self.start_container(name)
    }

    fn create_body(&self, name: &str, body: ContainerCreateBody) -> Result<()> {
        let image = body.image.clone().unwrap_or_default();
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.rt
            .block_on(self.client.create_container(Some(options), body))
            .with_context(|| {
                format!(
                    "creating container `{name}` from {image} on {}: is the image there, and the name free?",
                    self.host
                )
            })
            .map(drop)
    }

    /// `docker rename FROM TO`.
    pub fn rename_container(&self, from: &str, to: &str) -> Result<()> {
        self.rt
            .block_on(self.client.rename_container(
                from,
                RenameContainerOptions {
                    name: to.to_string(),
                },
            ))
            .with_context(|| format!("renaming container `{from}` to `{to}` on {}", self.host))
    }

    /// The last `lines` lines a container printed (known secrets masked).
    pub fn log_tail(&self, name: &str, lines: usize) -> Result<String> {
        let mut buf = Vec::new();
        self.logs(name, false, Some(lines), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// How container `name` was created (None: there is no such container).
    pub fn template(&self, name: &str) -> Result<Option<Template>> {
        let info = match self.rt.block_on(self.client.inspect_container(name, None)) {
            Ok(i) => i,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("inspecting container `{name}` on {}", self.host))
            }
        };
        let config = info.config.unwrap_or_default();
        let image_name = config.image.clone().unwrap_or_default();
        let mut body =
            serde_json::to_value(config).context("reading the container's configuration")?;
        let obj = body
            .as_object_mut()
            .context("a container's configuration")?;
        if let Some(id) = &info.image {
            obj.insert("Image".into(), serde_json::json!(id));
        }
        // Given by the engine to each container, not chosen.
        obj.remove("Hostname");
        let mut host = serde_json::to_value(info.host_config.unwrap_or_default())
            .context("reading the container's host configuration")?;
        let binds: Vec<String> = info
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let source = m.name.or(m.source)?;
                let target = m.destination?;
                let ro = if m.rw == Some(false) { ":ro" } else { "" };
                Some(format!("{source}:{target}{ro}"))
            })
            .collect();
        if let Some(h) = host.as_object_mut() {
            h.remove("Mounts");
            h.insert("Binds".into(), serde_json::json!(binds));
        }
        obj.insert("HostConfig".into(), host);
        let id = info.id.unwrap_or_default();
        let endpoints: serde_json::Map<String, serde_json::Value> = info
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(net, e)| {
                let aliases: Vec<String> = e
                    .aliases
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| !id.starts_with(a.as_str()))
                    .collect();
                (net, serde_json::json!({ "Aliases": aliases }))
            })
            .collect();
        obj.insert(
            "NetworkingConfig".into(),
            serde_json::json!({ "EndpointsConfig": endpoints }),
        );
        Ok(Some(Template { body, image_name }))
    }

    /// Create (not start) container `name` as `template` says.
    pub fn create_from_template(&self, name: &str, template: &Template) -> Result<()> {
        let body: ContainerCreateBody = serde_json::from_value(template.body.clone())
            .context("reading a saved container template")?;
        self.create_body(name, body)
    }
}
