//! A whole demo stack for one test, deployed by the test itself: its own
//! Compose project, container prefix and free ports (so it runs beside a
//! deployed demo), torn down with its volumes on drop.

use super::{docker, free_port, workspace_root, xtask, Run, TempDir, XTASK};
use std::path::PathBuf;

pub struct Stack {
    pub dir: TempDir,
    pub config: PathBuf,
    pub project: String,
    pub prefix: String,
    pub app: u16,
    pub ingestion: u16,
    pub postgres: u16,
}

impl Stack {
    /// An ops.toml with environment `e2e` for a new stack (not started:
    /// `run(&["deploy", "e2e"])` does that). `compose_env` adds entries to
    /// the Compose `env` table (`, KEY = "value"`); `extra` adds TOML.
    pub fn new(tag: &str, compose_env: &str, extra: &str) -> Stack {
        let dir = TempDir::new(tag);
        let project = format!("mre-{tag}-{}", std::process::id());
        let prefix = project.clone();
        let (app, ingestion, postgres) = (free_port(), free_port(), free_port());
        let compose = workspace_root().join("demo/docker-compose.yml");
        let config = dir.write(
            "ops.toml",
            &format!(
                r#"
[environments.e2e]
env_file = ".env.e2e"
generate_secrets = ["POSTGRES_PASSWORD"]
[environments.e2e.compose]
files = ["{compose}"]
project = "{project}"
pre_build = [["{xtask}", "-q", "demo", "prepare"]]
env = {{ MRE_CONTAINER_PREFIX = "{prefix}", MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}"{compose_env} }}
[environments.e2e.services.mre-app]
container = "{prefix}-app"
url = "http://localhost:{app}"
health = {{ url = "http://127.0.0.1:{app}/api/health", expect = "runbook-json" }}
[environments.e2e.services.mre-liverc-ingestion-service]
container = "{prefix}-liverc-ingestion-service"
health = {{ url = "http://127.0.0.1:{ingestion}/health" }}
[environments.e2e.database]
container = "{prefix}-postgres"
host = "127.0.0.1"
port = {postgres}
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
[environments.e2e.migrations]
dir = "{migrations}"
{extra}
"#,
                compose = compose.display(),
                migrations = workspace_root().join("prisma/migrations").display(),
                xtask = XTASK,
            ),
        );
        Stack {
            dir,
            config,
            project,
            prefix,
            app,
            ingestion,
            postgres,
        }
    }

    /// `xtask --config <this stack's ops.toml> ARGS`
    pub fn run(&self, args: &[&str]) -> Run {
        xtask(&self.config, args)
    }

    /// The generated database password (to check it never leaks).
    pub fn password(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(".env.e2e")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
            .unwrap_or("unset")
            .to_string()
    }

    /// The container of a service: `app`, `liverc-ingestion-service`, `postgres`.
    pub fn container(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// SQL through psql inside the database container; tuples only.
    pub fn psql(&self, sql: &str) -> String {
        let pg = self.container("postgres");
        docker(&[
            "exec",
            &pg,
            "psql",
            "-tA",
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
            "-c",
            sql,
        ])
    }

    /// The container's id and start time: unchanged means not recreated.
    pub fn started_at(&self, suffix: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{.Id}} {{.State.StartedAt}}",
            &self.container(suffix),
        ])
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        super::compose_down(
            &self.project,
            &workspace_root().join("demo/docker-compose.yml"),
            &[
                ("POSTGRES_PASSWORD", &self.password()),
                ("MRE_CONTAINER_PREFIX", &self.prefix),
            ],
        );
    }
}
