//! Pre-Deployment Checklist, Configuration Checks: required variables set
//! and not placeholders, the env file untracked by git and private (0600)
//! with ops.toml holding no secret, the database connection, and the API
//! keys ops.toml declares. Values are never shown: only names.

use std::time::{Duration, Instant};

use super::{placeholder, Ctx, CONFIGURATION};
use crate::adapters::postgres;
use crate::adapters::process::Command;
use crate::config::Env;
use crate::core::check::Check;

pub(super) fn checks(ctx: &Ctx) -> Vec<Check> {
    vec![
        variables(ctx.env),
        secrets(ctx),
        connection(ctx.env),
        api_keys(ctx.env),
    ]
}

/// Where a variable's value comes from, for evidence.
fn source(env: &Env, key: &str) -> &'static str {
    if std::env::var(key).is_ok_and(|v| !v.is_empty()) {
        "shell"
    } else if env.in_env_file(key) {
        "env file"
    } else {
        "nowhere"
    }
}

/// Names that are missing or placeholders (never their values).
fn problems(env: &Env, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|k| match env.var(k) {
            None => Some(format!("{k} missing")),
            Some(v) if placeholder(&v) => Some(format!("{k} is a placeholder")),
            Some(_) => None,
        })
        .collect()
}

/// "Environment variables reviewed": every variable each service needs
/// (preflight.required_env, and the database's) is set and not a placeholder.
fn variables(env: &Env) -> Check {
    let name = "Environment variables reviewed";
    let mut wanted: Vec<(String, Vec<String>)> = env
        .settings
        .preflight
        .required_env
        .iter()
        .map(|(s, v)| (s.clone(), v.clone()))
        .collect();
    if let Some(db) = &env.settings.database {
        let key = db.url_env.clone().filter(|k| env.var(k).is_some());
        let key = key.or_else(|| db.password_env.clone());
        wanted.push(("database".into(), key.into_iter().collect()));
    }
    let target = env.env_file_hint();
    let total: usize = wanted.iter().map(|(_, v)| v.len()).sum();
    if total == 0 {
        return Check {
            next: Some(format!(
                "declare each service's variables in [environments.{}.preflight] required_env = {{ mre-app = [\"...\"] }}",
                env.name
            )),
            ..Check::warn(
                name.into(),
                CONFIGURATION,
                target,
                "no variables declared in preflight.required_env".into(),
                Duration::ZERO,
            )
        };
    }
    let found: Vec<String> = wanted
        .iter()
        .flat_map(|(svc, names)| {
            problems(env, names)
                .into_iter()
                .map(move |p| format!("{svc}: {p}"))
        })
        .collect();
    if found.is_empty() {
        let sources: std::collections::BTreeSet<&str> = wanted
            .iter()
            .flat_map(|(_, n)| n.iter().map(|k| source(env, k)))
            .collect();
        return Check::pass(
            name.into(),
            CONFIGURATION,
            target,
            format!(
                "{total} variables of {} services set, none a placeholder (from {})",
                wanted.len(),
                sources.into_iter().collect::<Vec<_>>().join(" and ")
            ),
            Duration::ZERO,
        );
    }
    Check::fail(
        name.into(),
        CONFIGURATION,
        target.clone(),
        "every required variable set to a real value",
        found.join("; "),
        format!("set them in {target} (or export them) and run preflight again"),
        Duration::ZERO,
    )
}

