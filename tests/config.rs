//! ops.toml is strict: bad input is refused before anything runs, with
//! `FILE:LINE:COL`, the field's path and what is expected; secrets never
//! show.

mod common;

use common::*;

const GOOD: &str = r#"
[environments.development]
env_file = ".env.test"

[environments.development.compose]
files = ["compose.yml"]
project = "cfgtest"

[environments.development.services.mre-app]
container = "mre-app"
health = { url = "http://localhost:3001/api/health", expect = "runbook-json" }

[environments.development.database]
user = "pacetracer"
name = "pacetracer"
password_env = "POSTGRES_PASSWORD"
"#;

fn with(text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("config");
    dir.write("compose.yml", "services: {}\n");
    let p = dir.write("ops.toml", text);
    (dir, p)
}

#[test]
fn the_shipped_ops_toml_is_valid() {
    let r = xtask_env(
        &workspace_root().join("ops.toml"),
        &["config"],
        &[("POSTGRES_PASSWORD", "test-only-value")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    for env in ["development", "staging", "production"] {
        assert!(r.stdout.contains(&format!("[{env}]")), "{r:?}");
    }
}

#[test]
fn syntax_error_names_line_and_column() {
    let (_d, p) = with("[environments.development\nfiles = 1\n");
    let r = xtask(&p, &["health"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("ops.toml:1:"), "{r:?}");
    assert!(r.stdout.is_empty(), "nothing may run: {r:?}");
}

#[test]
fn unknown_key_names_field_path_and_line() {
    let text = GOOD.replace(
        "project = \"cfgtest\"",
        "project = \"cfgtest\"\nprojekt = \"typo\"",
    );
    let (_d, p) = with(&text);
    let r = xtask(&p, &["deploy", "development"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("ops.toml:8:1"), "{r:?}");
    assert!(
        r.stderr.contains("environments.development.compose"),
        "{r:?}"
    );
    assert!(r.stderr.contains("unknown field `projekt`"), "{r:?}");
}

#[test]
fn wrong_type_names_field_path_and_expectation() {
    let text = GOOD.replace(
        "user = \"pacetracer\"",
        "user = \"pacetracer\"\nport = \"5432\"",
    );
    let (_d, p) = with(&text);
    let r = xtask(&p, &["status"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("environments.development.database.port"),
        "{r:?}"
    );
    assert!(r.stderr.contains("ops.toml:15:8"), "{r:?}");
    assert!(
        r.stderr.contains("u16") || r.stderr.contains("integer"),
        "{r:?}"
    );
}

#[test]
fn missing_required_field_is_named() {
    let text = GOOD.replace("project = \"cfgtest\"\n", "");
    let (_d, p) = with(&text);
    let r = xtask(&p, &["config"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("missing field `project`"), "{r:?}");
    assert!(
        r.stderr.contains("environments.development.compose"),
        "{r:?}"
    );
}

#[test]
fn invalid_value_names_field_and_line() {
    let text = GOOD.replace(
        "http://localhost:3001/api/health",
        "localhost:3001/api/health",
    );
    let (_d, p) = with(&text);
    let r = xtask(&p, &["health"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("environments.development.services.mre-app.health.url"),
        "{r:?}"
    );
    assert!(r.stderr.contains("ops.toml:11:18"), "{r:?}");
}

#[test]
fn unknown_environment_lists_the_known_ones() {
    let (_d, p) = with(GOOD);
    let r = xtask(&p, &["deploy", "prod", "--dry-run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("unknown environment `prod`"), "{r:?}");
    assert!(r.stderr.contains("development"), "{r:?}");
}

#[test]
fn missing_config_file_says_what_to_do() {
    let r = xtask(std::path::Path::new("/nonexistent/ops.toml"), &["status"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("/nonexistent/ops.toml") && r.stderr.contains("--config"),
        "{r:?}"
    );
}

#[test]
fn config_never_prints_secrets() {
    let (d, p) = with(GOOD);
    d.write(
        ".env.test",
        "POSTGRES_PASSWORD=s3cret-from-file-123\nAPI_TOKEN=tok-abcdef-987\n",
    );
    let r = xtask(&p, &["config", "development"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.all().contains("s3cret-from-file-123"), "{r:?}");
    assert!(!r.all().contains("tok-abcdef-987"), "{r:?}");
    assert!(
        r.stdout.contains("POSTGRES_PASSWORD: set (env file)"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("pacetracer@localhost:5432/pacetracer"),
        "{r:?}"
    );
    let j = xtask_env(
        &p,
        &["--json", "config", "development"],
        &[("POSTGRES_PASSWORD", "from-env-456789")],
    );
    assert_eq!(j.code, 0, "{j:?}");
    assert!(!j.all().contains("from-env-456789"), "{j:?}");
    let v: serde_json::Value =
        serde_json::from_str(&j.stdout).expect("--json prints one JSON document");
    assert_eq!(
        v["environments"][0]["secrets"]["POSTGRES_PASSWORD"],
        "set (process environment)"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let text = GOOD.replace(
        "env_file = \".env.test\"",
        "env_file = \".env.test\"\ngenerate_secrets = [\"POSTGRES_PASSWORD\"]",
    );
    let (d, p) = with(&text);
    let r = xtask(&p, &["deploy", "development", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Dry run: deploy development"), "{r:?}");
    assert!(r.stdout.contains("Create missing secrets"), "{r:?}");
    assert!(
        r.stdout.contains("-p cfgtest") && r.stdout.contains(" up -d"),
        "{r:?}"
    );
    assert!(
        !d.path().join(".env.test").exists(),
        "a dry run must not create the env file"
    );
}

#[test]
fn deploy_with_docker_unreachable_changes_nothing() {
    let text = GOOD.replace(
        "env_file = \".env.test\"",
        "env_file = \".env.test\"\ngenerate_secrets = [\"POSTGRES_PASSWORD\"]\ndocker_host = \"unix:///nonexistent/docker.sock\"",
    );
    let (d, p) = with(&text);
    let r = xtask(&p, &["deploy", "development"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{r:?}"
    );
    assert!(
        !d.path().join(".env.test").exists(),
        "nothing may be done: {r:?}"
    );
}

#[test]
fn deploy_with_a_missing_secret_stops_before_anything_runs() {
    let (_d, p) = with(GOOD);
    let r = xtask_env(&p, &["deploy", "development"], &[("POSTGRES_PASSWORD", "")]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("$POSTGRES_PASSWORD, which is not set"),
        "{r:?}"
    );
    assert!(r.stderr.contains(".env.test"), "{r:?}");
    assert!(
        !r.stdout.contains("==>") && !r.stderr.contains("==>"),
        "no step may run: {r:?}"
    );
    // A dry run shows the plan and says where a real run would stop.
    let d = xtask_env(
        &p,
        &["deploy", "development", "--dry-run"],
        &[("POSTGRES_PASSWORD", "")],
    );
    assert_eq!(d.code, 0, "{d:?}");
    assert!(
        d.stdout.contains("warning: a real run would stop here"),
        "{d:?}"
    );
}

#[test]
fn config_exits_1_when_an_environment_could_not_run() {
    let (_d, p) = with(&GOOD.replace("files = [\"compose.yml\"]", "files = [\"missing.yml\"]"));
    let r = xtask_env(&p, &["config", "development"], &[("POSTGRES_PASSWORD", "")]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("the database secret is not set ($POSTGRES_PASSWORD)"),
        "{r:?}"
    );
    assert!(r.stderr.contains("missing.yml does not exist"), "{r:?}");
    let j = xtask_env(
        &p,
        &["--json", "config", "development"],
        &[("POSTGRES_PASSWORD", "")],
    );
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("one JSON document");
    assert_eq!(v["ready"], false, "{v}");
}

#[test]
fn json_errors_are_json_too() {
    let (_d, p) = with(GOOD);
    let r = xtask(&p, &["--json", "deploy", "nope"]);
    assert_eq!(r.code, 2, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).expect("stdout is JSON even on error");
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], 2);
    assert!(
        v["error"].as_str().unwrap().contains("unknown environment"),
        "{v}"
    );
}

/// `driver = "swarm"` needs [swarm] and [release] and takes no [compose];
/// each mistake names the field and what to do, before anything runs.
#[test]
fn a_swarm_environment_is_checked_before_anything_runs() {
    let swarm = "[environments.sw]\ndriver = \"swarm\"\n";
    let (_d, p) = with(&format!("{GOOD}\n{swarm}"));
    let r = xtask(&p, &["deploy", "sw", "--dry-run"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("environments.sw.driver") && r.stderr.contains("[environments.sw.swarm]"),
        "{r:?}"
    );
    let (_d, p) = with(&format!(
        "{GOOD}\n{swarm}[environments.sw.swarm]\nstack = \"s\"\nfiles = [\"compose.yml\"]\n"
    ));
    let r = xtask(&p, &["status", "sw"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("needs [environments.sw.release]"),
        "{r:?}"
    );
    let (_d, p) = with(&format!(
        "{GOOD}\n[environments.development.swarm]\nstack = \"s\"\nfiles = [\"compose.yml\"]\n"
    ));
    let r = xtask(&p, &["config"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("driver = \"swarm\""), "{r:?}");
}

/// `cargo xtask test --dry-run` (the README's test command) changes nothing
/// and ends in `cargo test --workspace` with the arguments after `--`.
#[test]
fn the_test_command_dry_run_ends_in_cargo_test() {
    let r = xtask(
        &workspace_root().join("ops.toml"),
        &["test", "--dry-run", "--", "--test", "tidy"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(
        text.contains("cargo test --workspace --test tidy")
            || text.contains("test --workspace --test tidy"),
        "{text}"
    );
    assert!(text.contains("Nothing will be changed"), "{text}");
}

/// The Engine API on a network port is refused (it is root on that server
/// for anyone who reaches it), naming `ssh`; a malformed `ssh` and a
/// non-socket engine behind `ssh` are refused with the field's line.
#[test]
fn remote_engines_only_over_ssh() {
    for (extra, says) in [
        (
            "docker_host = \"tcp://10.1.2.3:2375\"",
            "set `ssh = \"user@10.1.2.3\"` instead",
        ),
        ("ssh = \"-oProxyCommand=evil\"", "is not user@host"),
        (
            "ssh = \"deploy@staging\"\ndocker_host = \"tcp://127.0.0.1:2375\"",
            "with `ssh`, docker_host is the engine's socket on the server",
        ),
    ] {
        let text = GOOD.replace(
            "env_file = \".env.test\"",
            &format!("env_file = \".env.test\"\n{extra}"),
        );
        let (_d, p) = with(&text);
        let r = xtask(&p, &["health", "development"]);
        assert_eq!(r.code, 2, "{extra}: {r:?}");
        assert!(r.stderr.contains(says), "{extra}: {r:?}");
        assert!(r.stderr.contains("ops.toml:"), "{extra}: {r:?}");
    }
    // Loopback stays allowed.
    let text = GOOD.replace(
        "env_file = \".env.test\"",
        "env_file = \".env.test\"\ndocker_host = \"tcp://127.0.0.1:2375\"",
    );
    let (_d, p) = with(&text);
    let r = xtask(&p, &["config", "development"]);
    assert!(r.stdout.contains("valid"), "{r:?}");
    assert!(!r.stderr.contains("docker_host"), "{r:?}");
}
