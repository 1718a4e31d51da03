//! Staging and production releases against the real engine, a real
//! registry and the nginx proxy: push and pull by tag, zero-downtime
//! cutover under a client's load, automatic rollback when the new version
//! is not healthy or breaks the post-deploy checks, a failing migration
//! that leaves the old version serving, `rollback` to the previous release,
//! the lock, and no ingested lap lost.
mod common;

use std::time::Duration;

use common::load::Load;
use common::release::ReleaseStack;

fn live_colour(s: &ReleaseStack) -> String {
    let conf = common::docker(&[
        "exec",
        &s.container("proxy"),
        "cat",
        "/etc/nginx/mre/upstreams.conf",
    ]);
    conf.lines()
        .find_map(|l| l.strip_prefix("# live mre-app "))
        .unwrap_or("none")
        .trim()
        .to_string()
}

/// Laps are numbered without gaps by the one writer: a lost lap is a gap.
fn assert_no_lap_lost(s: &ReleaseStack) -> i64 {
    let r = s.psql("SELECT count(*), coalesce(max(seq) - min(seq) + 1, 0) FROM laps");
    let (n, span) = r.trim().split_once('|').unwrap();
    assert_eq!(n, span, "laps missing between the first and the last: {r}");
    n.parse().unwrap()
}

