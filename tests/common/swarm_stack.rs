//! The demo stack on a swarm (`driver = "swarm"`) for the tests: its own
//! stack name and ports, an ops.toml pointing at a cluster's manager
//! (`cluster.rs`), the released images through the TLS registry with a
//! login kept in a Docker config of the test's own. Placement from
//! ops.toml: the database on the node labelled `db=true`, the proxy (the
//! published ports) on the manager, the app and the ingestion service on
//! the workers. mre-ops reaches the manager as it reaches a real one: over
//! SSH (an sshd in the manager's namespace), the Engine API, the database
//! and the health URLs through that connection.

use std::path::PathBuf;

use super::netns::NsEngine;
use super::release::{remove_release_images, TlsRegistry, SMOKE_USER};
use super::ssh::SshHost;
use super::{ensure_demo_images, free_port, workspace_root, xtask_env, Run, TempDir, XTASK};

/// A stack of the demo under its own name and ports on a swarm whose
/// manager is `engine` (which goes with everything on it); the release
/// images built and tagged here are removed on drop.
pub struct SwarmStack {
    /// The manager's socket (`unix://...`) and address.
    pub docker_host: String,
    pub addr: std::net::Ipv4Addr,
    pub dir: TempDir,
    pub config: PathBuf,
    pub stack: String,
    pub app: u16,
    pub ingestion: u16,
    pub postgres: u16,
    /// The TLS registry's address, and its login.
    pub registry: String,
    tls: &'static TlsRegistry,
    /// `DOCKER_CONFIG` of the test's commands: the registry login goes
    /// there, never to this machine's `~/.docker`.
    docker_config: TempDir,
    /// The manager's sshd: mre-ops's only way in.
    pub ssh: SshHost,
}

