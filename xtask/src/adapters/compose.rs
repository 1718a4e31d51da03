//! Docker Compose, v2 (`docker compose`) or v1 (`docker-compose`), detected
//! or chosen in ops.toml. Commands are built here and run by the caller's
//! plan, so a dry run prints them exactly.

use anyhow::{bail, Result};
use camino::Utf8PathBuf;

use super::process::Command;
use crate::deployment_architecture::{ComposeCommand, Env};

pub struct Compose {
    program: Vec<String>,
    files: Vec<Utf8PathBuf>,
    project: String,
    env: Vec<(String, String)>,
    dir: Utf8PathBuf,
}

/// Which Compose to run: `docker compose` when the plugin answers, else
/// `docker-compose`.
pub fn detect(choice: ComposeCommand) -> Result<Vec<String>> {
    let v2 = || {
        Command::new("docker", ["compose", "version"])
            .read()
            .is_ok()
    };
    let v1 = || Command::new("docker-compose", ["version"]).read().is_ok();
    let program = match choice {
        ComposeCommand::V2 => vec!["docker", "compose"],
        ComposeCommand::V1 => vec!["docker-compose"],
        ComposeCommand::Auto if v2() => vec!["docker", "compose"],
        ComposeCommand::Auto if v1() => vec!["docker-compose"],
        ComposeCommand::Auto => bail!(
            "neither `docker compose` (v2) nor `docker-compose` (v1) answers: install one \
             (`apt-get install docker-compose`), or set compose.command in ops.toml"
        ),
    };
    Ok(program.into_iter().map(String::from).collect())
}

impl Compose {
    pub fn for_env(env: &Env) -> Result<Compose> {
        for f in env.compose_files() {
            if !f.exists() {
                bail!(
                    "the Compose file {f} named by environments.{}.compose.files does not exist (paths are relative to ops.toml)",
                    env.name
                );
            }
        }
        Ok(Compose {
            program: detect(env.settings.compose.command)?,
            files: env.compose_files(),
            project: env.settings.compose.project.clone(),
            // Compose talks to the same engine as the Engine API calls.
            env: [("DOCKER_HOST".to_string(), env.docker_host())]
                .into_iter()
                .chain(env.compose_env())
                .collect(),
            dir: env.dir.clone(),
        })
    }

    /// `<compose> -p PROJECT -f FILE... ARGS`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut words: Vec<String> = self.program[1..].to_vec();
        words.extend(["-p".to_string(), self.project.clone()]);
        for f in &self.files {
            words.extend(["-f".to_string(), f.to_string()]);
        }
        words.extend(args.iter().map(|a| a.to_string()));
        Command::new(&self.program[0], words)
            .envs(&self.env)
            .dir(&self.dir)
    }
}
