//! Docker Compose, v2 (`docker compose`) or v1 (`docker-compose`), detected
//! or chosen in ops.toml. Commands are built here and run by the caller's
//! plan, so a dry run prints them exactly.

use anyhow::{bail, Result};
use camino::Utf8PathBuf;

use super::process::Command;

pub struct Compose {
    program: Vec<String>,
    files: Vec<Utf8PathBuf>,
    project: String,
    env: Vec<(String, String)>,
    dir: Utf8PathBuf,
}

/// Which Compose: chosen, or the first that answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Auto,
    /// `docker compose`
    V2,
    /// `docker-compose`
    V1,
}

/// Which Compose to run: `docker compose` when the plugin answers, else
/// `docker-compose`.
pub fn detect(choice: Flavor) -> Result<Vec<String>> {
    // Asking takes a process start each (docker-compose v1 is a Python
    // program: ~0.4 s); the answer does not change within a run.
    static DETECTED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if choice == Flavor::Auto {
        if let Some(p) = DETECTED.get() {
            return Ok(p.clone());
        }
        let p = detect_now(choice)?;
        let _ = DETECTED.set(p.clone());
        return Ok(p);
    }
    detect_now(choice)
}

fn detect_now(choice: Flavor) -> Result<Vec<String>> {
    let v2 = || {
        Command::new("docker", ["compose", "version"])
            .read()
            .is_ok()
    };
    let v1 = || Command::new("docker-compose", ["version"]).read().is_ok();
    let program = match choice {
        Flavor::V2 => vec!["docker", "compose"],
        Flavor::V1 => vec!["docker-compose"],
        Flavor::Auto if v2() => vec!["docker", "compose"],
        Flavor::Auto if v1() => vec!["docker-compose"],
        Flavor::Auto => bail!(
            "neither `docker compose` (v2) nor `docker-compose` (v1) answers: install one \
             (`apt-get install docker-compose`), or set compose.command in ops.toml"
        ),
    };
    Ok(program.into_iter().map(String::from).collect())
}

impl Compose {
    /// Compose for these files (which must exist) and project, with the
    /// variables its files interpolate, run from `dir`.
    pub fn new(
        flavor: Flavor,
        files: Vec<Utf8PathBuf>,
        project: String,
        env: Vec<(String, String)>,
        dir: Utf8PathBuf,
    ) -> Result<Compose> {
        Ok(Compose {
            program: detect(flavor)?,
            files,
            project,
            env,
            dir,
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
