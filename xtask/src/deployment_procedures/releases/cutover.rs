//! Production Deployment "blue-green or rolling", on one host: the pieces a
//! cutover is made of. A blue-green service has two Compose services
//! (`NAME-blue`, `NAME-green`); the new colour starts beside the live one,
//! must be healthy twice over (Docker's health check and the service's own
//! endpoint, asked directly), then the reverse proxy is pointed at it
//! (proxy.rs: an nginx reload, or HAProxy's runtime API). A stop-first
//! service (one writer) is replaced in place.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::adapters::compose::Compose;
use crate::adapters::docker::Docker;
use crate::adapters::http;
use crate::adapters::output::Output;
use crate::config::{Env, Expect, ReleaseSettings, ReleasedService, Strategy};
use crate::core::proxy::Proxy;
use crate::core::session;
use crate::core::wait::{self, Poll, Waited};

pub use crate::core::proxy::{other, COLOURS};

/// The target of a release: its Compose project, engine and proxy.
pub struct Stage<'a> {
    pub env: &'a Env,
    pub rel: &'a ReleaseSettings,
    pub compose: Compose,
    pub docker: Docker,
}

impl<'a> Stage<'a> {
    pub fn new(env: &'a Env, rel: &'a ReleaseSettings) -> Result<Stage<'a>> {
        Ok(Stage {
            env,
            rel,
            compose: session::compose(env)?,
            docker: crate::core::session::docker(env)?,
        })
    }

    /// The container Compose made for `service` (None: never created).
    pub fn container_of(&self, service: &str) -> Result<Option<String>> {
        Ok(self
            .docker
            .project_containers(&self.env.compose()?.project)?
            .into_iter()
            .find(|c| c.service.as_deref() == Some(service))
            .map(|c| c.name))
    }

    /// Every image variable the Compose file reads, set to what each
    /// service's container runs now (so that Compose leaves them alone),
    /// with `changes` applied.
    pub fn image_vars(&self, changes: &BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
        let mut vars = BTreeMap::new();
        for (svc, s) in &self.rel.services {
            let units: Vec<(String, Option<&str>)> = match s.strategy {
                Strategy::BlueGreen => COLOURS
                    .iter()
                    .map(|c| (format!("{svc}-{c}"), Some(*c)))
                    .collect(),
                Strategy::StopFirst => vec![(svc.clone(), None)],
            };
            for (unit, colour) in units {
                if let Some(c) = self.container_of(&unit)? {
                    if let Some((image, _, _)) = self.docker.container_image_ip(&c)? {
                        vars.insert(ReleasedService::image_var(svc, colour), image);
                    }
                }
            }
        }
        vars.extend(changes.clone());
        Ok(vars.into_iter().collect())
    }

    /// `compose up -d --no-deps UNITS` with the image variables.
    pub fn up(&self, out: &Output, units: &[String], vars: &[(String, String)]) -> Result<()> {
        let mut words = vec!["up", "-d", "--no-deps"];
        words.extend(units.iter().map(String::as_str));
        self.compose.cmd(&words).envs(vars).run(out)
    }

    pub fn stop(&self, out: &Output, unit: &str, vars: &[(String, String)]) -> Result<()> {
        self.compose.cmd(&["stop", unit]).envs(vars).run(out)
    }

    /// Released units (Compose services) of this environment.
    fn released_units(&self) -> Vec<String> {
        self.rel
            .services
            .iter()
            .flat_map(|(svc, s)| match s.strategy {
                Strategy::BlueGreen => COLOURS
                    .iter()
                    .map(|c| format!("{svc}-{c}"))
                    .collect::<Vec<_>>(),
                Strategy::StopFirst => vec![svc.clone()],
            })
            .collect()
    }

    /// Whether every container of the project that is not released runs
    /// (then Compose need not be asked, which takes seconds), the proxy as
    /// the kind `release.proxy.kind` names.
    pub fn base_running(&self) -> Result<bool> {
        let released = self.released_units();
        let base: Vec<_> = self
            .docker
            .project_containers(&self.env.compose()?.project)?
            .into_iter()
            .filter(|c| !c.service.as_ref().is_some_and(|s| released.contains(s)))
            .collect();
        Ok(!base.is_empty()
            && base
                .iter()
                .any(|c| c.service.as_deref() == Some(self.rel.proxy.service.as_str()))
            && base.iter().all(|c| c.state == "running")
            && self.proxy()?.runs_its_kind()?)
    }

    /// Start `unit`'s existing container when it was made from `image`;
    /// false when there is none (Compose must create it).
    pub fn start_kept(&self, unit: &str, image: &str) -> Result<bool> {
        let Some(name) = self.container_of(unit)? else {
            return Ok(false);
        };
        match self.docker.container_image_ip(&name)? {
            Some((i, _, running)) if i == image => {
                if !running {
                    self.docker.start_container(&name)?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The Compose services that are not released (database, proxy, ...).
    pub fn base_services(&self) -> Result<Vec<String>> {
        let listed = self
            .compose
            .cmd(&["config", "--services"])
            .envs(&self.image_vars(&BTreeMap::new())?)
            .read()?;
        let released = self.released_units();
        Ok(listed
            .lines()
            .map(str::trim)
            .filter(|s| !s.is_empty() && !released.iter().any(|r| r == s))
            .map(String::from)
            .collect())
    }

    fn proxy(&self) -> Result<Proxy<'a>> {
        Proxy::new(self.env, self.rel)
    }

    /// The live colour of each blue-green service, as the proxy's file says.
    pub fn live_colours(&self) -> Result<BTreeMap<String, String>> {
        self.proxy()?.live_colours()
    }

    /// Point the proxy at `colours` (service → colour): core::proxy.
    pub fn switch(&self, colours: &BTreeMap<String, String>) -> Result<()> {
        self.proxy()?.switch(colours)
    }

    /// A canary: `share` % of the requests to `colours`, the rest to the
    /// other colour (HAProxy's weights; both ready).
    pub fn canary(&self, colours: &BTreeMap<String, String>, share: u32) -> Result<()> {
        self.proxy()?.switch_share(colours, Some(share))
    }

    /// Wait until the proxy has no request left on `from`, at most `limit`.
    pub fn drain(
        &self,
        out: &Output,
        from: &BTreeMap<String, String>,
        limit: Duration,
    ) -> Result<()> {
        self.proxy()?.drain(out, from, limit)
    }

    /// Wait until `unit`'s container is healthy for Docker and, for a
    /// blue-green service, answers its health path directly.
    pub fn wait_healthy(&self, out: &Output, svc: &str, unit: &str, limit: Duration) -> Result<()> {
        let s = &self.rel.services[svc];
        // Docker's first health check runs one interval after the start:
        // poll often so that the switch follows it closely.
        let waited = wait::until(out, unit, limit, Duration::from_millis(100), || {
            Ok(match self.probe(svc, s, unit) {
                Ok(()) => Poll::Ready(()),
                Err(why) => Poll::Pending(why),
            })
        })?;
        match waited {
            Waited::Ready(()) => Ok(()),
            Waited::TimedOut(last) => bail!(
                "`{unit}` did not become healthy within {} s: {last}. It is not serving; `cargo xtask logs {unit} --env {}` says why",
                limit.as_secs(),
                self.env.name
            ),
        }
    }

    /// `http://IP:PORT` of a colour's container on its network: where it
    /// answers before the proxy sends it anything.
    pub fn own_address(&self, unit: &str, port: u16) -> Result<String> {
        let name = self
            .container_of(unit)?
            .ok_or_else(|| anyhow::anyhow!("`{unit}` has no container"))?;
        let ip = self
            .docker
            .container_image_ip(&name)?
            .and_then(|(_, ip, _)| ip)
            .ok_or_else(|| anyhow::anyhow!("`{name}` has no IP address on its network"))?;
        // As the server sees it: the smoke tests reach it (through the SSH
        // connection on an `ssh` environment).
        Ok(format!("http://{ip}:{port}"))
    }

    fn probe(&self, svc: &str, s: &ReleasedService, unit: &str) -> Result<(), String> {
        let name = self
            .container_of(unit)
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| "no container yet".to_string())?;
        let c = self
            .docker
            .container(&name)
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| "no container yet".to_string())?;
        if c.state != "running" {
            return Err(format!("state {}", c.state));
        }
        match c.health.as_deref() {
            Some("healthy") | None | Some("none") => {}
            Some(h) => return Err(format!("Docker health {h}")),
        }
        let (Some(port), Some(path)) = (s.port, s.health_path.as_deref()) else {
            return Ok(());
        };
        let ip = self
            .docker
            .container_image_ip(&name)
            .map_err(|e| format!("{e:#}"))?
            .and_then(|(_, ip, _)| ip)
            .ok_or_else(|| "no IP address yet".to_string())?;
        let url = crate::core::session::reach(self.env, &format!("http://{ip}:{port}{path}"))
            .map_err(|e| format!("{e:#}"))?;
        let reply = http::get(&url, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        judge(self.env, svc, reply.status, &reply.body).map_err(|why| format!("{url}: {why}"))
    }
}

/// Whether `svc`'s health endpoint answered well (`status`, `body`), as
/// its health check in ops.toml expects (the runbook's JSON, or any 2xx).
pub fn judge(env: &Env, svc: &str, status: u16, body: &str) -> Result<(), String> {
    let expect = env
        .settings
        .services
        .get(svc)
        .and_then(|x| x.health.as_ref())
        .map(|h| h.expect)
        .unwrap_or_default();
    match expect {
        Expect::RunbookJson => crate::health_checks::validate_runbook_json(status, body)
            .map(drop)
            .map_err(|(exp, got)| format!("expected {exp}, got {got}")),
        Expect::Http2xx if (200..300).contains(&status) => Ok(()),
        Expect::Http2xx => Err(format!("answered {status}")),
    }
}
