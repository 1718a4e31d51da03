//! One lock per environment: a second operation is refused with the
//! holder's details, SIGTERM and SIGINT release it (exit 143/130) and run
//! the undos, `kill -9` leaves a stale record that the next command reports,
//! and an interrupted operation's record is recovered by `recover`.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{xtask, TempDir, XTASK};

/// An environment whose deploy spends a few seconds in a pre-build step
/// (no database, no engine needed until `compose build`).
fn slow_env(dir: &TempDir) -> std::path::PathBuf {
    dir.write("compose.yml", "version: \"3.8\"\nservices: {}\n");
    dir.write(
        "ops.toml",
        "[environments.t]\n[environments.t.compose]\nfiles = [\"compose.yml\"]\nproject = \"mre-lock-test\"\n\
         pre_build = [[\"sleep\", \"3\"]]\n",
    )
}

fn start_deploy(config: &std::path::Path) -> std::process::Child {
    let c = Command::new(XTASK)
        .args(["--config", config.to_str().unwrap(), "deploy", "t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask deploy");
    // Until the lock file names it.
    let lock = config.parent().unwrap().join(".mre-ops/locks/t.lock");
    let start = Instant::now();
    while std::fs::read_to_string(&lock)
        .map(|t| t.is_empty())
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

/// Until `child` has a child process of its own (a step's command runs).
fn wait_for_child_process(child: &std::process::Child) {
    let start = Instant::now();
    while !Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .expect("pgrep (procps)")
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the deploy never started its pre-build step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_second_deploy_is_refused_with_the_holders_details() {
    let dir = TempDir::new("lock-two");
    let config = slow_env(&dir);
    let first = start_deploy(&config);
    let second = xtask(&config, &["deploy", "t"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(second.stderr.contains("`t` is locked"), "{second:?}");
    assert!(
        second.stderr.contains(&format!("(pid {})", first.id()))
            && second.stderr.contains("`deploy t`"),
        "the holder is named: {second:?}"
    );
    let status = xtask(&config, &["lock", "status", "t"]);
    assert!(
        status
            .stdout
            .contains("locked on this machine by `deploy t`"),
        "{status:?}"
    );
    let out = first.wait_with_output().unwrap();
    // The first one went on (to `compose build`, which has nothing to do or fails
    // without an engine); either way the lock is free afterwards.
    let _ = out;
    let status = xtask(&config, &["lock", "status", "t"]);
    assert!(status.stdout.contains("is not locked"), "{status:?}");
}

#[test]
fn lock_wait_waits_for_the_holder() {
    let dir = TempDir::new("lock-wait");
    let config = slow_env(&dir);
    let first = start_deploy(&config);
    let second = xtask(&config, &["--lock-wait", "60", "lock", "status", "t"]);
    assert_eq!(second.code, 0, "{second:?}");
    // `recover` takes the lock: with --lock-wait it waits, then finds nothing to do.
    let r = xtask(&config, &["--lock-wait", "60", "recover", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Nothing to recover"), "{r:?}");
    let _ = first.wait_with_output().unwrap();
}

#[test]
fn sigterm_and_sigint_release_the_lock_with_their_exit_codes() {
    for (sig, code) in [("-TERM", 143), ("-INT", 130)] {
        let dir = TempDir::new("lock-signal");
        let config = slow_env(&dir);
        let child = start_deploy(&config);
        // Inside the plan: its pre-build step (`sleep 3`) is running.
        wait_for_child_process(&child);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig}: {stderr}");
        assert!(stderr.contains("interrupted by"), "{stderr}");
        let status = xtask(&config, &["lock", "status", "t"]);
        assert!(status.stdout.contains("is not locked"), "{sig}: {status:?}");
        let again = xtask(&config, &["deploy", "t", "--dry-run"]);
        assert_eq!(again.code, 0, "{again:?}");
    }
}

#[test]
fn kill_9_leaves_a_stale_lock_that_is_reported_and_taken_over() {
    let dir = TempDir::new("lock-kill");
    let config = slow_env(&dir);
    let mut child = start_deploy(&config);
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let status = xtask(&config, &["lock", "status", "t"]);
    assert!(status.stdout.contains("stale lock record"), "{status:?}");
    assert!(status.stdout.contains(&format!("pid {pid}")), "{status:?}");
    // The next command takes the lock over and says whose it was.
    let r = xtask(&config, &["recover", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("ended without releasing it"), "{r:?}");
    let status = xtask(&config, &["lock", "status", "t"]);
    assert!(status.stdout.contains("is not locked"), "{status:?}");
}

#[test]
fn recover_starts_what_a_killed_operation_stopped() {
    common::require_docker();
    common::ensure_demo_images();
    let dir = TempDir::new("lock-recover");
    let name = format!("mre-recover-test-{}", std::process::id());
    common::docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "mre-demo-base:bookworm-3",
        "sleep",
        "600",
    ]);
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _rm = Rm(name.clone());
    common::docker(&["stop", "-t", "0", &name]);
    dir.write("compose.yml", "version: \"3.8\"\nservices: {}\n");
    let config = dir.write(
        "ops.toml",
        "[environments.t]\n[environments.t.compose]\nfiles = [\"compose.yml\"]\nproject = \"mre-lock-test\"\n",
    );
    // What a restore killed with -9 after stopping the container leaves.
    std::fs::create_dir_all(dir.path().join(".mre-ops/locks")).unwrap();
    dir.write(
        ".mre-ops/locks/t.intent.json",
        &format!(
            "{{\"operation\":\"restore t\",\"pid\":1,\"since\":\"2026-11-28T00:00:00Z\",\"stopped\":[\"{name}\"],\"scratch_databases\":[]}}"
        ),
    );
    let st = xtask(&config, &["status", "t"]);
    assert!(
        st.stderr.contains("an unfinished `restore t`"),
        "every command says so: {st:?}"
    );
    let dry = xtask(&config, &["recover", "t", "--dry-run"]);
    assert!(dry.stdout.contains(&format!("Start {name}")), "{dry:?}");
    let r = xtask(&config, &["recover", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        common::docker(&["inspect", "-f", "{{.State.Running}}", &name]).trim(),
        "true"
    );
    assert!(!dir.path().join(".mre-ops/locks/t.intent.json").exists());
    let again = xtask(&config, &["recover", "t"]);
    assert!(again.stdout.contains("Nothing to recover"), "{again:?}");
}

#[test]
fn deploy_dry_run_needs_no_docker_engine() {
    let dir = TempDir::new("lock-dry");
    let config = slow_env(&dir);
    let r = common::xtask_env(
        &config,
        &["deploy", "t", "--dry-run"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Dry run: deploy t"), "{r:?}");
}

#[test]
fn down_is_compose_down_under_the_lock() {
    let dir = TempDir::new("lock-down");
    let config = slow_env(&dir);
    let dry = xtask(&config, &["down", "t", "--dry-run", "--volumes"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("down --remove-orphans --volumes"),
        "{dry:?}"
    );
    let first = start_deploy(&config);
    let r = xtask(&config, &["down", "t"]);
    assert_eq!(r.code, 1, "refused while a deploy holds the lock: {r:?}");
    assert!(r.stderr.contains("is locked"), "{r:?}");
    let _ = first.wait_with_output().unwrap();
    let r = xtask(&config, &["down", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("`t` is down (volumes kept)"), "{r:?}");
}