impl SwarmStack {
    pub fn new(tag: &str, engine: &NsEngine, tls: &'static TlsRegistry) -> SwarmStack {
        ensure_demo_images();
        let dir = TempDir::new(tag);
        let stack = format!("mre-{tag}-{}", std::process::id());
        let from = workspace_root().join("prisma/migrations");
        let st = std::process::Command::new("cp")
            .args([
                "-r",
                from.to_str().unwrap(),
                dir.path().join("migrations").to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success());
        // The stack's images that no release builds (the database, the
        // proxy, both placed on the manager) exist only on this machine's
        // engine: loaded into the manager (no registry: no compression).
        load_image(
            &["mre-demo-postgres:15", "mre-demo-proxy:2"],
            &engine.docker_host(),
        );
        let mut s = SwarmStack {
            docker_host: engine.docker_host(),
            addr: engine.ns_addr(),
            dir,
            config: PathBuf::new(),
            stack,
            app: free_port(),
            ingestion: free_port(),
            postgres: free_port(),
            registry: tls.address.clone(),
            tls,
            docker_config: TempDir::new(&format!("{tag}-docker-config")),
            ssh: SshHost::start(engine),
        };
        s.config = s.write_config(
            &workspace_root()
                .join("demo/docker/app")
                .display()
                .to_string(),
        );
        s
    }

    pub fn write_config(&self, app_context: &str) -> PathBuf {
        // The same ports each time: a changed port is a changed proxy
        // service, replaced stop-first (its host ports are taken).
        let (stack, app, ingestion, postgres, registry) = (
            &self.stack,
            self.app,
            self.ingestion,
            self.postgres,
            &self.registry,
        );
        let (docker_host, addr) = (&self.docker_host, self.addr);
        let (ssh, ssh_config) = (
            self.ssh.target(),
            self.ssh.config_path().display().to_string(),
        );
        self.dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.sw]
driver = "swarm"
ssh = "{ssh}"
ssh_config = "{ssh_config}"
docker_host = "{docker_host}"
env_file = ".env.sw"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.sw.swarm]
stack = "{stack}"
files = ["{file}"]
pre_build = [["{xtask}", "-q", "demo", "prepare"]]
env = {{ MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}" }}
monitor_secs = 3
[environments.sw.swarm.services]
mre-app = {{ replicas = 2, constraints = ["node.role == worker"] }}
mre-liverc-ingestion-service = {{ constraints = ["node.role == worker"] }}
mre-postgres = {{ constraints = ["node.labels.db == true"] }}
mre-proxy = {{ constraints = ["node.role == manager"] }}
[environments.sw.services.mre-app]
health = {{ url = "http://{addr}:{app}/api/health", expect = "runbook-json" }}
[environments.sw.database]
host = "{addr}"
port = {postgres}
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.sw.migrations]
dir = "migrations"
[environments.sw.release]
registry = "{registry}"
registry_user_env = "MRE_REG_USER"
registry_password_env = "MRE_REG_PASSWORD"
keep = 3
health_timeout_secs = 90
proxy = {{ service = "mre-proxy" }}
images = {{ mre-demo-app = {{ context = "{app_context}" }} }}
[environments.sw.release.services.mre-app]
image = "mre-demo-app"
strategy = "blue-green"
[environments.sw.release.services.mre-liverc-ingestion-service]
image = "mre-demo-app"
strategy = "stop-first"
"#,
                file = workspace_root().join("demo/docker-stack.yml").display(),
                xtask = XTASK,
            ),
        )
    }

    /// The xtask binary on this stack's ops.toml, with the smoke user, the
    /// registry's login and the test's Docker config; the registry's
    /// password must never be printed.
    pub fn run(&self, args: &[&str]) -> Run {
        let config = self.docker_config.path().display().to_string();
        let vars = [
            SMOKE_USER[0],
            SMOKE_USER[1],
            ("MRE_REG_USER", self.tls.user),
            ("MRE_REG_PASSWORD", self.tls.password),
            ("DOCKER_CONFIG", config.as_str()),
        ];
        let r = xtask_env(&self.config, args, &vars);
        assert!(
            !r.all().contains(self.tls.password),
            "the registry password was printed: {r:?}"
        );
        r
    }

    /// `STACK_service`.
    /// `run`, started in the background (stdout and stderr piped).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(XTASK)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("GITHUB_ACTIONS")
            .env_remove("DOCKER_HOST")
            .env("MRE_REG_USER", self.tls.user)
            .env("MRE_REG_PASSWORD", self.tls.password)
            .env("DOCKER_CONFIG", self.docker_config.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting the xtask binary")
    }

    pub fn service(&self, svc: &str) -> String {
        format!("{}_{svc}", self.stack)
    }

    /// `docker ARGS` on the manager: stdout, trimmed; panics with stderr.
    pub fn docker(&self, args: &[&str]) -> String {
        let o = std::process::Command::new("docker")
            .env("DOCKER_HOST", &self.docker_host)
            .env_remove("DOCKER_CONTEXT")
            .args(args)
            .output()
            .expect("running docker");
        assert!(
            o.status.success(),
            "docker {args:?} on the manager failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Where a service's running tasks are: one host name per task.
    pub fn task_nodes(&self, svc: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .docker(&[
                "service",
                "ps",
                &self.service(svc),
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}} {{.CurrentState}}",
            ])
            .lines()
            .filter(|l| l.contains(" Running"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// The images the app's running tasks use.
    pub fn app_images(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .docker(&[
                "service",
                "ps",
                &format!("{}_mre-app", self.stack),
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Image}}",
            ])
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn tag(&self, v: &str) -> String {
        format!("{}-{v}", self.stack)
    }

    /// A build context: the first release's image with one line more.
    pub fn context(&self, name: &str, v1: &str, line: &str) -> String {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            format!("FROM {}/mre-demo-app:{v1}\n{line}\n", self.registry),
        )
        .unwrap();
        dir.display().to_string()
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        // The stack goes from the (shared) cluster, its images from here;
        // what the nodes pulled goes with their engines.
        let _ = std::process::Command::new("docker")
            .env("DOCKER_HOST", &self.docker_host)
            .args(["stack", "rm", &self.stack])
            .output();
        remove_release_images(&self.registry, &self.stack);
    }
}

/// `docker save IMAGES | docker load` into the engine at `docker_host`.
fn load_image(images: &[&str], docker_host: &str) {
    let mut save = std::process::Command::new("docker")
        .arg("save")
        .args(images)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running docker save");
    let load = std::process::Command::new("docker")
        .env("DOCKER_HOST", docker_host)
        .env_remove("DOCKER_CONTEXT")
        .args(["load", "--quiet"])
        .stdin(save.stdout.take().expect("docker save's stdout"))
        .output()
        .expect("running docker load");
    let saved = save.wait().expect("waiting for docker save");
    assert!(
        saved.success() && load.status.success(),
        "docker save {images:?} | docker load (on {docker_host}) failed: {}",
        String::from_utf8_lossy(&load.stderr)
    );
}
