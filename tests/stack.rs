//! The whole demo stack, deployed for real under its own Compose project and
//! ports (so it runs beside a deployed demo), then checked the way an
//! operator would: deploy, health, a second deploy that changes nothing,
//! status, logs, the auth boundary, and a stopped container.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Stack {
    dir: TempDir,
    config: PathBuf,
    project: String,
    prefix: String,
    app: u16,
    ingestion: u16,
    postgres: u16,
}

impl Stack {
    fn new() -> Stack {
        let dir = TempDir::new("stack");
        let project = format!("mre-e2e-{}", std::process::id());
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
env = {{ MRE_CONTAINER_PREFIX = "{prefix}", MRE_APP_PORT = "{app}", MRE_INGESTION_PORT = "{ingestion}", MRE_POSTGRES_PORT = "{postgres}" }}
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

    fn password(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(".env.e2e")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
            .unwrap_or("unset")
            .to_string()
    }

    fn container_started_at(&self, suffix: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{.Id}} {{.State.StartedAt}}",
            &format!("{}-{suffix}", self.prefix),
        ])
    }

    /// How many migrations `deploy` recorded as finished (it applies them;
    /// the migrate command has its own tests).
    fn migrations_applied(&self) -> String {
        docker(&[
            "exec",
            &format!("{}-postgres", self.prefix),
            "psql",
            "-tA",
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
            "-c",
            "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL",
        ])
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let compose = workspace_root().join("demo/docker-compose.yml");
        let program = if Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            vec!["docker", "compose"]
        } else {
            vec!["docker-compose"]
        };
        let _ = Command::new(program[0])
            .args(&program[1..])
            .args([
                "-p",
                &self.project,
                "-f",
                &compose.display().to_string(),
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "2",
            ])
            .env("POSTGRES_PASSWORD", self.password())
            .env("MRE_CONTAINER_PREFIX", &self.prefix)
            .output();
    }
}

fn http(method: &str, url: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b),
        _ => {
            let mut req = agent.get(url);
            if let Some(t) = token {
                req = req.header("authorization", &format!("Bearer {t}"));
            }
            req.call()
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn deploy_development_end_to_end() {
    ensure_demo_images();
    let s = Stack::new();

    // Deploy: builds, starts, waits for health, shows the services.
    let r = xtask(&s.config, &["deploy", "e2e"]);
    assert_eq!(r.code, 0, "first deploy failed: {r:?}");
    assert!(
        r.stdout.contains(&format!("{}-app", s.prefix)) && r.stdout.contains("healthy"),
        "{r:?}"
    );
    assert!(r.stdout.contains("cargo xtask logs"), "{r:?}");
    assert!(
        !r.all().contains(&s.password()),
        "the generated password leaked: {r:?}"
    );
    let env_mode = std::fs::metadata(s.dir.path().join(".env.e2e")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(env_mode.permissions().mode() & 0o777, 0o600);
    // The runbook's network name.
    docker(&["network", "inspect", &format!("{}_mre-network", s.project)]);

    // Health passes, as JSON.
    let h = xtask(&s.config, &["--json", "health", "e2e"]);
    assert_eq!(h.code, 0, "{h:?}");
    let v: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["checks"].as_array().unwrap().len(),
        6,
        "2 HTTP + 3 containers + database: {v}"
    );

    // A second deploy with nothing changed recreates nothing.
    let before = s.container_started_at("app");
    let started = Instant::now();
    let r2 = xtask(&s.config, &["deploy", "e2e"]);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert_eq!(
        s.container_started_at("app"),
        before,
        "a no-op deploy restarted mre-app"
    );
    eprintln!("second deploy took {:?}", started.elapsed());

    // Status and logs through the Engine API.
    let st = xtask(&s.config, &["status", "e2e"]);
    assert_eq!(st.code, 0, "{st:?}");
    assert!(
        st.stdout
            .contains(&format!("{}-liverc-ingestion-service", s.prefix)),
        "{st:?}"
    );
    assert!(
        st.stdout.contains(&format!("0.0.0.0:{}->3001/tcp", s.app)),
        "{st:?}"
    );
    let lg = xtask(
        &s.config,
        &["logs", "mre-app", "--tail", "5", "--env", "e2e"],
    );
    assert_eq!(lg.code, 0, "{lg:?}");
    assert!(!lg.stdout.is_empty(), "{lg:?}");
    let unknown = xtask(&s.config, &["logs", "nope", "--env", "e2e"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("mre-app"), "{unknown:?}");

    // The auth boundary: public endpoints answer, every other /api/* is 401.
    assert_eq!(
        s.migrations_applied(),
        "2",
        "deploy applies the demo's migrations"
    );
    let base = format!("http://127.0.0.1:{}", s.app);
    let (code, _) = http("GET", &format!("{base}/api/health"), None, None);
    assert_eq!(code, 200);
    for path in [
        "/api/v1/me",
        "/api/v1/events",
        "/api/v1/laps",
        "/api/v1/anything",
        "/api/admin",
    ] {
        let (code, body) = http("GET", &format!("{base}{path}"), None, None);
        assert_eq!(code, 401, "{path} must need a session: {body}");
    }
    let (code, _) = http("GET", &format!("{base}/api/auth/session"), None, None);
    assert_ne!(code, 401, "/api/auth/* is public");
    let creds = r#"{"email":"driver@example.com","password":"correct horse battery"}"#;
    let (code, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/register"),
        Some(creds),
        None,
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        Some(creds),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = http("GET", &format!("{base}/api/v1/me"), None, Some(&token));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("driver@example.com"));
    let (code, _) = http("GET", &format!("{base}/"), None, None);
    assert_eq!(code, 200);

    // The ingestion service writes laps.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = docker(&[
            "exec",
            &format!("{}-postgres", s.prefix),
            "psql",
            "-tA",
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
            "-c",
            "SELECT count(*) FROM laps",
        ]);
        if n.parse::<i64>().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no laps written after 20 s");
        std::thread::sleep(Duration::from_millis(500));
    }

    // A stopped container: health and status fail and name it.
    docker(&[
        "stop",
        "-t",
        "1",
        &format!("{}-liverc-ingestion-service", s.prefix),
    ]);
    let h = xtask(&s.config, &["health", "e2e"]);
    assert_eq!(h.code, 1, "{h:?}");
    assert!(
        h.stdout
            .contains(&format!("container {}-liverc-ingestion-service", s.prefix)),
        "{h:?}"
    );
    assert!(h.stdout.contains("state exited"), "{h:?}");
    let st = xtask(&s.config, &["status", "e2e"]);
    assert_eq!(st.code, 1, "{st:?}");
    let _ = (s.ingestion, s.postgres);
}
