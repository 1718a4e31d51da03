//! mre-ops: the MRE deployment runbook as `cargo xtask` commands. Each runbook
//! section is one module (a file or a folder) named after it; `adapters/` holds the thin edges
//! (Docker, Compose, PostgreSQL, HTTP, processes, output).
//!
//! Exit codes: 0 success; 1 a check or a step failed; 2 usage or
//! configuration error.

use std::process::ExitCode;

use clap::Parser;

use xtask::adapters::output::{redact, Output};
use xtask::cli::{Cli, Cmd};
use xtask::config::{ConfigError, Ops};
use xtask::core::interrupt::Interrupted;
use xtask::{
    adapters, contributing, core, database_migrations, demo, deployment_architecture,
    deployment_procedures, disaster_recovery, health_checks, monitoring_and_alerting,
    post_deployment_verification, pre_deployment_checklist, rollback_procedures, runbook,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json, cli.quiet, cli.verbose);
    let result = run(&cli, &out);
    // The SSH connections of `ssh` environments end with the command.
    core::session::close_tunnels();
    match result {
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
        Cmd::Deploy(args) => deployment_procedures::deploy(&ops, out, args),
        Cmd::Migrate(args) => database_migrations::migrate(&ops, out, args),
        Cmd::Backup(args) => disaster_recovery::backup(&ops, out, args),
        Cmd::Restore(args) => disaster_recovery::restore(&ops, out, args),
        Cmd::Drill(args) => disaster_recovery::drill(&ops, out, args),
        Cmd::Assess(args) => disaster_recovery::assess(&ops, out, args),
        Cmd::Incidents(args) => disaster_recovery::incidents(&ops, out, args),
        Cmd::Rehearse(args) => deployment_procedures::releases::rehearse(&ops, out, args),
        Cmd::Releases(args) => deployment_procedures::releases::releases(&ops, out, args),
        Cmd::Rollback(args) => rollback_procedures::application::rollback(&ops, out, args),
        Cmd::Recover(args) => rollback_procedures::recover(&ops, out, args),
        Cmd::Lock(args) => rollback_procedures::lock_cmd(&ops, out, args),
        Cmd::Down(args) => rollback_procedures::down(&ops, out, args),
        Cmd::Maintenance(args) => rollback_procedures::maintenance::maintenance(&ops, out, args),
        Cmd::Node(args) => deployment_procedures::nodes::node(&ops, out, args),
        Cmd::Health(args) => health_checks::health(&ops, out, args),
        Cmd::Status(args) => post_deployment_verification::status(&ops, out, args),
        Cmd::Logs(args) => post_deployment_verification::logs(&ops, out, args),
        Cmd::Smoke(args) => post_deployment_verification::smoke_tests::smoke(&ops, out, args),
        Cmd::Monitor(args) => monitoring_and_alerting::monitor(&ops, out, args),
        Cmd::Runbook(args) => {
            use clap::CommandFactory;
            runbook::runbook(&ops, out, args, Cli::command())
        }
        Cmd::Demo(_) | Cmd::Completions(_) | Cmd::Test(_) => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        xtask::cli::Cli::command().debug_assert();
    }
}
