//! `cargo xtask health`: each failure gives exit 1 and a message that names
//! the check, what was expected and what came back. The endpoints are the
//! real demo binary (with its fault modes), real containers and a real
//! Docker engine.

mod common;

use common::*;

fn ops_http(dir: &TempDir, url: &str, timeout: f64) -> std::path::PathBuf {
    dir.write(
        "ops.toml",
        &format!(
            r#"
[environments.t]
[environments.t.compose]
files = ["compose.yml"]
project = "healthtest"
[environments.t.services.mre-app]
health = {{ url = "{url}", expect = "runbook-json", timeout_secs = {timeout} }}
"#
        ),
    )
}

fn health_of_app(fault: &str) -> Run {
    let (_app, port) = start_demo("app", &[("MRE_DEMO_HEALTH_FAULT", fault)]);
    let dir = TempDir::new("health");
    let p = ops_http(&dir, &format!("http://127.0.0.1:{port}/api/health"), 1.0);
    xtask(&p, &["health", "t"])
}

#[test]
fn healthy_app_passes() {
    let r = health_of_app("none");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("1/1 checks pass"), "{r:?}");
}

#[test]
fn app_down_fails_with_connection_refused() {
    let dir = TempDir::new("health");
    let p = ops_http(
        &dir,
        &format!("http://127.0.0.1:{}/api/health", free_port()),
        1.0,
    );
    let r = xtask(&p, &["health", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("mre-app /api/health"), "{r:?}");
    assert!(r.stdout.contains("connection refused"), "{r:?}");
    assert!(r.stdout.contains("next:"), "{r:?}");
}

#[test]
fn status_500_fails() {
    let r = health_of_app("500");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("expected: status 200"), "{r:?}");
    assert!(r.stdout.contains("got:      status 500"), "{r:?}");
}

#[test]
fn malformed_json_fails() {
    let r = health_of_app("malformed");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("malformed JSON"), "{r:?}");
}

#[test]
fn wrong_status_value_fails() {
    let r = health_of_app("wrong-status");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains(r#""data.status": "degraded""#), "{r:?}");
}

#[test]
fn bad_timestamp_fails() {
    let r = health_of_app("bad-timestamp");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("RFC 3339"), "{r:?}");
}

#[test]
fn timeout_fails() {
    let r = health_of_app("slow");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("no answer from"), "{r:?}");
    assert!(r.stdout.contains("within 1 s"), "{r:?}");
}

#[test]
fn json_report_lists_every_check() {
    let (_app, port) = start_demo("app", &[]);
    let dir = TempDir::new("health");
    let p = ops_http(&dir, &format!("http://127.0.0.1:{port}/api/health"), 2.0);
    let r = xtask(&p, &["--json", "health", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("one JSON document on stdout");
    assert_eq!(v["ok"], true);
    let check = &v["checks"][0];
    assert_eq!(check["name"], "mre-app /api/health");
    assert_eq!(check["ok"], true);
    assert!(
        check["millis"].is_u64() && check["detail"].is_string(),
        "{v}"
    );
}

#[test]
fn wait_polls_until_the_service_answers() {
    let port = free_port();
    let dir = TempDir::new("health");
    let p = ops_http(&dir, &format!("http://127.0.0.1:{port}/api/health"), 1.0);
    let starter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let child = std::process::Command::new(demo_binary())
            .arg("app")
            .env("PORT", port.to_string())
            .env("DATABASE_URL", "postgres://x:y@127.0.0.1:1/z")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Child(child)
    });
    let _ = demo_binary();
    let r = xtask(&p, &["health", "t", "--wait", "30"]);
    let _child = starter.join().unwrap();
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn database_down_fails() {
    let dir = TempDir::new("health");
    let p = dir.write(
        "ops.toml",
        &format!(
            r#"
[environments.t]
[environments.t.compose]
files = ["compose.yml"]
project = "healthtest"
[environments.t.database]
host = "127.0.0.1"
port = {}
user = "pacetracer"
name = "pacetracer"
password_env = "TEST_PG_PASSWORD"
"#,
            free_port()
        ),
    );
    let r = xtask_env(
        &p,
        &["health", "t"],
        &[("TEST_PG_PASSWORD", "pw-never-shown-1234")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("database"), "{r:?}");
    assert!(
        r.stdout
            .contains("cannot connect to PostgreSQL at pacetracer@127.0.0.1"),
        "{r:?}"
    );
    assert!(!r.all().contains("pw-never-shown-1234"), "{r:?}");
}

fn ops_container(dir: &TempDir, docker_host: Option<&str>, container: &str) -> std::path::PathBuf {
    let host = docker_host
        .map(|h| format!("docker_host = \"{h}\"\n"))
        .unwrap_or_default();
    dir.write(
        "ops.toml",
        &format!(
            r#"
[environments.t]
{host}
[environments.t.compose]
files = ["compose.yml"]
project = "healthtest"
[environments.t.services.mre-app]
container = "{container}"
"#
        ),
    )
}

#[test]
fn docker_unreachable_fails() {
    let dir = TempDir::new("health");
    let p = ops_container(&dir, Some("unix:///nonexistent/docker.sock"), "mre-app");
    let r = xtask(&p, &["health", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{r:?}"
    );
}

/// Removes a container on drop.
struct Container(String);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

#[test]
fn unhealthy_container_fails_with_its_healthcheck_output() {
    ensure_demo_images();
    let name = format!("mre-ops-test-unhealthy-{}", std::process::id());
    let _guard = Container(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "mre-ops-test=1",
        "--health-cmd",
        "echo broken-on-purpose; exit 1",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "mre-demo-base:bookworm-3",
        "sleep",
        "300",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]) != "unhealthy" {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never became unhealthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let dir = TempDir::new("health");
    let p = ops_container(&dir, None, &name);
    let r = xtask(&p, &["health", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains(&format!("container {name}")), "{r:?}");
    assert!(r.stdout.contains("health unhealthy"), "{r:?}");
    assert!(r.stdout.contains("broken-on-purpose"), "{r:?}");
}

#[test]
fn missing_container_fails() {
    require_docker();
    let dir = TempDir::new("health");
    let p = ops_container(&dir, None, "mre-ops-test-no-such-container");
    let r = xtask(&p, &["health", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("no such container"), "{r:?}");
}

#[test]
fn github_actions_get_annotations_a_summary_and_masks() {
    let dir = TempDir::new("health");
    let p = ops_http(
        &dir,
        &format!("http://127.0.0.1:{}/api/health", free_port()),
        1.0,
    );
    let summary = dir.path().join("summary.md");
    let summary_s = summary.display().to_string();
    let env = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_STEP_SUMMARY", summary_s.as_str()),
    ];
    let r = xtask_env(&p, &["health", "t"], &env);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("::error::health check mre-app /api/health failed"),
        "{r:?}"
    );
    let md = std::fs::read_to_string(&summary).expect("a step summary is written");
    assert!(md.contains("| mre-app /api/health | ❌ |"), "{md}");
    // Under --json, stdout stays one JSON document.
    let j = xtask_env(&p, &["--json", "health", "t"], &env);
    assert_eq!(j.code, 1, "{j:?}");
    let v: serde_json::Value =
        serde_json::from_str(&j.stdout).expect("stdout is JSON under GITHUB_ACTIONS too");
    assert_eq!(v["ok"], false);
    assert!(j.stderr.contains("::error::"), "{j:?}");
}
