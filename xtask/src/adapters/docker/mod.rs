//! Docker Engine API (bollard), synchronous at the edge: one small
//! current-thread runtime, made once, with `block_on` inside each method.
//! The sync `postgres` client must never be called from inside these.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, LogsOptionsBuilder,
};
use futures_util::StreamExt;

/// A client of one engine. Cloning shares the runtime and the connection
/// pool: a command makes one per engine (`core::session::docker`).
#[derive(Clone)]
pub struct Docker {
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    client: bollard::Docker,
    /// Where the engine is, for messages.
    pub host: String,
    /// Docker's `DOCKER_CERT_PATH` folder of an engine reached with TLS.
    certs: Option<PathBuf>,
}

/// What `docker inspect` says about one container, reduced to what the
/// runbook looks at.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Container {
    pub name: String,
    /// The Compose service, from the container's labels.
    pub service: Option<String>,
    /// created, running, exited, restarting, ...
    pub state: String,
    /// healthy, unhealthy, starting; None when the image has no healthcheck.
    pub health: Option<String>,
    /// The last healthcheck's output, to explain an unhealthy container.
    pub health_output: Option<String>,
    pub image: String,
    pub ports: Vec<String>,
    pub exit_code: Option<i64>,
}

/// A TLS handshake with the engine that failed on a certificate, as the
/// operator can act on it (rustls's error is deep in hyper's chain).
fn tls_refusal(e: &anyhow::Error, host: &str, dir: &Path) -> Option<String> {
    let text = e
        .chain()
        .map(|c| format!("{c} {c:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    let show = format!(
        "`openssl s_client -connect {} -showcerts` shows the engine's certificate",
        host.trim_start_matches("tcp://")
    );
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        Some(format!(
            "the Docker engine at {host} has a certificate not signed by {} (docker_cert_path): \
             put the CA of the engine's --tlscert in it; {show}",
            dir.join("ca.pem").display()
        ))
    } else if text.contains("NotValidForName") {
        Some(format!(
            "the Docker engine's certificate is not valid for the address in docker_host = \"{host}\": \
             use a name or address its certificate lists; {show}"
        ))
    } else if [
        "BadCertificate",
        "CertificateRequired",
        "CertificateUnknown",
        "UnknownCA",
    ]
    .iter()
    .any(|alert| text.contains(alert))
    {
        Some(format!(
            "the Docker engine at {host} refused this machine's client certificate ({} and key.pem in \
             docker_cert_path): it must be signed by the CA the engine trusts (`dockerd --tlscacert`)",
            dir.join("cert.pem").display()
        ))
    } else {
        None
    }
}