fn laps(s: &ReleaseStack) -> i64 {
    s.psql("SELECT count(*) FROM laps")
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Until the ingestion service has written more laps than `than` (it writes
/// through whichever release is live).
fn wait_for_laps(s: &ReleaseStack, than: i64) {
    let start = std::time::Instant::now();
    while laps(s) <= than {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no new laps after 60 s (still {than})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tag(s: &ReleaseStack, v: &str) -> String {
    format!("{}-{v}", s.project)
}

#[test]
fn release_cutover_rollback_and_no_lap_lost() {
    let s = ReleaseStack::new("rel");
    let v1 = tag(&s, "v1");
    let r = s.run(&["deploy", "rel", "--tag", &v1]);
    assert_eq!(r.code, 0, "{r:?}");
    // Pushed to the registry, pulled by tag.
    let tags = std::process::Command::new("curl")
        .args([
            "-s",
            &format!("http://{}/v2/mre-demo-app/tags/list", s.registry),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tags.stdout).contains(&v1),
        "{tags:?}"
    );
    assert_eq!(live_colour(&s), "blue");
    wait_for_laps(&s, 0);
    let laps_before = assert_no_lap_lost(&s);
    assert!(laps_before > 0);

    // A second version under load: no failed request, the colour flips,
    // the old one is kept (stopped).
    let v2 = tag(&s, "v2");
    let load = Load::start(s.app);
    let r = s.run(&["deploy", "rel", "--tag", &v2]);
    let (ok, failed, why) = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the cutover: {why:?}",
        ok + failed
    );
    assert!(ok > 20, "the load ran: {ok}");
    assert_eq!(live_colour(&s), "green");
    assert_eq!(
        common::docker(&[
            "inspect",
            "-f",
            "{{.State.Status}}",
            &s.container("app-blue")
        ])
        .trim(),
        "exited"
    );
    assert!(
        r.stdout.contains("replaced in"),
        "the stop-first window is measured: {r:?}"
    );

    // The journal lists both, the live one marked.
    let l = s.run(&["releases", "rel"]);
    assert!(l.stdout.contains("* #2") && l.stdout.contains(&v1), "{l:?}");

    // Rollback to the previous release: the kept colour, under load.
    let load = Load::start(s.app);
    let r = s.run(&["rollback", "rel"]);
    let (ok, failed, why) = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rollback: {why:?}",
        ok + failed
    );
    assert_eq!(live_colour(&s), "blue");
    let img = common::docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &s.container("app-blue"),
    ]);
    assert!(img.trim().ends_with(&v1), "{img}");

    // Maintenance mode on nginx (an included file and a reload): the page
    // with Retry-After, the health endpoint too; off again.
    let r = s.run(&["maintenance", "on", "rel", "--message", "Back soon"]);
    assert_eq!(r.code, 0, "{r:?}");
    let page = std::process::Command::new("curl")
        .args(["-si", &format!("http://127.0.0.1:{}/api/health", s.app)])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout).to_string();
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.contains("Retry-After: 30") && page.contains("Back soon"),
        "{page}"
    );
    let r = s.run(&["maintenance", "off", "rel"]);
    assert_eq!(r.code, 0, "{r:?}");
    let health = s.run(&["health", "rel", "--wait", "10"]);
    assert_eq!(health.code, 0, "{health:?}");
    wait_for_laps(&s, laps_before);
    let laps_after = assert_no_lap_lost(&s);
    assert!(
        laps_after > laps_before,
        "ingestion goes on: {laps_before} → {laps_after}"
    );

    // A version whose health fails is never switched to; the old one serves
    // throughout and the journal says it was rolled back.
    let fault = s.dir.path().join("faulty");
    std::fs::create_dir_all(&fault).unwrap();
    std::fs::write(
        fault.join("Dockerfile"),
        format!(
            "FROM {}/mre-demo-app:{v1}\nENV MRE_DEMO_HEALTH_FAULT=status500\n",
            s.registry
        ),
    )
    .unwrap();
    s.write_config(&fault.display().to_string(), None, "");
    let v3 = tag(&s, "v3");
    let load = Load::start(s.app);
    let r = s.run(&["deploy", "rel", "--tag", &v3]);
    let (ok, failed, why) = load.finish();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("did not become healthy"), "{r:?}");
    assert_eq!(
        failed,
        0,
        "the old release served throughout: {failed}/{} failed: {why:?}",
        ok + failed
    );
    assert_eq!(live_colour(&s), "blue");
    let l = s.run(&["--json", "releases", "rel"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let last = v["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["version"], v3.as_str());
    assert_eq!(last["result"], "rolled-back", "{last}");

    // A release that is healthy but lets anyone into the API (the smoke
    // tests' auth boundary) fails its smoke tests on its own address, before
    // the proxy sends it a single request: no request without a session is
    // ever answered by it.
    let open = s.dir.path().join("open-api");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::write(
        open.join("Dockerfile"),
        format!(
            "FROM {}/mre-demo-app:{v1}\nENV MRE_DEMO_AUTH_FAULT=open\n",
            s.registry
        ),
    )
    .unwrap();
    s.write_config(&open.display().to_string(), None, "");
    let v3b = tag(&s, "v3b");
    let load = Load::start(s.app);
    let anonymous = Load::expecting(s.app, "/api/v1/events", "401");
    let r = s.run(&["deploy", "rel", "--tag", &v3b]);
    let (ok, failed, why) = load.finish();
    let (refused, answered, how) = anonymous.finish();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("fails its smoke tests before") && r.stderr.contains("takes traffic"),
        "{r:?}"
    );
    assert_eq!(
        answered, 0,
        "requests without a session answered other than 401 ({refused} were 401): {how:?}"
    );
    assert!(
        r.stderr.contains("auth boundary") || r.stderr.contains("401"),
        "{r:?}"
    );
    assert_eq!(live_colour(&s), "blue", "never switched");
    assert_eq!(
        failed,
        0,
        "the old release served throughout: {failed}/{} failed: {why:?}",
        ok + failed
    );
    let l = s.run(&["--json", "releases", "rel"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let last = v["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "rolled-back", "{last}");

    // A release whose ingestion service cannot start fails after the app was
    // switched: the proxy is switched back and the old ingestion restored.
    let broken = s.dir.path().join("broken-ingestion");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Dockerfile"),
        format!(
            "FROM {}/mre-demo-app:{v1}\nENTRYPOINT [\"false\"]\n",
            s.registry
        ),
    )
    .unwrap();
    s.write_config(
        &common::workspace_root()
            .join("demo/docker/app")
            .display()
            .to_string(),
        Some(&broken.display().to_string()),
        "",
    );
    let v4 = tag(&s, "v4");
    let r = s.run(&["deploy", "rel", "--tag", &v4]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("undone"), "{r:?}");
    assert_eq!(live_colour(&s), "blue", "never switched");
    let health = s.run(&["health", "rel", "--wait", "30"]);
    assert_eq!(health.code, 0, "{health:?}");
    wait_for_laps(&s, laps(&s));
    assert_no_lap_lost(&s);

    // A failing migration: nothing switched, the schema unchanged.
    s.write_config(
        &common::workspace_root()
            .join("demo/docker/app")
            .display()
            .to_string(),
        None,
        "",
    );
    let m = s.dir.path().join("migrations/20991231000000_broken");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("migration.sql"),
        "CREATE TABLE \"will_vanish\" (id int);\nSELECT no_such_function();\n",
    )
    .unwrap();
    let v5 = tag(&s, "v5");
    let r = s.run(&["deploy", "rel", "--tag", &v5]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("Lint and apply pending migrations"),
        "{r:?}"
    );
    assert_eq!(live_colour(&s), "blue");
    assert_eq!(
        s.psql("SELECT to_regclass('will_vanish') IS NULL").trim(),
        "t"
    );
    let img = common::docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &s.container("app-blue"),
    ]);
    assert!(img.trim().ends_with(&v1), "still the old release: {img}");
}

