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
    let out = Command::new("zizmor")
        .args(["--offline", "--config", ".github/zizmor.yml", ".github/workflows"])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!("zizmor is needed to lint the workflows ({e}): `python3 -m pip install zizmor` (.ci/run does)")
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