/// The engine to use: the environment's setting in ops.toml, else
/// `DOCKER_HOST`, else the local socket.
pub fn resolve_host(configured: Option<&str>) -> String {
    configured
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

impl Docker {
    /// A client of the engine at `host`; with `certs` (Docker's
    /// `DOCKER_CERT_PATH` folder: ca.pem, cert.pem, key.pem), over TLS with
    /// this client's certificate, the engine's checked against ca.pem.
    pub fn connect(host: &str, certs: Option<&Path>) -> Result<Docker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime for the Docker client")?;
        let from_shell = std::env::var("DOCKER_HOST").is_ok_and(|h| h == host);
        let hint = if from_shell {
            "this address comes from DOCKER_HOST in your shell: unset it or fix it (or set `docker_host` in ops.toml); \
             is the Docker daemon running there?"
        } else {
            "is the Docker daemon running (`systemctl start docker`), and do you have access to it? \
             The engine is chosen by `docker_host` in ops.toml, else DOCKER_HOST"
        };
        let version = bollard::API_DEFAULT_VERSION;
        let client = {
            let _guard = rt.enter();
            if let Some(dir) = certs {
                let [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
                for f in [&ca, &cert, &key] {
                    if !f.is_file() {
                        bail!(
                            "{} is missing: docker_cert_path ({}) must hold Docker's ca.pem (the engine's CA), \
                             cert.pem and key.pem (this client's certificate and key), as DOCKER_CERT_PATH does",
                            f.display(),
                            dir.display()
                        );
                    }
                }
                bollard::Docker::connect_with_ssl(host, &key, &cert, &ca, 30, version)
            } else if host.starts_with("unix://") {
                bollard::Docker::connect_with_unix(host, 30, version)
            } else if host.starts_with("tcp://") || host.starts_with("http://") {
                bollard::Docker::connect_with_http(host, 30, version)
            } else {
                bail!(
                    "Docker host `{host}` is not supported: use unix:///path/to/docker.sock or tcp://HOST:PORT \
                     (for a remote engine over SSH, forward its socket: `ssh -NL /tmp/docker.sock:/var/run/docker.sock HOST` \
                     and set docker_host = \"unix:///tmp/docker.sock\")"
                )
            }
        }
        .with_context(|| format!("cannot reach the Docker engine at {host}: {hint}"))?;
        // The engine here may be older than the crate's default API version.
        let client = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.negotiate_version())
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?
                    .map_err(anyhow::Error::from)
            })
            .map_err(|e| match certs.and_then(|dir| tls_refusal(&e, host, dir)) {
                Some(why) => e.context(why),
                None => e.context(format!("cannot reach the Docker engine at {host}: {hint}")),
            })?;
        Ok(Docker {
            rt: std::sync::Arc::new(rt),
            client,
            host: host.to_string(),
            certs: certs.map(Path::to_path_buf),
        })
    }

    /// The variables that point the `docker` CLI at this engine.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        let mut vars = vec![("DOCKER_HOST".to_string(), self.host.clone())];
        if let Some(dir) = &self.certs {
            vars.push(("DOCKER_TLS_VERIFY".into(), "1".into()));
            vars.push(("DOCKER_CERT_PATH".into(), dir.display().to_string()));
        }
        vars
    }

    /// One container by name; `None` when it does not exist.
    pub fn container(&self, name: &str) -> Result<Option<Container>> {
        self.rt.block_on(inspect(&self.client, name))
    }

    /// Several containers, inspected concurrently.
    pub fn containers(&self, names: &[String]) -> Vec<Result<Option<Container>>> {
        self.rt.block_on(futures_util::future::join_all(
            names.iter().map(|n| inspect(&self.client, n)),
        ))
    }

    /// Every container of a Compose project, running or not.
    pub fn project_containers(&self, project: &str) -> Result<Vec<Container>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("com.docker.compose.project={project}")],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .rt
            .block_on(self.client.list_containers(Some(options)))
            .with_context(|| {
                format!(
                    "listing the containers of Compose project `{project}` on {}",
                    self.host
                )
            })?;
        let names: Vec<String> = list
            .iter()
            .filter_map(|c| {
                c.names
                    .as_ref()?
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
            })
            .collect();
        let mut found = Vec::new();
        for c in self.containers(&names) {
            if let Some(c) = c? {
                found.push(c);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Remove an image; false when the engine refuses (a container uses it)
    /// or it is gone.
    pub fn remove_image(&self, image: &str) -> Result<bool> {
        match self.rt.block_on(self.client.remove_image(
            image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )) {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing image `{image}` on {}", self.host)),
        }
    }

    /// Whether a local image exists.
    pub fn image_present(&self, image: &str) -> Result<bool> {
        match self.rt.block_on(self.client.inspect_image(image)) {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("inspecting image `{image}` on {}", self.host))
            }
        }
    }

    /// A label of a local image (`None`: no such image or no such label).
    pub fn image_label(&self, image: &str, key: &str) -> Result<Option<String>> {
        match self.rt.block_on(self.client.inspect_image(image)) {
            Ok(i) => Ok(i
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(key).cloned())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("inspecting image `{image}` on {}", self.host))
            }
        }
    }

    /// The container's image reference (as created: `registry/name:tag`),
    /// its IP address (on its first network), and whether it runs.
    pub fn container_image_ip(&self, name: &str) -> Result<Option<(String, Option<String>, bool)>> {
        match self.rt.block_on(self.client.inspect_container(name, None)) {
            Ok(c) => {
                let image = c
                    .config
                    .as_ref()
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                let ip = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .and_then(|n| {
                        n.values()
                            .find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty()))
                    })
                    .filter(|ip| !ip.is_empty());
                let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                Ok(Some((image, ip, running)))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("inspecting container `{name}` on {}", self.host))
            }
        }
    }

    /// Copy a container's logs to `sink`; with `follow`, until the container
    /// stops or the process is interrupted.
    pub fn logs(
        &self,
        container: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn Write,
    ) -> Result<()> {
        let tail = tail
            .map(|n| n.to_string())
            .unwrap_or_else(|| "all".to_string());
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        self.rt.block_on(async {
            let mut stream = self.client.logs(container, Some(options));
            while let Some(item) = stream.next().await {
                let item = item.with_context(|| format!("reading the logs of `{container}`"))?;
                let bytes: &[u8] = match &item {
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::StdErr { message }
                    | bollard::container::LogOutput::Console { message }
                    | bollard::container::LogOutput::StdIn { message } => message.as_ref(),
                };
                let text = super::output::redact(&String::from_utf8_lossy(bytes));
                sink.write_all(text.as_bytes())
                    .context("writing logs to stdout")?;
                sink.flush().ok();
            }
            Ok(())
        })
    }
}

