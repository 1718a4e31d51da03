//! Preflight, smoke tests and monitoring against a real demo stack, deployed
//! once for all the tests here (`stack::Shared`), one test per check: the
//! checklist names a missing variable and a world-readable env file, the
//! smoke tests pass on the healthy stack and catch an open auth boundary and
//! a broken login (the demo's MRE_DEMO_AUTH_FAULT), the Prometheus textfile
//! passes `promtool check metrics`, and a low threshold fires an alert to a
//! local webhook and resolves.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::stack::{Shared, Stack};
use common::*;

/// The stack every test here leases; `TESTS` counts them (the last one out
/// removes the stack: see `Shared`).
const TESTS: usize = 6;
static STACK: Shared = Shared::new(TESTS, verify_stack);

/// The webhook the stack's monitor posts to: its port is in the config.
static HOOK: LazyLock<Receiver> = LazyLock::new(Receiver::start);

/// The smoke user of the healthy stack.
const CREDS: [(&str, &str); 2] = [
    ("MRE_SMOKE_EMAIL", "smoke@example.com"),
    ("MRE_SMOKE_PASSWORD", "smoke-password-7431"),
];

fn verify_stack() -> Stack {
    Stack::new(
        "verify",
        "",
        &format!(
            r#"
[environments.e2e.preflight]
required_env = {{ mre-app = ["MRE_TEST_NEEDED"] }}
[environments.e2e.smoke]
endpoints = [{{ path = "/api/v1/events", status = 200 }}, {{ path = "/api/auth/session", status = 200 }}]
[environments.e2e.monitor]
interval = "1s"
probes = 3
webhook = "http://127.0.0.1:{}/alerts"
[environments.e2e.monitor.alerts]
# Low, not zero: a stopped service (every probe failing) crosses it at
# once, while a stray 5xx the demo logs on a loaded machine does not.
high_error_rate = {{ threshold = 0.25, for = "0s" }}
health_check_failures = {{ enabled = false }}
"#,
            HOOK.port
        ),
    )
}

/// A tiny webhook receiver on a loopback port: every POST body, parsed.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { port, got }
    }

    /// Wait for a notification of `status` naming `alertname` and `instance`.
    fn wait_for(
        &self,
        status: &str,
        alertname: &str,
        instance: &str,
        secs: u64,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let found = self.got.lock().unwrap().iter().find_map(|n| {
                n["alerts"].as_array()?.iter().find_map(|a| {
                    (a["status"] == status
                        && a["labels"]["alertname"] == alertname
                        && a["labels"]["instance"] == instance)
                        .then(|| n.clone())
                })
            });
            if let Some(n) = found {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {alertname} for {instance} within {secs} s; received: {:#?}",
                self.got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn require_promtool() {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "this test needs `promtool` to check the Prometheus textfile: `apt-get install prometheus` (Debian); .ci/run does this"
        ),
    }
}

fn check_by_name<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// Preflight: the missing variable and the world-readable env file are
/// named; resource limits, health checks and the network pass. Then fixed,
/// the two items pass. One test: the second run is the fix of what the
/// first found. A writer: the env file is 0644 meanwhile (put back to 0600
/// on drop, panic or not).
#[test]
fn preflight_names_a_missing_variable_and_a_readable_env_file() {
    let s = STACK.write();
    let password = s.password();
    let env_file = s.dir.path().join(".env.e2e");
    use std::os::unix::fs::PermissionsExt;
    let _put_back = OnDrop(|| {
        let _ = std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600));
    });
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = s.run(&["--json", "preflight", "e2e"]);
    assert_eq!(p.code, 1, "{p:?}");
    let v: serde_json::Value = serde_json::from_str(&p.stdout).unwrap();
    assert_eq!(v["checks"].as_array().unwrap().len(), 17, "{v:#}");
    let vars = check_by_name(&v, "Environment variables reviewed");
    assert_eq!(vars["state"], "FAIL", "{vars:#}");
    assert!(
        vars["got"]
            .as_str()
            .unwrap()
            .contains("mre-app: MRE_TEST_NEEDED missing"),
        "{vars:#}"
    );
    let secrets = check_by_name(&v, "Secrets updated and secure");
    assert_eq!(secrets["state"], "FAIL", "{secrets:#}");
    assert!(
        secrets["got"]
            .as_str()
            .unwrap()
            .contains("mode 0644, readable by others"),
        "{secrets:#}"
    );
    for ok in [
        "Resource limits configured",
        "Container health checks configured",
        "Network configuration verified",
        "Database connection strings verified",
        "Docker images built and tested",
        "Database migrations reviewed",
    ] {
        assert_eq!(check_by_name(&v, ok)["state"], "PASS", "{ok}: {v:#}");
    }
    assert_eq!(
        check_by_name(&v, "Code review completed and approved")["state"],
        "MANUAL"
    );
    assert!(!p.all().contains(&password), "the password leaked: {p:?}");
    // Fixed: the two items pass (the human report, with an attested review).
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = xtask_env(
        &s.config,
        &[
            "preflight",
            "e2e",
            "--attest",
            "review=https://example.com/pull/1",
        ],
        &[("MRE_TEST_NEEDED", "a-real-value")],
    );
    assert_eq!(p.code, 0, "{p:?}");
    assert!(
        p.stdout.contains("Code Quality Checks") && p.stdout.contains("attested"),
        "{p:?}"
    );
}

