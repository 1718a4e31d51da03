//! Deployment Architecture: `cargo xtask config`, which validates ops.toml
//! and shows what each environment resolves to, secrets as set or missing.
//! The settings types themselves live in `crate::config`.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::adapters::output::Output;
use crate::config::Ops;
use crate::core::report::Report;
use crate::core::session;

// `cargo xtask config [ENV]`

/// Validate ops.toml and show what an environment resolves to.
///
/// Runbook: Deployment Architecture; pre-deployment "Environment variables
/// reviewed". Secrets are shown as set or missing, never their values.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The environment to show (default: all of them).
    pub env: Option<String>,
}

pub fn config(ops: &Ops, out: &Output, args: &ConfigArgs) -> Result<()> {
    let names: Vec<String> = match &args.env {
        Some(n) => vec![n.clone()],
        None => ops.file.environments.keys().cloned().collect(),
    };
    let mut docs = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for name in &names {
        let env = session::env_offline(ops, out, name)?;
        let s = &env.settings;
        let secrets: BTreeMap<String, &str> = env
            .secret_names()
            .into_iter()
            .map(|k| {
                let state = if std::env::var(&k).is_ok_and(|v| !v.is_empty()) {
                    "set (process environment)"
                } else if env.in_env_file(&k) {
                    "set (env file)"
                } else if s.generate_secrets.contains(&k) {
                    "missing (deploy generates it)"
                } else {
                    "MISSING"
                };
                (k, state)
            })
            .collect();
        let db = s.database.as_ref().map(|d| {
            serde_json::json!({
                "container": d.container,
                "url": env.database_url().map(|u| crate::adapters::postgres::describe_url(&u))
                    .unwrap_or_else(|e| format!("unresolved: {e}")),
                "user": d.user, "name": d.name,
                "sslmode": d.sslmode,
                "sslrootcert": env.database_sslrootcert().map(|p| p.to_string()),
            })
        });
        // What would stop a command half-way, found now.
        if let Some(db) = &s.database {
            let needed = db.url_env.iter().chain(db.password_env.iter());
            if env.database_url().is_err()
                && !needed.clone().any(|k| s.generate_secrets.contains(k))
            {
                let names: Vec<&String> = needed.collect();
                problems.push(format!(
                    "`{name}`: the database secret is not set (${}); export it or add it to {}",
                    names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(" or $"),
                    env.env_file_hint()
                ));
            }
        }
        for f in env.compose_files() {
            if !f.exists() {
                problems.push(format!(
                    "`{name}`: the Compose file {f} does not exist (paths are relative to {})",
                    ops.path
                ));
            }
        }
        docs.push(serde_json::json!({
            "environment": name,
            "description": s.description,
            "protected": s.protected,
            "ssh": env.settings.ssh,
            "docker_host": if env.ssh().is_some() { env.server_docker_socket() } else { env.docker_host() },
            "env_file": env.env_file.as_ref().map(|p| p.to_string()),
            "secrets": secrets,
            "compose": {
                "files": env.compose_files().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "project": s.compose.as_ref().map(|c| &c.project),
                "command": s.compose.as_ref().map(|c| c.command),
                "env": s.compose.as_ref().map(|c| &c.env),
                "pre_build": s.compose.as_ref().map(|c| &c.pre_build),
            },
            "services": s.services,
            "database": db,
            "deploy": s.deploy,
            "migrations": s.migrations,
            "backups": s.backups,
        }));
    }
    let mut report = Report::new(serde_json::json!({
        "config": ops.path.as_str(), "valid": true, "ready": problems.is_empty(),
        "problems": problems, "environments": docs,
    }));
    report.line(format!(
        "{}: valid ({} environments: {})",
        ops.path,
        ops.names().len(),
        ops.names().join(", ")
    ));
    for doc in &docs {
        report.line("");
        report.line(format!("[{}]", doc["environment"].as_str().unwrap_or("?")));
        let mut lines = Vec::new();
        tree(doc, 1, &mut lines);
        for l in lines {
            report.line(l);
        }
    }
    report.emit(out);
    if !problems.is_empty() {
        anyhow::bail!(
            "the file is valid, but {} would stop a command half-way:\n  - {}",
            if problems.len() == 1 {
                "this".to_string()
            } else {
                format!("these {}", problems.len())
            },
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// An indented `key: value` view of a JSON value, nulls left out.
fn tree(value: &serde_json::Value, depth: usize, lines: &mut Vec<String>) {
    let pad = "  ".repeat(depth);
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::Object(m) if m.is_empty() => {}
                serde_json::Value::Object(_) => {
                    lines.push(format!("{pad}{k}:"));
                    tree(v, depth + 1, lines);
                }
                serde_json::Value::String(s) => lines.push(format!("{pad}{k}: {s}")),
                other => lines.push(format!("{pad}{k}: {other}")),
            }
        }
    }
}