/// What a `docker exec` ended with.
pub struct ExecOutcome {
    pub exit_code: i64,
    /// Its standard error, for messages (known secrets masked).
    pub stderr: String,
}

impl Docker {
    /// Run `cmd` inside `container` (the runbook's `docker exec` pattern)
    /// without a shell or a TTY: `stdin`, if given, is streamed in and then
    /// closed; standard output is streamed into `stdout` byte for byte (safe
    /// for binary dumps); standard error is collected. Nothing is left
    /// behind in the container.
    pub fn exec(
        &self,
        container: &str,
        cmd: &[&str],
        env: &[String],
        stdin: Option<&mut (dyn std::io::Read + Send)>,
        stdout: &mut dyn Write,
    ) -> Result<ExecOutcome> {
        self.exec_as(None, container, cmd, env, stdin, stdout)
    }

    /// `exec` as `user` (`docker exec --user`); None: the image's user.
    pub fn exec_as(
        &self,
        user: Option<&str>,
        container: &str,
        cmd: &[&str],
        env: &[String],
        stdin: Option<&mut (dyn std::io::Read + Send)>,
        stdout: &mut dyn Write,
    ) -> Result<ExecOutcome> {
        use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
        use tokio::io::AsyncWriteExt;
        let what = format!(
            "`docker exec {container} {}`",
            cmd.first().copied().unwrap_or("")
        );
        self.rt.block_on(async {
            let created = self
                .client
                .create_exec(
                    container,
                    CreateExecOptions {
                        cmd: Some(cmd.iter().map(|s| s.to_string()).collect::<Vec<String>>()),
                        env: Some(env.to_vec()),
                        attach_stdin: Some(stdin.is_some()),
                        user: user.map(str::to_string),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        tty: Some(false),
                        ..Default::default()
                    },
                )
                .await
                .with_context(|| {
                    format!(
                        "starting {what} on {}: is the container running?",
                        self.host
                    )
                })?;
            let started = self
                .client
                .start_exec(
                    &created.id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await
                .with_context(|| format!("starting {what}"))?;
            let StartExecResults::Attached {
                mut output,
                mut input,
            } = started
            else {
                bail!("{what} started detached; expected an attached stream");
            };
            let mut stderr = Vec::new();
            let feed = async {
                if let Some(reader) = stdin {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let n = reader
                            .read(&mut buf)
                            .context("reading the input for docker exec")?;
                        if n == 0 {
                            break;
                        }
                        input
                            .write_all(&buf[..n])
                            .await
                            .with_context(|| format!("sending input to {what}"))?;
                    }
                }
                input.shutdown().await.ok();
                anyhow::Ok(())
            };
            let drain = async {
                while let Some(item) = output.next().await {
                    match item.with_context(|| format!("reading the output of {what}"))? {
                        bollard::container::LogOutput::StdOut { message } => stdout
                            .write_all(&message)
                            .with_context(|| format!("writing the output of {what}"))?,
                        bollard::container::LogOutput::StdErr { message } => {
                            stderr.extend_from_slice(&message)
                        }
                        _ => {}
                    }
                }
                anyhow::Ok(())
            };
            let (fed, drained) = futures_util::future::join(feed, drain).await;
            drained?;
            fed?;
            let inspected = self
                .client
                .inspect_exec(&created.id)
                .await
                .with_context(|| format!("asking how {what} ended"))?;
            Ok(ExecOutcome {
                exit_code: inspected.exit_code.unwrap_or(-1),
                stderr: super::output::redact(String::from_utf8_lossy(&stderr).trim()),
            })
        })
    }
}

