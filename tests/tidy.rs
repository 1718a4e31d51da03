//! The tree stays tidy: every source file says what it is for in a `//!`
//! line, every command's `--help` names the runbook section it automates, no
//! file passes ~600 lines, and the layers import only downwards.

mod common;

use std::path::Path;

/// The runbook's nine sections, each a module under `xtask/src/`.
const RUNBOOK_SECTIONS: [&str; 9] = [
    "deployment_architecture",
    "pre_deployment_checklist",
    "deployment_procedures",
    "database_migrations",
    "rollback_procedures",
    "health_checks",
    "post_deployment_verification",
    "monitoring_and_alerting",
    "disaster_recovery",
];

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
            text.to_lowercase().contains("runbook"),
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
    let sections: Vec<&str> = RUNBOOK_SECTIONS
        .iter()
        .copied()
        .chain(["runbook", "demo", "contributing"])
        .collect();
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
            for name in forbidden.iter().copied().chain(sections.iter().copied()) {
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

/// A module's parts name what they take from each other: no glob import of
/// a sibling or of the parent (`use super::*`, `use super::{a::*}`) outside
/// a `mod tests`, and no `allow(unused_imports)` to hide what a glob drags in.
#[test]
fn no_glob_imports_between_siblings() {
    let root = common::workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("xtask/src"), &mut files);
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // What comes before the unit tests, if any.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let l = line.trim();
            let glob = l.starts_with("use super::") && l.contains('*');
            if glob || l.contains("allow(unused_imports)") {
                bad.push(format!(
                    "{}:{}: {l}",
                    f.strip_prefix(&root).unwrap().display(),
                    n + 1
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "name the items a module takes from its neighbours: {bad:#?}"
    );
}

/// The modules a module's code (not its comments or unit tests) names
/// through `prefix` (`crate::` or `super::`), among `names`.
fn names_used(path: &Path, prefix: &str, names: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        // `crate::a::…`, or each `b::` inside `crate::{a, b::c}`.
        let heads: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            inner.split(',').map(|p| p.trim()).collect()
        } else {
            vec![rest]
        };
        for h in heads {
            let name: String = h
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if names.contains(&name) && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

/// A cycle in `edges`, if any, as the modules along it.
fn find_cycle(edges: &std::collections::BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &std::collections::BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// No import cycle: between the top-level modules (`crate::x`), nor between
/// the parts of a folder module (`super::x`).
#[test]
fn no_import_cycles() {
    let root = common::workspace_root().join("xtask/src");
    let mut folders = vec![root.clone()];
    let mut i = 0;
    while i < folders.len() {
        for e in std::fs::read_dir(&folders[i]).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                folders.push(p);
            }
        }
        i += 1;
    }
    for folder in folders {
        // The folder's modules: `x.rs` and `x/`, each with the files it holds.
        let mut modules: std::collections::BTreeMap<String, Vec<std::path::PathBuf>> =
            Default::default();
        for e in std::fs::read_dir(&folder).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if matches!(name.as_str(), "mod" | "main" | "lib") {
                continue;
            }
            let mut files = Vec::new();
            if p.is_dir() {
                rust_files(&p, &mut files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            } else {
                continue;
            }
            modules.entry(name).or_default().extend(files);
        }
        let names: Vec<String> = modules.keys().cloned().collect();
        let top = folder == root;
        let mut edges: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (name, files) in &modules {
            let mut to = Vec::new();
            for f in files {
                // From a folder module's own files, `super::` is the folder itself.
                let direct = top || f.parent() == Some(folder.as_path());
                let prefix = if top { "crate::" } else { "super::" };
                if !direct && !top {
                    continue;
                }
                for n in names_used(f, prefix, &names) {
                    if &n != name && !to.contains(&n) {
                        to.push(n);
                    }
                }
            }
            edges.insert(name.clone(), to);
        }
        if let Some(c) = find_cycle(&edges) {
            panic!(
                "an import cycle in {}: {} (move what both need below them)",
                folder
                    .strip_prefix(root.parent().unwrap())
                    .unwrap_or(&folder)
                    .display(),
                c.join(" -> ")
            );
        }
    }
}

/// The outside world is reached through `adapters/` only: the `bollard` and
/// `postgres` crates are named nowhere else (the sections use the adapters'
/// re-exported client types), and the one client per Docker engine is made
/// in `core/session.rs`, the place a transport to an engine is chosen.
#[test]
fn crates_of_the_outside_world_only_in_adapters() {
    let src = common::workspace_root().join("xtask/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for p in files {
        let rel = p.strip_prefix(&src).unwrap().display().to_string();
        if rel.starts_with("adapters/") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let imports_adapter = text.contains("use crate::adapters::postgres")
            || text.contains("use crate::adapters::{") && text.contains("postgres}")
            || text.contains(", postgres}")
            || text.contains("postgres,");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let crate_path = code.contains("::postgres::")
                && !code.contains("adapters::postgres::")
                || code.trim_start().starts_with("use postgres")
                || code.contains("postgres::")
                    && !code.contains("adapters::postgres")
                    && !imports_adapter;
            if code.contains("bollard") || crate_path {
                wrong.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
            if code.contains("Docker::connect") && rel != "core/session.rs" {
                wrong.push(format!(
                    "{rel}:{}: use crate::core::session::docker(env) (one client per engine per command)",
                    i + 1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the bollard and postgres crates belong in xtask/src/adapters/ only:\n{}",
        wrong.join("\n")
    );
}

/// The runbook's nine sections are visible in the tree: each is one module
/// (a file or a folder) under `xtask/src/`, named after it.
#[test]
fn the_tree_shows_the_runbook_sections() {
    let src = common::workspace_root().join("xtask/src");
    let missing: Vec<&str> = RUNBOOK_SECTIONS
        .iter()
        .copied()
        .filter(|s| !src.join(format!("{s}.rs")).is_file() && !src.join(s).join("mod.rs").is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "a runbook section without its module: {missing:?}"
    );
}
