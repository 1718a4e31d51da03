//! No outage from an interrupted or concurrent operation: restore checks
//! what it can before it stops anything, takes the environment's lock, runs
//! its undos on SIGINT/SIGTERM, writes what it is about to change so that a
//! `kill -9` is recovered by the next command, and leftover databases are
//! listed and pruned. Real PostgreSQL 15 (and the demo stack for the
//! application's containers).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD};
use common::stack::Stack;
use common::*;

fn config(dir: &TempDir, pg: &Pg, extra: &str) -> PathBuf {
    let toml = OpsToml::new()
        .env("t", &[])
        .database("t", pg.port, "TEST_PG_PASSWORD")
        .section("t", "backups", &["method = \"host\"", extra])
        .build();
    dir.write("ops.toml", &toml)
}

fn run(config: &Path, args: &[&str]) -> Run {
    xtask_env(config, args, &[("TEST_PG_PASSWORD", PASSWORD)])
}

/// A database big enough that restoring it takes a few seconds.
fn seed(pg: &Pg, rows: u64) {
    pg.psql(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, body text); \
         INSERT INTO big SELECT g, md5(g::text) || repeat('x', 200) FROM generate_series(1, {rows}) g;"
    ));
}

fn databases(pg: &Pg) -> String {
    pg.psql_db(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
    )
}