#[test]
fn a_release_needs_the_lock_and_sigint_releases_it() {
    let s = ReleaseStack::new("rlk");
    let v1 = tag(&s, "v1");
    let r = s.run(&["deploy", "rel", "--tag", &v1]);
    assert_eq!(r.code, 0, "{r:?}");
    // A second release while one holds the lock is refused, naming it.
    let v2 = tag(&s, "v2");
    let first = s.spawn(&["deploy", "rel", "--tag", &v2]);
    let lock = s.dir.path().join(".mre-ops/locks/rel.lock");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&lock)
        .map(|t| t.is_empty())
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the release never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = s.run(&["deploy", "rel", "--tag", &tag(&s, "v3")]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("is locked")
            && second.stderr.contains(&format!("pid {}", first.id())),
        "{second:?}"
    );
    // Ctrl-C: the undos run, the lock is released, the old release serves.
    std::thread::sleep(Duration::from_millis(500));
    let st = std::process::Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(130) {
        assert!(stderr.contains("interrupted"), "{stderr}");
    } else {
        // It had finished before the signal arrived.
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    let status = s.run(&["lock", "status", "rel"]);
    assert!(status.stdout.contains("is not locked"), "{status:?}");
    let health = s.run(&["health", "rel", "--wait", "30"]);
    assert_eq!(health.code, 0, "{health:?}");
}

