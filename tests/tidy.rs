//! The tree stays tidy: every source file says what it is for in a `//!`
//! line, every command's `--help` names the runbook section it automates, no
//! file passes ~600 lines, and the layers import only downwards.

mod common;

use std::path::Path;

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, found);
        } else if p.extension().is_some_and(|e| e == "rs") {
            found.push(p);
        }
    }
}

#[test]
fn every_module_has_a_doc_line() {
    let root = common::workspace_root();
    let mut files = Vec::new();
    for dir in ["xtask/src", "demo/src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|p| {
            !std::fs::read_to_string(p)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "add a `//!` line saying what each is for: {missing:?}"
    );
}

#[test]
fn every_command_help_names_its_runbook_section() {
    let out = std::process::Command::new(common::XTASK)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help" && *c != "demo")
        .collect();
    assert!(commands.len() >= 5, "{help}");
    for c in commands {
        let out = std::process::Command::new(common::XTASK)
            .args([c, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("runbook"),
            "`cargo xtask {c} --help` must name the runbook section it automates:\n{text}"
        );
    }
}

/// A file past ~600 lines holds two concerns (ARCHITECTURE.md).
#[test]
fn no_source_file_is_over_600_lines() {
    let root = common::workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("xtask/src"), &mut files);
    let big: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > 650).then(|| format!("{} ({n} lines)", p.strip_prefix(&root).unwrap().display()))
        })
        .collect();
    assert!(big.is_empty(), "split these by concern: {big:?}");
}

/// Adapters are the edge: they import nothing above them, and config (the
/// settings types) imports no runbook section.
#[test]
fn layers_import_only_downwards() {
    let root = common::workspace_root();
    let sections = [
        "deployment_architecture",
        "deployment",
        "database_migrations",
        "health_checks",
        "post_deployment_verification",
        "rollback_procedures",
        "disaster_recovery",
        "releases",
        "pre_deployment_checklist",
        "smoke_tests",
        "monitoring_and_alerting",
        "runbook",
        "swarm_views",
        "demo",
    ];
    let mut bad = Vec::new();
    for (dir, forbidden) in [
        ("xtask/src/adapters", vec!["config", "core"]),
        (
            "xtask/src/config",
            vec!["core::steps", "core::check", "core::lock", "core::session"],
        ),
        ("xtask/src/core", vec![]),
    ] {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for name in forbidden.iter().copied().chain(sections) {
                if text.contains(&format!("crate::{name}::"))
                    || text.contains(&format!("crate::{name};"))
                {
                    bad.push(format!(
                        "{} imports crate::{name}",
                        f.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports that point upwards: {bad:?}");
}
