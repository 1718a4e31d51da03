//! Database Migration Procedures: the `prisma` runner, the runbook's
//! `docker exec -it mre-app npx prisma migrate deploy`.

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Env};
use crate::core::steps::Plan;

use super::DeployOptions;

pub fn prisma_command() -> [&'static str; 4] {
    ["npx", "prisma", "migrate", "deploy"]
}

pub(super) fn prisma_container(env: &Env) -> Result<String> {
    if let Some(c) = &env.settings.migrations.container {
        return Ok(c.clone());
    }
    env.settings
        .services
        .get("mre-app")
        .and_then(|s| s.container.clone())
        .ok_or_else(|| {
            config_error(format!(
                "runner = \"prisma\" needs a container to run in: set environments.{}.migrations.container",
                env.name
            ))
        })
}

pub(super) fn prisma_deploy(env: &Env, out: &Output, opts: &DeployOptions) -> Result<()> {
    let container = prisma_container(env)?;
    let mut plan = Plan::new(format!("migrate deploy {} (runner: prisma)", env.name));
    if opts.backup {
        plan.action(
            "Back up the database",
            "cargo xtask backup: a verified backup before migrating",
            || crate::disaster_recovery::create_backup(env, out, "before migration").map(drop),
        );
    }
    let shown = format!("docker exec {container} {}", prisma_command().join(" "));
    plan.action(
        "Apply migrations with Prisma",
        format!("$ {shown}   (Docker Engine API on {})", env.docker_host()),
        move || {
            let docker = crate::core::session::docker(env)?;
            let mut stdout = std::io::stderr();
            let outcome = docker.exec(&container, &prisma_command(), &[], None, &mut stdout)?;
            match outcome.exit_code {
                0 => Ok(()),
                126 | 127 => bail!(
                    "`npx` is not installed in container `{container}` (exit {}: not found or not executable). \
                     The prisma runner needs Node.js and the Prisma CLI in the app image; install them there, or set \
                     runner = \"native\" in [environments.{}.migrations] to let mre-ops apply the migrations itself",
                    outcome.exit_code,
                    env.name
                ),
                code => bail!(
                    "`{shown}` failed (exit {code}): {}\n`cargo xtask migrate status {}` shows what is recorded",
                    outcome.stderr,
                    env.name
                ),
            }
        },
    );
    plan.execute(out, opts.dry_run)
}