#[test]
fn releases_dry_run_and_refusals() {
    let s = ReleaseStack::new("rdry");
    let r = s.run(&["deploy", "rel", "--tag", "x y"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not a valid image tag"), "{r:?}");
    let r = s.run(&["deploy", "rel", "--dry-run", "--tag", "v1"]);
    assert_eq!(r.code, 0, "{r:?}");
    for step in [
        "Push ",
        "Take the environment's lock",
        "Lint and apply pending migrations",
        "Start mre-app-blue",
        "Switch the proxy",
        "stop-first",
        "Post-deploy checks",
    ] {
        assert!(r.stdout.contains(step), "the dry run shows `{step}`: {r:?}");
    }
    let r = s.run(&["rollback", "rel"]);
    assert_eq!(r.code, 2, "nothing to roll back to: {r:?}");
}

#[test]
fn production_needs_a_confirmation_and_backs_up_first() {
    let mut s = ReleaseStack::new("rprod");
    s.protected = true;
    s.config = s.write_config(
        &common::workspace_root()
            .join("demo/docker/app")
            .display()
            .to_string(),
        None,
        "",
    );
    let v1 = tag(&s, "v1");
    // No terminal, no --yes: refused before anything runs.
    let r = s.run(&["deploy", "rel", "--tag", &v1]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("Pass --yes"), "{r:?}");
    // The checklist runs first: on a first release nothing runs yet (no
    // database to connect to), so it refuses and nothing is started.
    let r = s.run(&["deploy", "rel", "--tag", &v1, "--yes"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("Database connection strings verified")
            && r.stderr.contains("--skip-preflight"),
        "{r:?}"
    );
    assert!(
        common::docker(&["ps", "-aq", "--filter", &format!("name={}", s.prefix)])
            .trim()
            .is_empty(),
        "a refused deploy starts nothing"
    );
    let r = s.run(&[
        "deploy",
        "rel",
        "--tag",
        &v1,
        "--yes",
        "--skip-preflight",
        "first release: nothing runs yet",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("skipped (") && r.stderr.contains("first release: nothing runs yet"),
        "{r:?}"
    );
    // The second runs it for real, and passes.
    let v2 = tag(&s, "v2");
    let r = s.run(&["deploy", "rel", "--tag", &v2, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Pre-deployment checklist for `rel`"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("Smoke tests before mre-app-")
            && r.stdout.contains("takes traffic: ")
            && r.stdout.contains("Smoke tests: "),
        "smoke tests on the new colour's own address, then through the proxy: {r:?}"
    );
    assert!(
        r.stdout.contains("verified"),
        "a verified backup first: {r:?}"
    );
    let l = s.run(&["--json", "releases", "rel"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let first = entries[0]["preflight"].as_str().unwrap_or("");
    assert!(
        first.starts_with("skipped: first release: nothing runs yet; failed: ")
            && first.contains("Database connection strings verified"),
        "the journal says who skipped the checklist, why, and what it found: {v}"
    );
    let last = entries.last().unwrap().clone();
    assert!(
        last["preflight"]
            .as_str()
            .unwrap_or("")
            .starts_with("passed"),
        "{last}"
    );
    let backup = last["backup"]
        .as_str()
        .expect("the journal names the pre-release backup");
    assert!(std::path::Path::new(backup).exists(), "{backup}");

    // A restore puts the proxy in maintenance mode while it runs: every
    // request is answered (the app, or the 503 page), none refused as when
    // the restore stopped the proxy; off afterwards.
    let load = Load::expecting(s.app, "/api/health", "200|503");
    let r = s.run(&["restore", "rel", "latest", "--yes"]);
    let (ok, failed, why) = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Maintenance mode on") && r.stdout.contains("Maintenance mode off"),
        "{r:?}"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests were not answered during the restore: {why:?}",
        ok + failed
    );
    let status = s.run(&["status", "rel"]);
    assert!(!status.stdout.contains("MAINTENANCE"), "{status:?}");

    // Ctrl-C during a restore: its undos turn maintenance mode off again.
    let mut child = s.spawn(&["restore", "rel", "latest", "--yes"]);
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let on = lines.any(|l| l.is_ok_and(|l| l.contains("Maintenance mode on")));
    assert!(on, "the restore turned maintenance mode on");
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{rest:?} {stderr}");
    assert!(
        rest.iter().any(|l| l.contains("Maintenance mode off")),
        "{rest:?} {stderr}"
    );
    let status = s.run(&["status", "rel"]);
    assert!(!status.stdout.contains("MAINTENANCE"), "{status:?}");
    let health = s.run(&["health", "rel", "--wait", "30"]);
    assert_eq!(health.code, 0, "{health:?}");

    // `rollback --with-db`: maintenance mode from before the restore until
    // the older code serves, off before the post-deploy checks.
    let load = Load::expecting(s.app, "/api/health", "200|503");
    let r = s.run(&["rollback", "rel", "--with-db", "pre-deploy", "--yes"]);
    let (ok, failed, why) = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Maintenance mode on") && r.stdout.contains("Maintenance mode off"),
        "{r:?}"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests were not answered during the rollback: {why:?}",
        ok + failed
    );
    let health = s.run(&["health", "rel"]);
    assert_eq!(health.code, 0, "{health:?}");
}

/// The live colour in HAProxy's file, and each server's state at runtime
/// (`show servers state mre-app`: name → (operational, admin flags)).
fn haproxy_servers(s: &ReleaseStack) -> std::collections::BTreeMap<String, (String, String)> {
    let out = common::docker(&[
        "exec",
        &s.container("proxy"),
        "sh",
        "-c",
        "echo 'show servers state mre-app' | socat stdio unix-connect:/run/haproxy/admin.sock",
    ]);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 6 && f[1] == "mre-app")
        .map(|f| (f[3].to_string(), (f[5].to_string(), f[6].to_string())))
        .collect()
}

fn live_colour_in(s: &ReleaseStack, path: &str) -> String {
    common::docker(&["exec", &s.container("proxy"), "cat", path])
        .lines()
        .find_map(|l| l.strip_prefix("# live mre-app "))
        .unwrap_or("none")
        .trim()
        .to_string()
}

/// Both loads at once: (kept-alive connections, a new connection per request).
fn both_loads(port: u16, status: u16) -> (Load, Load) {
    (
        Load::keep_alive(port, 16, "/api/health", status),
        Load::expecting(port, "/api/health", &status.to_string()),
    )
}

/// `(ok, failed)` of both loads, asserting none failed.
fn assert_none_failed(what: &str, loads: (Load, Load)) -> [(usize, usize); 2] {
    let (kept, new) = (loads.0.finish(), loads.1.finish());
    assert_eq!(
        kept.1,
        0,
        "{what}: {} of {} kept-alive requests failed: {:?}",
        kept.1,
        kept.0 + kept.1,
        &kept.2[..kept.2.len().min(5)]
    );
    assert_eq!(
        new.1,
        0,
        "{what}: {} of {} new-connection requests failed: {:?}",
        new.1,
        new.0 + new.1,
        &new.2[..new.2.len().min(5)]
    );
    assert!(
        kept.0 > 100 && new.0 > 10,
        "{what}: the loads ran: {kept:?} {new:?}"
    );
    [(kept.0, kept.1), (new.0, new.1)]
}

#[test]
fn haproxy_switches_and_rolls_back_without_dropping_a_request_and_has_a_maintenance_mode() {
    let s = ReleaseStack::with_proxy("rhap", "haproxy");
    let cfg = "/etc/haproxy/mre/live.cfg";
    let r = s.run(&["deploy", "rel", "--tag", &tag(&s, "v1")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(live_colour_in(&s, cfg), "blue");

    // A deploy and a rollback under kept-alive and new-connection load:
    // HAProxy's runtime API, no reload, nothing dropped.
    let loads = both_loads(s.app, 200);
    let r = s.run(&["deploy", "rel", "--tag", &tag(&s, "v2")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Switch the proxy") || r.stderr.contains("Switch the proxy"),
        "{r:?}"
    );
    let deploy = assert_none_failed("deploy", loads);
    assert_eq!(live_colour_in(&s, cfg), "green");
    let servers = haproxy_servers(&s);
    assert_eq!(servers["green"].0, "2", "green serves: {servers:?}");

    let loads = both_loads(s.app, 200);
    let r = s.run(&["rollback", "rel"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rollback = assert_none_failed("rollback", loads);
    assert_eq!(live_colour_in(&s, cfg), "blue");
    eprintln!("haproxy: deploy {deploy:?}, rollback {rollback:?} (kept-alive, new connection)");

    // `monitor` reads what HAProxy counted per colour: both served.
    let prom = s.dir.path().join("proxy.prom");
    let m = s.run(&["monitor", "rel", "--prometheus", prom.to_str().unwrap()]);
    assert!(m.code == 0 || m.code == 1, "{m:?}");
    assert!(m.stdout.contains("mre-app blue (proxy)"), "{m:?}");
    let text = std::fs::read_to_string(&prom).unwrap_or_default();
    for colour in ["blue", "green"] {
        let served: f64 = text
            .lines()
            .find(|l| {
                l.starts_with("mre_proxy_requests_total{")
                    && l.contains(&format!("colour=\"{colour}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no requests of {colour} in:\n{text}"));
        assert!(served > 0.0, "{colour} served nothing:\n{text}");
    }

    // A restarted proxy comes up on the live colour from its file.
    common::docker(&["restart", &s.container("proxy")]);
    let health = s.run(&["health", "rel", "--wait", "30"]);
    assert_eq!(health.code, 0, "{health:?}");
    let servers = haproxy_servers(&s);
    assert_eq!(
        servers["blue"].0, "2",
        "blue serves after a restart: {servers:?}"
    );
    assert_ne!(
        servers["green"].1, "0",
        "green stays out of service: {servers:?}"
    );

    // Maintenance mode: every request 503 with the page and Retry-After,
    // the health endpoint too, none a connection error; off afterwards.
    let r = s.run(&[
        "maintenance",
        "on",
        "rel",
        "--message",
        "Restoring <data> & back at 10:00",
        "--dry-run",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Turn maintenance mode on"), "{r:?}");
    let r = s.run(&[
        "maintenance",
        "on",
        "rel",
        "--message",
        "Restoring <data> & back at 10:00",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let loads = both_loads(s.app, 503);
    let page = std::process::Command::new("curl")
        .args(["-si", &format!("http://127.0.0.1:{}/api/health", s.app)])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout).to_string();
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.to_ascii_lowercase().contains("retry-after: 30"),
        "{page}"
    );
    assert!(
        page.contains("Restoring &lt;data&gt; &amp; back at 10:00"),
        "{page}"
    );
    let status = s.run(&["status", "rel"]);
    assert!(
        status.stdout.contains("MAINTENANCE MODE is on"),
        "{status:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_none_failed("maintenance", loads);
    let r = s.run(&["maintenance", "off", "rel"]);
    assert_eq!(r.code, 0, "{r:?}");
    let health = s.run(&["health", "rel"]);
    assert_eq!(health.code, 0, "{health:?}");
    let status = s.run(&["status", "rel"]);
    assert!(!status.stdout.contains("MAINTENANCE"), "{status:?}");

    // A canary with a bake period: a release failing every 5th request of
    // its index page (its health checks and smoke tests pass) takes half
    // of the requests, and the bake sends them all back to the old colour
    // on its own; the old colour was never stopped.
    let faulty = s.dir.path().join("fail-every-5");
    std::fs::create_dir_all(&faulty).unwrap();
    std::fs::write(
        faulty.join("Dockerfile"),
        format!(
            "FROM {}/mre-demo-app:{}\nENV MRE_DEMO_FAIL_EVERY=5\n",
            s.registry,
            tag(&s, "v1")
        ),
    )
    .unwrap();
    s.write_config(&faulty.display().to_string(), None, "");
    let traffic = Load::keep_alive(s.app, 4, "/", 200);
    let r = s.run(&[
        "deploy",
        "rel",
        "--tag",
        &tag(&s, "v3"),
        "--canary",
        "50%",
        "--bake",
        "60s",
    ]);
    let seen = traffic.finish();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("the bake found the new release worse"),
        "{r:?}"
    );
    assert!(r.stderr.contains("max_error_rate"), "{r:?}");
    assert_eq!(live_colour_in(&s, cfg), "blue", "switched back: {r:?}");
    assert!(seen.1 > 0, "the faulty colour took traffic: {seen:?}");
    let l = s.run(&["--json", "releases", "rel"]);
    assert!(l.stdout.contains("rolled-back"), "{l:?}");
    // A good release bakes and stays.
    let app = common::workspace_root().join("demo/docker/app");
    s.write_config(&app.display().to_string(), None, "");
    let traffic = Load::keep_alive(s.app, 4, "/", 200);
    let r = s.run(&["deploy", "rel", "--tag", &tag(&s, "v4"), "--bake", "3s"]);
    let seen = traffic.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Baked 3 s"), "{r:?}");
    assert_eq!(seen.1, 0, "{seen:?}");
    assert_eq!(live_colour_in(&s, cfg), "green");
    // A good canary is promoted to 100 %; with keep_previous_running the
    // colour it replaced keeps running (rollback is then a switch).
    s.write_config(
        &app.display().to_string(),
        None,
        "keep_previous_running = true",
    );
    let traffic = Load::keep_alive(s.app, 4, "/", 200);
    let r = s.run(&[
        "deploy",
        "rel",
        "--tag",
        &tag(&s, "v5"),
        "--canary",
        "25",
        "--bake",
        "3s",
    ]);
    let seen = traffic.finish();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Baked 3 s"), "{r:?}");
    assert_eq!(seen.1, 0, "{seen:?}");
    assert_eq!(live_colour_in(&s, cfg), "blue");
    let servers = haproxy_servers(&s);
    assert_eq!(servers["blue"].0, "2", "blue serves: {servers:?}");
    assert!(r.all().contains("Keep mre-app-green running"), "{r:?}");
    let green = common::docker(&[
        "inspect",
        "-f",
        "{{.State.Running}}",
        &s.container("app-green"),
    ]);
    assert_eq!(
        green.trim(),
        "true",
        "the replaced colour keeps running: {r:?}"
    );
}

/// docs/bench/proxy-switch.sh: nginx's reload against HAProxy's runtime
/// API in one run, each through a deploy, a rollback and a release switched
/// back by its undo (its ingestion service cannot start), under kept-alive
/// and new-connection load. Prints one line per proxy and operation.
#[test]
#[ignore = "a benchmark: docs/bench/proxy-switch.sh"]
fn bench_proxy_switch() {
    let mut rows = Vec::new();
    for proxy in ["nginx", "haproxy"] {
        let s = ReleaseStack::with_proxy(&format!("bps{}", &proxy[..1]), proxy);
        let r = s.run(&["deploy", "rel", "--tag", &tag(&s, "v1")]);
        assert_eq!(r.code, 0, "{r:?}");
        let measure = |what: &str, args: &[&str], code: i32| {
            // 32: the demo app serves at most 64 connections at once (more
            // are answered 503 BUSY, which is not the switch's doing).
            let kept = Load::keep_alive(s.app, 32, "/api/health", 200);
            let new = Load::expecting(s.app, "/api/health", "200");
            std::thread::sleep(Duration::from_secs(1));
            let t0 = std::time::Instant::now();
            let r = s.run(args);
            let took = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(1));
            let (k, n) = (kept.finish(), new.finish());
            assert_eq!(r.code, code, "{r:?}");
            let row = format!(
                "{proxy:8} {what:24} kept-alive {:>7} failed {:>4} | new-connection {:>5} failed {:>4} | {took:.1} s | {:?} {:?}",
                k.0 + k.1,
                k.1,
                n.0 + n.1,
                n.1,
                &k.2[..k.2.len().min(2)],
                &n.2[..n.2.len().min(2)]
            );
            eprintln!("{row}");
            row
        };
        rows.push(measure(
            "deploy",
            &["deploy", "rel", "--tag", &tag(&s, "v2")],
            0,
        ));
        rows.push(measure("rollback", &["rollback", "rel"], 0));
        let broken = s.dir.path().join("broken-ingestion");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(
            broken.join("Dockerfile"),
            format!(
                "FROM {}/mre-demo-app:{}\nENTRYPOINT [\"false\"]\n",
                s.registry,
                tag(&s, "v1")
            ),
        )
        .unwrap();
        s.write_config(
            &common::workspace_root()
                .join("demo/docker/app")
                .display()
                .to_string(),
            Some(&broken.display().to_string()),
            "",
        );
        rows.push(measure(
            "switched back (undo)",
            &["deploy", "rel", "--tag", &tag(&s, "v3")],
            1,
        ));
    }
    println!("{}", rows.join("\n"));
}

/// docs/bench/rollback-switch.sh: how soon after `rollback` starts the
/// proxy sends the traffic to the previous release, with the previous
/// colour stopped (kept, today's default) and kept running
/// (`release.keep_previous_running`), behind HAProxy, under kept-alive
/// load, in one run. Prints one line per mode.
#[test]
#[ignore = "a benchmark: docs/bench/rollback-switch.sh"]
fn bench_rollback_to_traffic() {
    for (mode, extra) in [("stopped", ""), ("running", "keep_previous_running = true")] {
        let s = ReleaseStack::with_proxy(&format!("brb{}", &mode[..1]), "haproxy");
        let app = common::workspace_root().join("demo/docker/app");
        s.write_config(&app.display().to_string(), None, extra);
        for v in ["v1", "v2"] {
            let r = s.run(&["deploy", "rel", "--tag", &tag(&s, v)]);
            assert_eq!(r.code, 0, "{r:?}");
        }
        let kept = Load::keep_alive(s.app, 16, "/api/health", 200);
        std::thread::sleep(Duration::from_secs(1));
        let t0 = std::time::Instant::now();
        let mut child = std::process::Command::new(common::XTASK)
            .arg("--config")
            .arg(&s.config)
            .args(["rollback", "rel"])
            .env_remove("GITHUB_ACTIONS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Blue (v1) takes the traffic when HAProxy has it ready and green
        // draining.
        let switched = loop {
            let servers = haproxy_servers(&s);
            let admin = |c: &str| servers.get(c).map(|x| x.1.clone()).unwrap_or_default();
            if admin("blue") == "0" && admin("green") != "0" {
                break t0.elapsed();
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{servers:?}");
        };
        let status = child.wait().unwrap();
        let total = t0.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let (ok, failed, why) = kept.finish();
        assert!(status.success());
        eprintln!(
            "rollback previous-{mode:8} traffic on the previous release after {:.2} s, command {:.2} s | kept-alive {} failed {failed} {:?}",
            switched.as_secs_f64(),
            total.as_secs_f64(),
            ok + failed,
            &why[..why.len().min(2)]
        );
    }
}
