//! The GitHub Actions side: the workflows lint clean (zizmor, from PyPI:
//! syntax, permissions, pinned actions, credentials), and commands hand their
//! results to later steps through `$GITHUB_OUTPUT` under a (fake) runner.
mod common;

use std::process::Command;

use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD};
use common::*;

#[test]
fn workflows_lint_clean() {
    let root = workspace_root();
    // On PATH, or where `pipx install` puts it when PATH does not have it yet.
    let pipx = std::env::var("HOME")
        .map(|h| std::path::Path::new(&h).join(".local/bin/zizmor"))
        .ok()
        .filter(|p| p.exists());
    let on_path = Command::new("zizmor").arg("--version").output().is_ok();
    let program = match pipx {
        Some(p) if !on_path => p,
        _ => "zizmor".into(),
    };
    let out = Command::new(&program)
        .args(["--offline", "--config", ".github/zizmor.yml", ".github/workflows"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "zizmor is needed to lint the workflows ({e}): `apt-get install pipx && pipx install zizmor` \
                 (or `python3 -m pip install zizmor`; .ci/run does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "zizmor found problems in .github/workflows:\n{text}"
    );
    for f in [
        "ci.yml",
        "deploy-staging.yml",
        "deploy-production.yml",
        "backup.yml",
        "rollback.yml",
    ] {
        let w = std::fs::read_to_string(root.join(".github/workflows").join(f)).unwrap();
        assert!(
            w.contains("cargo xtask") || f == "ci.yml",
            "{f} calls cargo xtask"
        );
        assert!(w.contains("permissions:"), "{f} declares its permissions");
    }
}

#[test]
fn github_output_carries_a_backups_path() {
    let pg = Pg::start();
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let dir = TempDir::new("gh-output");
    let toml = OpsToml::new()
        .env("t", &[])
        .database("t", pg.port, "TEST_PG_PASSWORD")
        .section("t", "backups", &["method = \"host\""])
        .build();
    let cfg = dir.write("ops.toml", &toml);
    let output = dir.path().join("github_output");
    let summary = dir.path().join("summary.md");
    let r = xtask_env(
        &cfg,
        &["backup", "create", "t"],
        &[
            ("TEST_PG_PASSWORD", PASSWORD),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_OUTPUT", output.to_str().unwrap()),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let text = std::fs::read_to_string(&output).expect("$GITHUB_OUTPUT is written");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("backup_path="))
        .expect("backup_path=");
    assert!(std::path::Path::new(path).exists(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("backup_name=pacetracer-")),
        "{text}"
    );
    assert!(!text.contains(PASSWORD));
    assert!(std::fs::read_to_string(&summary)
        .unwrap()
        .contains("Backup of `t`"));
    // Outside Actions nothing is written there.
    std::fs::remove_file(&output).unwrap();
    let r = xtask_env(
        &cfg,
        &["backup", "create", "t"],
        &[
            ("TEST_PG_PASSWORD", PASSWORD),
            ("GITHUB_OUTPUT", output.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!output.exists());
}

/// docs/RUNBOOK.md is generated from the code (`cargo xtask runbook`): the
/// committed file is current, and `--check` fails with a diff on a stale one.
#[test]
fn the_generated_runbook_is_current() {
    let root = workspace_root();
    let config = root.join("ops.toml");
    let r = xtask(&config, &["runbook", "--check"]);
    assert_eq!(
        r.code, 0,
        "docs/RUNBOOK.md is stale: run `cargo xtask runbook` and commit it: {r:?}"
    );
    let text = std::fs::read_to_string(root.join("docs/RUNBOOK.md")).unwrap();
    for expected in [
        "## Deployment Procedures",
        "Steps of `cargo xtask deploy production --tag VERSION --dry-run`",
        "**Pre-deployment checklist**",
        "**Smoke tests**",
        "undo: point the proxy back at the previous colour",
        "Steps of `cargo xtask restore production latest --dry-run`",
        "## Related Documentation\n\nNo command",
    ] {
        assert!(text.contains(expected), "RUNBOOK.md lacks {expected:?}");
    }
    assert!(
        !text.contains(root.to_str().unwrap()),
        "no machine-specific path in the runbook"
    );
    // A stale copy: exit 1, and the diff names the line.
    let dir = TempDir::new("runbook");
    let stale = dir.write(
        "RUNBOOK.md",
        &text.replace("**Smoke tests**", "**Smoke tests (old)**"),
    );
    let r = xtask(
        &config,
        &["runbook", "--check", "--out", stale.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("is stale")
            && r.stderr.contains("-")
            && r.stderr.contains("Smoke tests (old)"),
        "{r:?}"
    );
}

#[test]
fn shell_completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let r = xtask(
            std::path::Path::new("/nonexistent/ops.toml"),
            &["completions", shell],
        );
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        for word in ["deploy", "rollback", "restore", "preflight", "dry-run"] {
            assert!(r.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
}

/// Every command's report reaches the step summary under Actions, also one
/// without its own markdown (`config`: its lines as a text block).
#[test]
fn every_report_reaches_the_step_summary() {
    let dir = TempDir::new("gh-summary");
    let summary = dir.path().join("summary.md");
    let r = xtask_env(
        &workspace_root().join("ops.toml"),
        &["config", "development"],
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
            ("POSTGRES_PASSWORD", "not-a-real-one"),
        ],
    );
    assert!(r.code == 0 || r.code == 1, "{r:?}");
    let text = std::fs::read_to_string(&summary).expect("the step summary is written");
    assert!(
        text.contains("```text") && text.contains("development"),
        "{text}"
    );
    assert!(!text.contains("not-a-real-one"), "no secret in the summary");
}
