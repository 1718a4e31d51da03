//! The whole demo stack, deployed for real under its own Compose project and
//! ports (so it runs beside a deployed demo), once for all the tests here
//! (`stack::Shared`), then checked the way an operator would, one test per
//! check: deploy, health, a second deploy that changes nothing, status and
//! logs, the auth boundary, the ingestion service's laps, a lost env file,
//! and a stopped container.

mod common;

use std::time::{Duration, Instant};

use common::stack::{Shared, Stack};
use common::*;

/// The stack every test here leases; `TESTS` counts them (the last one out
/// removes the stack: see `Shared`).
const TESTS: usize = 8;
static STACK: Shared = Shared::new(TESTS, || Stack::new("e2e", "", ""));

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

/// Deploy (done once, by the first test): builds, starts, waits for health,
/// shows the services.
#[test]
fn deploy_starts_the_stack_and_keeps_its_password_secret() {
    let s = STACK.read();
    let r = s.deploy();
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
}

/// Health passes, as JSON.
#[test]
fn health_passes_as_json() {
    let s = STACK.read();
    let h = s.run(&["--json", "health", "e2e"]);
    assert_eq!(h.code, 0, "{h:?}");
    let v: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["checks"].as_array().unwrap().len(),
        6,
        "2 HTTP + 3 containers + database: {v}"
    );
}

/// A second deploy with nothing changed recreates nothing. A writer: were it
/// to recreate, the other tests must not be looking.
#[test]
fn a_second_deploy_changes_nothing() {
    let s = STACK.write();
    let before = s.started_at("app");
    let started = Instant::now();
    let r2 = s.run(&["deploy", "e2e"]);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert_eq!(
        s.started_at("app"),
        before,
        "a no-op deploy restarted mre-app"
    );
    eprintln!("second deploy took {:?}", started.elapsed());
}

/// Status and logs through the Engine API.
#[test]
fn status_and_logs_name_the_services() {
    let s = STACK.read();
    let st = s.run(&["status", "e2e"]);
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
    let unknown = s.run(&["logs", "nope", "--env", "e2e"]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("mre-app"), "{unknown:?}");
}

/// The auth boundary: public endpoints answer, every other /api/* is 401.
/// One test: the login needs the user registered just before, and `/me`
/// the login's token.
#[test]
fn the_auth_boundary_holds_and_a_user_registers_and_logs_in() {
    let s = STACK.read();
    assert_eq!(
        s.psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"),
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
}

/// The ingestion service writes laps.
#[test]
fn the_ingestion_service_writes_laps() {
    let s = STACK.read();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = s.psql("SELECT count(*) FROM laps");
        if n.parse::<i64>().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no laps written after 20 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A lost env file: deploy refuses to generate a new password for a
/// database that keeps the old one, and changes nothing. A writer: the env
/// file is away meanwhile, and put back on drop, panic or not.
#[test]
fn a_lost_env_file_stops_deploy_from_making_a_new_password() {
    let s = STACK.write();
    let env_file = s.dir.path().join(".env.e2e");
    let kept = s.dir.path().join("env.kept");
    std::fs::rename(&env_file, &kept).unwrap();
    let _put_back = OnDrop(|| {
        let _ = std::fs::rename(&kept, &env_file);
    });
    let lost = s.run(&["deploy", "e2e"]);
    assert_eq!(lost.code, 2, "{lost:?}");
    assert!(
        lost.stderr
            .contains("already exists and keeps the password"),
        "{lost:?}"
    );
    assert!(!env_file.exists(), "nothing may be written: {lost:?}");
}

/// A stopped container: health and status fail and name it. A writer; the
/// container is started again on drop (panic or not) and the stack waited
/// for until healthy, as the other tests expect it, unless they have all
/// finished. Named to sort last: libtest starts tests in name order, so this
/// one usually finishes last and skips the restart (~2.5 s).
#[test]
fn when_a_container_stops_health_and_status_fail() {
    let s = STACK.write();
    let ingestion = format!("{}-liverc-ingestion-service", s.prefix);
    docker(&["stop", "-t", "1", &ingestion]);
    let _restart = OnDrop(|| {
        if !s.others_done() {
            s.restart_quietly(&ingestion)
        }
    });
    let h = s.run(&["health", "e2e"]);
    assert_eq!(h.code, 1, "{h:?}");
    assert!(
        h.stdout
            .contains(&format!("container {}-liverc-ingestion-service", s.prefix)),
        "{h:?}"
    );
    assert!(h.stdout.contains("state exited"), "{h:?}");
    let st = s.run(&["status", "e2e"]);
    assert_eq!(st.code, 1, "{st:?}");
    let _ = (s.ingestion, s.postgres);
}
