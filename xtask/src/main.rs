//! mre-ops: the MRE deployment runbook as `cargo xtask` commands. Each runbook
//! section is one file, named after it; `adapters/` holds the thin edges
//! (Docker, Compose, PostgreSQL, HTTP, processes, output).
//!
//! Exit codes: 0 success; 1 a check or a step failed; 2 usage or
//! configuration error.

mod adapters;
mod config;
mod contributing;
mod core;
mod database_migrations;
mod demo;
mod deployment;
mod deployment_architecture;
mod disaster_recovery;
mod health_checks;
mod monitoring_and_alerting;
mod post_deployment_verification;
mod pre_deployment_checklist;
mod releases;
mod rollback_procedures;
mod runbook;
mod smoke_tests;
mod swarm_views;

use std::process::ExitCode;

use camino::Utf8PathBuf;
use clap::{Parser, Subcommand};

use adapters::output::{redact, Output};
use config::{ConfigError, Ops};
use core::interrupt::Interrupted;

/// The MRE deployment runbook, runnable: each command automates one section
/// of the runbook (see README.md). Every command that changes something
/// (deploy, rollback, recover, down, migrate deploy/resolve, backup
/// create/verify/prune, restore, drill, demo prepare, runbook) has --dry-run, which
/// prints the steps that would run, from the plan that runs them.
#[derive(Parser, Debug)]
#[command(
    about = "The MRE deployment runbook, runnable: one command per runbook section",
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// ops.toml to use (default: ops.toml at the workspace root).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MRE_OPS_CONFIG",
        hide_env_values = true
    )]
    config: Option<Utf8PathBuf>,
    /// Print a machine-readable JSON report on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail (the commands run, timings).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Wait up to SECS for another operation's lock on the environment
    /// (default: refuse at once, naming the holder).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        env = "MRE_OPS_LOCK_WAIT",
        hide_env_values = true,
        default_value_t = 0
    )]
    lock_wait: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Config(deployment_architecture::ConfigArgs),
    Preflight(pre_deployment_checklist::PreflightArgs),
    Deploy(deployment::DeployArgs),
    Migrate(database_migrations::MigrateArgs),
    Health(health_checks::HealthArgs),
    Status(post_deployment_verification::StatusArgs),
    Logs(post_deployment_verification::LogsArgs),
    Smoke(smoke_tests::SmokeArgs),
    Monitor(monitoring_and_alerting::MonitorArgs),
    Backup(disaster_recovery::BackupArgs),
    Restore(disaster_recovery::RestoreArgs),
    Drill(disaster_recovery::DrillArgs),
    Releases(releases::ReleasesArgs),
    Rollback(releases::RollbackArgs),
    Recover(rollback_procedures::RecoverArgs),
    Lock(rollback_procedures::LockArgs),
    Down(rollback_procedures::DownArgs),
    /// Build the bundled demo stack's offline images (the stand-in for the
    /// MRE application).
    Demo(demo::DemoArgs),
    Runbook(runbook::RunbookArgs),
    Completions(CompletionsArgs),
    Test(contributing::TestArgs),
}

/// Print a shell completion script.
///
/// No runbook section: the CLI itself. The script is for the `cargo-xtask`
/// command name: `cargo xtask completions bash >
/// ~/.local/share/bash-completion/completions/cargo-xtask` (zsh:
/// `_cargo-xtask` in a folder on $fpath; fish:
/// ~/.config/fish/completions/cargo-xtask.fish). For a short alias in bash:
/// `alias xt='cargo xtask'; complete -F _cargo__xtask xt`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json, cli.quiet, cli.verbose);
    match run(&cli, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if let Some(i) = e.downcast_ref::<Interrupted>() {
                i.exit_code()
            } else if e.downcast_ref::<ConfigError>().is_some() {
                2
            } else {
                1
            };
            let text = redact(&error_text(&e));
            if out.json && !out.json_printed.get() {
                out.json_doc(&serde_json::json!({ "ok": false, "error": text, "exit_code": code }));
            }
            out.annotate_error(&text);
            let label = out.paint(adapters::output::Tone::Bad, "error:");
            eprintln!("{label} {text}");
            ExitCode::from(code)
        }
    }
}

/// The error and its causes in one message: `: ` between parts, but a part
/// that ends a sentence is followed by the next sentence, not by `.:`.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for part in e.chain().map(|c| c.to_string()) {
        if !text.is_empty() {
            if text.ends_with(['.', '!', '?', '\n']) {
                text.push(' ');
            } else {
                text.push_str(": ");
            }
        }
        text.push_str(&part);
    }
    text
}

fn run(cli: &Cli, out: &Output) -> anyhow::Result<()> {
    if let Cmd::Demo(args) = &cli.command {
        return demo::demo(out, args);
    }
    if let Cmd::Test(args) = &cli.command {
        return contributing::test(out, args);
    }
    if let Cmd::Completions(args) = &cli.command {
        use clap::CommandFactory;
        let mut script = Vec::new();
        clap_complete::generate(args.shell, &mut Cli::command(), "cargo-xtask", &mut script);
        use std::io::Write;
        return match std::io::stdout().write_all(&script) {
            // `| head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.map_err(anyhow::Error::from),
        };
    }
    core::lock::set_wait(cli.lock_wait);
    let ops = Ops::load(cli.config.as_deref())?;
    match &cli.command {
        Cmd::Config(args) => deployment_architecture::config(&ops, out, args),
        Cmd::Preflight(args) => pre_deployment_checklist::preflight(&ops, out, args),
        Cmd::Deploy(args) => deployment::deploy(&ops, out, args),
        Cmd::Migrate(args) => database_migrations::migrate(&ops, out, args),
        Cmd::Backup(args) => disaster_recovery::backup(&ops, out, args),
        Cmd::Restore(args) => disaster_recovery::restore(&ops, out, args),
        Cmd::Drill(args) => disaster_recovery::drill(&ops, out, args),
        Cmd::Releases(args) => releases::releases(&ops, out, args),
        Cmd::Rollback(args) => releases::rollback(&ops, out, args),
        Cmd::Recover(args) => rollback_procedures::recover(&ops, out, args),
        Cmd::Lock(args) => rollback_procedures::lock_cmd(&ops, out, args),
        Cmd::Down(args) => rollback_procedures::down(&ops, out, args),
        Cmd::Health(args) => health_checks::health(&ops, out, args),
        Cmd::Status(args) => post_deployment_verification::status(&ops, out, args),
        Cmd::Logs(args) => post_deployment_verification::logs(&ops, out, args),
        Cmd::Smoke(args) => smoke_tests::smoke(&ops, out, args),
        Cmd::Monitor(args) => monitoring_and_alerting::monitor(&ops, out, args),
        Cmd::Runbook(args) => runbook::runbook(&ops, out, args),
        Cmd::Demo(_) | Cmd::Completions(_) | Cmd::Test(_) => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