/// "Secrets updated and secure": the env file is not tracked by git and
/// is readable by its owner only; ops.toml holds no secret value and its
/// Compose `env` tables no secret-looking key.
fn secrets(ctx: &Ctx) -> Check {
    let name = "Secrets updated and secure";
    let env = ctx.env;
    let start = Instant::now();
    let mut bad = Vec::new();
    let mut good = Vec::new();
    match &env.env_file {
        Some(path) if path.exists() => {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(path) {
                Ok(m) => {
                    let mode = m.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        bad.push(format!(
                            "{path} is mode {mode:04o}, readable by others (`chmod 600 {path}`)"
                        ));
                    } else {
                        good.push(format!("{path} mode {mode:04o}"));
                    }
                    if let Ok(age) = m.modified().map(|t| t.elapsed().unwrap_or_default()) {
                        good.push(format!("changed {} days ago", age.as_secs() / 86400));
                    }
                }
                Err(e) => bad.push(format!("cannot read {path}: {e}")),
            }
            let dir = path
                .parent()
                .map(|p| p.to_owned())
                .unwrap_or_else(|| ".".into());
            let file = path.file_name().unwrap_or_default().to_string();
            let tracked = Command::new("git", ["ls-files", "--error-unmatch", "--", file.as_str()])
                .dir(&dir)
                .read();
            match tracked {
                Ok(_) => bad.push(format!(
                    "{path} is tracked by git (`git rm --cached {file}`, add it to .gitignore, and rotate its secrets)"
                )),
                Err(_) => good.push("not tracked by git".into()),
            }
        }
        Some(path) => good.push(format!(
            "no env file at {path} (secrets from the process environment)"
        )),
        None => good.push("no env file (secrets from the process environment)".into()),
    }
    let text = std::fs::read_to_string(&ctx.ops.path).unwrap_or_default();
    let leaked: Vec<String> = env
        .secret_names()
        .into_iter()
        .filter(|k| {
            env.var(k)
                .is_some_and(|v| v.len() >= 4 && text.contains(&v))
        })
        .collect();
    if !leaked.is_empty() {
        bad.push(format!(
            "{} holds the value of {} (move it to the env file and rotate it)",
            ctx.ops.path,
            leaked.join(", ")
        ));
    }
    let suspicious: Vec<&String> = env
        .settings
        .compose
        .iter()
        .flat_map(|c| c.env.keys())
        .filter(|k| {
            let u = k.to_ascii_uppercase();
            ["PASSWORD", "SECRET", "TOKEN", "API_KEY", "PRIVATE"]
                .iter()
                .any(|w| u.contains(w))
        })
        .collect();
    if !suspicious.is_empty() {
        bad.push(format!(
            "compose.env in ops.toml sets {} (secrets belong in the env file)",
            suspicious
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if bad.is_empty() {
        good.push("ops.toml holds no secret".into());
        Check::pass(
            name.into(),
            CONFIGURATION,
            env.env_file_hint(),
            good.join(", "),
            start.elapsed(),
        )
    } else {
        Check::fail(
            name.into(),
            CONFIGURATION,
            env.env_file_hint(),
            "an env file untracked by git, mode 0600, and no secret in ops.toml",
            bad.join("; "),
            "fix each point above, then run preflight again".into(),
            start.elapsed(),
        )
    }
}

/// "Database connection strings verified": the URL built from ops.toml and
/// the env file connects and answers `SELECT 1`.
fn connection(env: &Env) -> Check {
    let name = "Database connection strings verified";
    let start = Instant::now();
    if env.settings.database.is_none() {
        return Check::skip(
            name.into(),
            CONFIGURATION,
            "-".into(),
            "no [database] in ops.toml".into(),
        );
    }
    let url = match env.database_url() {
        Ok(u) => u,
        Err(e) => {
            return Check::fail(
                name.into(),
                CONFIGURATION,
                "(no URL)".into(),
                "a connection URL",
                format!("{e:#}"),
                "set the variable named in ops.toml [database]".into(),
                start.elapsed(),
            )
        }
    };
    let (url, _) = crate::database_migrations::split_schema(&url);
    let target = postgres::describe_url(&url);
    match postgres::select_one(&url, Duration::from_secs(5)) {
        Ok(()) => Check::pass(
            name.into(),
            CONFIGURATION,
            target.clone(),
            format!("{target}: SELECT 1 ok"),
            start.elapsed(),
        ),
        Err(e) => Check::fail(
            name.into(),
            CONFIGURATION,
            target,
            "a connection answering SELECT 1",
            format!("{e:#}"),
            format!(
                "`cargo xtask health {}`; check host, port and password",
                env.name
            ),
            start.elapsed(),
        ),
    }
}

/// "API keys and tokens configured": the variables preflight.api_keys names.
fn api_keys(env: &Env) -> Check {
    let name = "API keys and tokens configured";
    let keys = &env.settings.preflight.api_keys;
    if keys.is_empty() {
        return Check::skip(
            name.into(),
            CONFIGURATION,
            "preflight.api_keys".into(),
            "none declared in ops.toml".into(),
        );
    }
    let found = problems(env, keys);
    if found.is_empty() {
        Check::pass(
            name.into(),
            CONFIGURATION,
            keys.join(", "),
            format!("{} set: {}", keys.len(), keys.join(", ")),
            Duration::ZERO,
        )
    } else {
        Check::fail(
            name.into(),
            CONFIGURATION,
            keys.join(", "),
            "every declared key set to a real value",
            found.join("; "),
            format!("set them in {} (or export them)", env.env_file_hint()),
            Duration::ZERO,
        )
    }
}