/// Smoke: the healthy stack passes; the password is never printed. One
/// test: the first run registers the smoke user, the second finds it.
#[test]
fn smoke_passes_on_the_healthy_stack() {
    let s = STACK.read();
    let ok = xtask_env(&s.config, &["smoke", "e2e"], &CREDS);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("registered, then logged in"), "{ok:?}");
    assert!(
        !ok.all().contains("smoke-password-7431"),
        "the smoke password leaked: {ok:?}"
    );
    let again = xtask_env(&s.config, &["--json", "smoke", "e2e"], &CREDS);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("\"logged in as smoke@example.com"),
        "{again:?}"
    );
}

/// The app with a fault, on the host against the stack's database, and a
/// smoke user of its own: the open app registers its user (its login works),
/// which must not be the healthy test's user, whose first run expects to
/// register it.
fn faulty_app(fault: &str, s: &Stack) -> (Child, String) {
    let db = format!(
        "postgres://pacetracer:{}@127.0.0.1:{}/pacetracer",
        s.password(),
        s.postgres
    );
    let (app, port) = start_demo(
        "app",
        &[("DATABASE_URL", &db), ("MRE_DEMO_AUTH_FAULT", fault)],
    );
    (app, format!("http://127.0.0.1:{port}"))
}

const FAULT_CREDS: [(&str, &str); 2] = [
    ("MRE_SMOKE_EMAIL", "smoke-faults@example.com"),
    ("MRE_SMOKE_PASSWORD", "smoke-password-7431"),
];

#[test]
fn smoke_catches_an_open_auth_boundary() {
    let s = STACK.read();
    let (_open, url) = faulty_app("open", &s);
    let open = xtask_env(&s.config, &["smoke", "e2e", "--url", &url], &FAULT_CREDS);
    assert_eq!(open.code, 1, "{open:?}");
    assert!(
        open.stdout
            .contains("/api/v1/events answered 200 without a session"),
        "{open:?}"
    );
}

#[test]
fn smoke_catches_a_broken_login() {
    let s = STACK.read();
    let (_broken, url) = faulty_app("login", &s);
    let broken = xtask_env(
        &s.config,
        &["--json", "smoke", "e2e", "--url", &url],
        &FAULT_CREDS,
    );
    assert_eq!(broken.code, 1, "{broken:?}");
    let v: serde_json::Value = serde_json::from_str(&broken.stdout).unwrap();
    let login = check_by_name(&v, "log in the smoke user");
    assert_eq!(login["state"], "FAIL", "{login:#}");
    assert!(
        login["got"].as_str().unwrap().contains("status 500"),
        "{login:#}"
    );
    assert!(!broken.all().contains("smoke-password-7431"), "{broken:?}");
}

/// Monitor, one shot: healthy, and the textfile passes promtool.
#[test]
fn monitor_writes_a_textfile_promtool_accepts() {
    let s = STACK.read();
    require_promtool();
    let prom = s.dir.path().join("mre.prom");
    let m = s.run(&["monitor", "e2e", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(m.code, 0, "{m:?}");
    assert!(m.stdout.contains("p95"), "{m:?}");
    let text = std::fs::read_to_string(&prom).unwrap();
    for metric in [
        "mre_http_probe_duration_seconds{",
        "mre_log_requests_total{",
        "mre_container_memory_usage_bytes{",
        "mre_database_connections{",
        "mre_disk_free_bytes{",
    ] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }
    let checked = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom).unwrap())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// Watch: the ingestion service goes down, its error rate crosses the (low)
/// threshold, the webhook gets a firing alert; it comes back, the alert
/// resolves. One test: the resolution follows the firing. A writer: the
/// service is down meanwhile (started again on drop, panic or not, and the
/// stack waited for until healthy, unless every other test has finished).
#[test]
fn monitor_watch_fires_an_alert_and_resolves_it() {
    let s = STACK.write();
    let hook = &*HOOK;
    let first_round = s.dir.path().join("watch.prom");
    let mut watch = Child(
        Command::new(XTASK)
            .args([
                "--config",
                s.config.to_str().unwrap(),
                "monitor",
                "e2e",
                "--watch",
                "120s",
                "--prometheus",
                first_round.to_str().unwrap(),
            ])
            .env_remove("GITHUB_ACTIONS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ingestion = s.container("liverc-ingestion-service");
    // Its first round saw the service up: its textfile is written.
    let start = std::time::Instant::now();
    while !first_round.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "monitor --watch wrote no first round"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    docker(&["stop", "-t", "1", &ingestion]);
    let _restart = OnDrop(|| {
        if !s.others_done() {
            s.restart_quietly(&ingestion)
        }
    });
    let firing = hook.wait_for(
        "firing",
        "HighErrorRate",
        "mre-liverc-ingestion-service",
        45,
    );
    assert_eq!(firing["version"], "4", "{firing:#}");
    assert_eq!(firing["status"], "firing", "{firing:#}");
    let alert = firing["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["instance"] == "mre-liverc-ingestion-service")
        .unwrap();
    assert_eq!(alert["labels"]["env"], "e2e");
    assert!(
        alert["startsAt"].as_str().unwrap().ends_with('Z'),
        "{alert:#}"
    );
    assert!(alert["annotations"]["description"].is_string(), "{alert:#}");
    docker(&["start", &ingestion]);
    let resolved = hook.wait_for(
        "resolved",
        "HighErrorRate",
        "mre-liverc-ingestion-service",
        60,
    );
    let alert = resolved["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["instance"] == "mre-liverc-ingestion-service")
        .unwrap();
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z", "{alert:#}");
    let _ = watch.0.kill();
    let _ = watch.0.wait();
}