/// `docker inspect NAME`; `None` when there is no such container.
async fn inspect_raw(
    client: &bollard::Docker,
    name: &str,
) -> Result<Option<bollard::models::ContainerInspectResponse>> {
    match client
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(info) => Ok(Some(info)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting container `{name}`")),
    }
}

async fn inspect(client: &bollard::Docker, name: &str) -> Result<Option<Container>> {
    let Some(info) = inspect_raw(client, name).await? else {
        return Ok(None);
    };
    let state = info.state.as_ref();
    let health = state.and_then(|s| s.health.as_ref());
    let health_output = health
        .and_then(|h| h.log.as_ref())
        .and_then(|log| log.last())
        .and_then(|r| r.output.clone())
        .map(|o| o.trim().to_string());
    let config = info.config.as_ref();
    let mut ports = Vec::new();
    if let Some(map) = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
    {
        for (port, bindings) in map {
            for b in bindings.iter().flatten() {
                let ip = b.host_ip.clone().unwrap_or_default();
                let hp = b.host_port.clone().unwrap_or_default();
                ports.push(format!("{ip}:{hp}->{port}"));
            }
        }
        ports.sort();
    }
    Ok(Some(Container {
        name: info
            .name
            .clone()
            .unwrap_or_else(|| name.to_string())
            .trim_start_matches('/')
            .to_string(),
        service: config
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get("com.docker.compose.service").cloned()),
        state: state
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".to_string()),
        health: health.and_then(|h| h.status).map(|s| s.to_string()),
        health_output,
        image: config.and_then(|c| c.image.clone()).unwrap_or_default(),
        ports,
        exit_code: state.and_then(|s| s.exit_code),
    }))
}

impl Docker {
    /// `docker stop -t SECS NAME`; stopping a stopped container is fine.
    pub fn stop_container(&self, name: &str, timeout_secs: i32) -> Result<()> {
        let options = bollard::query_parameters::StopContainerOptions {
            t: Some(timeout_secs),
            signal: None,
        };
        match self
            .rt
            .block_on(self.client.stop_container(name, Some(options)))
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("stopping container `{name}` on {}", self.host))
            }
        }
    }

    /// `docker start NAME`; starting a running container is fine.
    pub fn start_container(&self, name: &str) -> Result<()> {
        match self.rt.block_on(self.client.start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )) {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("starting container `{name}` on {}", self.host))
            }
        }
    }
}

mod containers;
mod inspect;
mod nodes;
mod scratch;
mod swarm;
pub use containers::{Job, Template};
pub use inspect::Spec;
pub use nodes::{Node, PullResult, Room};
pub use scratch::RunSpec;
pub use swarm::Service as SwarmService;
