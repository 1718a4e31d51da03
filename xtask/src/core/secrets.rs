//! Deployment Procedures, the environment's secrets: generated into its env
//! file when `generate_secrets` asks (config only reads them), and checked
//! against the running database before anything is recreated. Shared by the
//! development path (`deployment`) and releases.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{config_error, Env};
use crate::core::files::{random_hex, write_private};

/// Create the secrets `generate_secrets` lists and the env file lacks.
/// Returns the names created; `dry_run` only reports them.
pub fn ensure_generated(env: &mut Env, dry_run: bool) -> Result<Vec<String>> {
    let missing = env.missing_generated_secrets();
    if missing.is_empty() || dry_run {
        return Ok(missing);
    }
    let Some(path) = env.env_file.clone() else {
        return Err(config_error(format!(
            "environments.{}.generate_secrets needs env_file: where should the generated secrets go?",
            env.name
        )));
    };
    let mut text = if path.exists() {
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?
    } else {
        format!(
            "# Secrets of the `{}` environment, created by mre-ops. Never commit this file.\n",
            env.name
        )
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for key in &missing {
        let value = random_hex(24)?;
        text.push_str(&format!("{key}={value}\n"));
        env.learn_file_var(key, value);
    }
    write_private(&path, &text)?;
    Ok(missing)
}

/// A running database keeps the password its volume was created with: when
/// the env file says otherwise, recreating the containers would lock the
/// application out. Found before anything is recreated.
pub fn check_password_against_running_database(env: &Env) -> Result<()> {
    let Some(container) = env
        .settings
        .database
        .as_ref()
        .and_then(|d| d.container.clone())
    else {
        return Ok(());
    };
    let Ok(url) = env.database_url() else {
        return Ok(());
    };
    let docker = crate::core::session::docker(env)?;
    let running = docker
        .container(&container)?
        .is_some_and(|c| c.state == "running");
    if !running {
        return Ok(());
    }
    match crate::adapters::postgres::select_one(&url, Duration::from_secs(5)) {
        Err(e) if format!("{e:#}").contains("password authentication failed") => Err(config_error(format!(
            "the running database `{container}` refuses the password in {} (it keeps the one its volume was created with): \
             nothing was changed. Put the original password back, or change it inside the database first \
             (ALTER ROLE ... PASSWORD), then deploy again",
            env.env_file_hint()
        ))),
        // Unreachable from the host (other port, starting): the deploy's own
        // wait reports it.
        _ => Ok(()),
    }
}
