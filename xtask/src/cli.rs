//! The command line: `cargo xtask` and one subcommand per runbook section
//! (clap derive); each subcommand's `--help` names its section.

use camino::Utf8PathBuf;
use clap::{Parser, Subcommand};

use crate::{
    contributing, database_migrations, demo, deployment_architecture, deployment_procedures,
    disaster_recovery, health_checks, monitoring_and_alerting, post_deployment_verification,
    pre_deployment_checklist, rollback_procedures, runbook,
};

/// The MRE deployment runbook, runnable: each command automates one section
/// of the runbook (see README.md). Every command that changes something
/// (deploy, rollback, recover, down, maintenance, migrate deploy/resolve, backup
/// create/verify/prune/schedule, restore, drill, assess, demo prepare, runbook) has --dry-run, which
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
    pub config: Option<Utf8PathBuf>,
    /// Print a machine-readable JSON report on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail (the commands run, timings).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    pub lock_wait: u64,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    Config(deployment_architecture::ConfigArgs),
    Preflight(pre_deployment_checklist::PreflightArgs),
    Deploy(deployment_procedures::DeployArgs),
    Migrate(database_migrations::MigrateArgs),
    Health(health_checks::HealthArgs),
    Status(post_deployment_verification::StatusArgs),
    Logs(post_deployment_verification::LogsArgs),
    Smoke(post_deployment_verification::smoke_tests::SmokeArgs),
    Monitor(monitoring_and_alerting::MonitorArgs),
    Backup(disaster_recovery::BackupArgs),
    Restore(disaster_recovery::RestoreArgs),
    Drill(disaster_recovery::DrillArgs),
    Assess(disaster_recovery::AssessArgs),
    Incidents(disaster_recovery::IncidentsArgs),
    Rehearse(deployment_procedures::releases::RehearseArgs),
    Releases(deployment_procedures::releases::ReleasesArgs),
    Rollback(rollback_procedures::application::RollbackArgs),
    Recover(rollback_procedures::RecoverArgs),
    Lock(rollback_procedures::LockArgs),
    Down(rollback_procedures::DownArgs),
    Maintenance(rollback_procedures::maintenance::MaintenanceArgs),
    Node(deployment_procedures::nodes::NodeArgs),
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