fn backup(config: &Path) -> String {
    let r = run(config, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let path = PathBuf::from(r.stdout.trim().lines().last().unwrap());
    path.file_stem().unwrap().to_str().unwrap().to_string()
}

fn spawn(config: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut c = Command::new(XTASK);
    c.args(["--config", config.to_str().unwrap()]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("TEST_PG_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until a session restores into a `__mre_restore_` database.
fn wait_for_restore(pg: &Pg) {
    let start = Instant::now();
    loop {
        let n = pg.psql_db(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '%\\_\\_mre\\_restore\\_%'",
        );
        if n != "0" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the restore never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_during_a_restore_undo_it() {
    let pg = Pg::start();
    seed(&pg, 400_000);
    let dir = TempDir::new("intr-signal");
    let cfg = config(&dir, &pg, "");
    let name = backup(&cfg);
    let before = databases(&pg);
    for (sig, code) in [("-TERM", 143), ("-INT", 130)] {
        let child = spawn(&cfg, &["restore", "t", &name, "--yes", "--wait", "5"], &[]);
        wait_for_restore(&pg);
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig}: {stderr}");
        assert!(
            stderr.contains("interrupted by") && stderr.contains("was not changed"),
            "{stderr}"
        );
        assert!(stderr.contains("undone"), "{stderr}");
        assert_eq!(
            databases(&pg),
            before,
            "{sig}: the staged database is dropped"
        );
        assert!(
            !dir.path().join(".mre-ops/locks/t.intent.json").exists(),
            "nothing left to recover"
        );
        let l = run(&cfg, &["lock", "status", "t"]);
        assert!(l.stdout.contains("is not locked"), "{l:?}");
    }
    // Each interrupted restore left its incident record: nothing swapped.
    let rows = pg.psql_db(
        "postgres",
        "SELECT string_agg(result || ':' || (data_window ? 'note')::text, ',') FROM mre_ops_incidents",
    );
    assert_eq!(rows, "interrupted:true,interrupted:true");
}

#[test]
fn kill_9_during_a_restore_is_recovered_by_the_next_command() {
    let pg = Pg::start();
    seed(&pg, 400_000);
    let dir = TempDir::new("intr-kill");
    let cfg = config(&dir, &pg, "");
    let name = backup(&cfg);
    let before = databases(&pg);
    let mut child = spawn(&cfg, &["restore", "t", &name, "--yes"], &[]);
    wait_for_restore(&pg);
    child.kill().unwrap();
    child.wait().unwrap();
    // Every command says an operation is unfinished; `recover` undoes it.
    let st = run(&cfg, &["backup", "list", "t"]);
    assert!(st.stderr.contains("an unfinished `restore t`"), "{st:?}");
    assert!(
        st.stdout.contains("restore-staging"),
        "the staged database is listed: {st:?}"
    );
    let r = run(&cfg, &["recover", "t", "--reason", "restore killed"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(databases(&pg), before, "the staged database is dropped");
    // The recovery is an incident of its own (the killed restore wrote none).
    let rows = pg.psql_db(
        "postgres",
        "SELECT string_agg(operation || ':' || result || ':' || reason, ',') FROM mre_ops_incidents",
    );
    assert_eq!(rows, "recover:success:restore killed");
    // The next restore runs normally.
    let r = run(&cfg, &["restore", "t", &name, "--yes", "--wait", "5"]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn two_restores_at_once_one_is_refused_with_the_holder() {
    let pg = Pg::start();
    seed(&pg, 400_000);
    let dir = TempDir::new("intr-two");
    let cfg = config(&dir, &pg, "");
    let name = backup(&cfg);
    let first = spawn(&cfg, &["restore", "t", &name, "--yes", "--wait", "5"], &[]);
    wait_for_restore(&pg);
    let second = run(&cfg, &["restore", "t", &name, "--yes", "--wait", "5"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("is locked")
            && second.stderr.contains(&format!("pid {}", first.id())),
        "{second:?}"
    );
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With --lock-wait the second waits its turn and succeeds.
    let first = spawn(&cfg, &["restore", "t", &name, "--yes", "--wait", "5"], &[]);
    wait_for_restore(&pg);
    let second = run(
        &cfg,
        &[
            "--lock-wait",
            "120",
            "restore",
            "t",
            &name,
            "--yes",
            "--wait",
            "5",
        ],
    );
    assert_eq!(second.code, 0, "{second:?}");
    assert!(first.wait_with_output().unwrap().status.success());
}

#[test]
fn refusals_before_anything_changes_and_leftovers() {
    let pg = Pg::start();
    seed(&pg, 1000);
    let dir = TempDir::new("intr-refuse");
    let cfg = config(&dir, &pg, "keep_replaced = 1");
    let name = backup(&cfg);
    // Not a backup: a usage error.
    let r = run(&cfg, &["restore", "t", "/etc/passwd", "--yes"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("is not a backup made by mre-ops"),
        "{r:?}"
    );
    // Wrong credentials: refused before anything is stopped.
    let r = xtask_env(
        &cfg,
        &["restore", "t", &name, "--yes"],
        &[("TEST_PG_PASSWORD", "wrong")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("refusing to restore before stopping anything"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("Stop the application"), "{r:?}");
    // A backup whose last verification failed: refused unless forced.
    let mpath = dir.path().join(format!("backups/t/{name}.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["verifications"] = serde_json::json!([{"at": "2026-11-28T00:00:00Z", "ok": false, "seconds": 1.0, "detail": "row counts differ"}]);
    std::fs::write(&mpath, m.to_string()).unwrap();
    let r = run(&cfg, &["restore", "t", &name, "--yes"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("FAILED") && r.stderr.contains("--force-unverified"),
        "{r:?}"
    );
    // Leftovers: two restores keep two replaced databases; prune keeps one.
    for _ in 0..2 {
        let r = run(
            &cfg,
            &[
                "restore",
                "t",
                &name,
                "--yes",
                "--force-unverified",
                "--wait",
                "5",
            ],
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("replaced database(s) are kept now"),
            "{r:?}"
        );
    }
    pg.psql_db(
        "postgres",
        "CREATE DATABASE mre_ops_verify_999999999_deadbeef",
    );
    let l = run(&cfg, &["backup", "list", "t"]);
    assert_eq!(l.stdout.matches(" replaced ").count(), 2, "{l:?}");
    assert!(l.stdout.contains("verify-scratch"), "{l:?}");
    let p = run(&cfg, &["backup", "prune", "t"]);
    assert_eq!(p.code, 0, "{p:?}");
    assert!(
        p.stdout
            .contains("dropped database mre_ops_verify_999999999_deadbeef"),
        "{p:?}"
    );
    let l = run(&cfg, &["--json", "backup", "list", "t"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let left = v["leftover_databases"].as_array().unwrap();
    assert_eq!(left.len(), 1, "the newest replaced one is kept: {v}");
    assert_eq!(left[0]["kind"], "replaced");
}

#[test]
fn keep_min_zero_is_refused() {
    let pg = Pg::start();
    let dir = TempDir::new("intr-keep");
    let cfg = config(&dir, &pg, "keep_days = 0\nkeep_min = 0");
    let r = run(&cfg, &["config"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("environments.t.backups.keep_min")
            && r.stderr.contains("keep at least 1"),
        "{r:?}"
    );
}

/// The demo stack: a restore stopped by SIGTERM starts the application it
/// stopped again; a deploy with a password the database was not created
/// with is refused before any container is recreated.
#[test]
fn the_application_serves_after_an_interrupted_restore() {
    let s = Stack::new(
        "intr",
        "",
        "[environments.e2e.backups]\nmethod = \"container\"\n",
    );
    let r = s.run(&["deploy", "e2e"]);
    assert_eq!(r.code, 0, "{r:?}");
    s.psql("CREATE TABLE big (id bigint PRIMARY KEY, body text); INSERT INTO big SELECT g, repeat('y', 300) FROM generate_series(1, 300000) g;");
    let b = s.run(&["backup", "create", "e2e"]);
    assert_eq!(b.code, 0, "{b:?}");
    let name = PathBuf::from(b.stdout.trim().lines().last().unwrap());
    let name = name.file_stem().unwrap().to_str().unwrap().to_string();
    let app_before = s.started_at("app");
    let child = Command::new(XTASK)
        .args([
            "--config",
            s.config.to_str().unwrap(),
            "restore",
            "e2e",
            &name,
            "--yes",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while s
        .psql("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '%\\_\\_mre\\_restore\\_%'")
        == "0"
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the restore never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert_ne!(
        s.started_at("app"),
        app_before,
        "the app was stopped and started again"
    );
    let h = s.run(&["health", "e2e", "--wait", "60"]);
    assert_eq!(h.code, 0, "the application serves: {h:?}");
    // A password the database volume was not created with: refused up front.
    let env_file = s.dir.path().join(".env.e2e");
    let text = std::fs::read_to_string(&env_file).unwrap();
    let pw = s.password();
    std::fs::write(&env_file, text.replace(&pw, "not-the-password")).unwrap();
    let app_before = s.started_at("app");
    let r = s.run(&["deploy", "e2e"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("refuses the password"), "{r:?}");
    assert_eq!(s.started_at("app"), app_before, "nothing was recreated");
    std::fs::write(&env_file, text).unwrap();
}
