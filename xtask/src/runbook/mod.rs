//! Runnable documentation: `cargo xtask runbook` writes docs/RUNBOOK.md from
//! the code, the source runbook's sections in its order, each with the
//! commands that automate it, their steps as the shared step runner holds
//! them (each plan's `--dry-run`, run on a fixture), their options and the
//! ops.toml keys they read. `--check` fails when the file is stale.

mod fixture;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::adapters::output::Output;
use crate::config::{config_error, workspace_root, Ops};

/// Write docs/RUNBOOK.md from the code.
///
/// Write the runbook from the code (runbook: all sections; runnable
/// documentation).
///
/// Writes docs/RUNBOOK.md: the source runbook's sections in its order; for
/// each, the commands that automate it, with their steps in order as the
/// step runner holds them (what `--dry-run` prints, read from a dry run on a
/// private fixture: a copy of ops.toml, placeholder secrets and backup, no
/// Docker), their options, exit codes and the ops.toml keys they read.
/// Sections without a command are listed as such. `--check` changes nothing
/// and exits 1 with a diff when the file is stale.
#[derive(clap::Args, Debug)]
pub struct RunbookArgs {
    /// Compare instead of writing: exit 1 with a diff when the file is stale.
    #[arg(long)]
    pub check: bool,
    /// Where to write (default: docs/RUNBOOK.md in the workspace).
    #[arg(long, value_name = "PATH")]
    pub out: Option<Utf8PathBuf>,
    /// Say what would be written, and whether it differs, without writing.
    #[arg(long, conflicts_with = "check")]
    pub dry_run: bool,
}

/// One command as a section documents it.
struct Entry {
    /// The words after `cargo xtask`, as in the source runbook's section.
    command: &'static [&'static str],
    /// A dry run whose plan is the section's steps (on the fixture).
    dry_run: Option<&'static [&'static str]>,
    /// The ops.toml keys it reads (under `environments.ENV.`).
    keys: &'static str,
}

const fn cmd(command: &'static [&'static str], keys: &'static str) -> Entry {
    Entry {
        command,
        dry_run: None,
        keys,
    }
}

const fn plan(
    command: &'static [&'static str],
    dry_run: &'static [&'static str],
    keys: &'static str,
) -> Entry {
    Entry {
        command,
        dry_run: Some(dry_run),
        keys,
    }
}

/// The source runbook (docs/deployment-runbook.md upstream): its sections
/// and subsections in its order, and the commands for each.
/// A subsection of the source runbook and its commands.
type Subsection = (&'static str, &'static [Entry]);

const SECTIONS: &[(&str, &[Subsection])] = &[
    ("Deployment Architecture", &[
        ("Container Architecture", &[cmd(&["config"], "every key (the resolved environment, secrets masked)"), cmd(&["status"], "services, database, compose")]),
        ("Deployment Environments", &[cmd(&["config"], "environments.*")]),
    ]),
    ("Pre-Deployment Checklist", &[
        ("Code Quality, Database, Configuration and Infrastructure Checks", &[cmd(&["preflight"], "preflight, database, migrations, backups, services, compose, release")]),
    ]),
    ("Deployment Procedures", &[
        ("Development Deployment", &[plan(&["deploy"], &["deploy", "development", "--dry-run"], "compose, services, database, migrations, backups, deploy")]),
        ("Staging Deployment", &[plan(&["deploy"], &["deploy", "staging", "--tag", "VERSION", "--dry-run"], "release, compose, services, database, migrations, smoke")]),
        ("Production Deployment", &[plan(&["deploy"], &["deploy", "production", "--tag", "VERSION", "--dry-run"], "protected, preflight, backups, release, compose, services, database, migrations, smoke"), plan(&["deploy"], &["deploy", "swarm", "--tag", "VERSION", "--dry-run"], "driver, swarm, release, services, database, migrations, smoke (docs/swarm.md)"), plan(&["node", "drain"], &["node", "drain", "swarm", "NODE", "--dry-run"], "driver, swarm (docs/swarm.md)"), plan(&["node", "activate"], &["node", "activate", "swarm", "NODE", "--dry-run"], "driver, swarm")]),
    ]),
    ("Database Migration Procedures", &[
        ("Migration Workflow", &[plan(&["rehearse"], &["rehearse", "production", "--tag", "VERSION", "--dry-run"], "release, backups, migrations.checks, database"), cmd(&["migrate", "new"], "migrations"), cmd(&["migrate", "review"], "migrations"), cmd(&["migrate", "deploy"], "database, migrations, backups, protected"), cmd(&["migrate", "status"], "database, migrations")]),
        ("Migration Best Practices", &[cmd(&["migrate", "review"], "migrations.lint")]),
        ("Migration Rollback", &[cmd(&["migrate", "resolve"], "database, migrations"), cmd(&["restore"], "database, backups")]),
    ]),
    ("Rollback Procedures", &[
        ("Application Rollback", &[cmd(&["rollback"], "release, compose, services, database"), cmd(&["releases"], "release, database"), plan(&["down"], &["down", "development", "--dry-run"], "compose, protected")]),
        ("Database Rollback", &[plan(&["restore"], &["restore", "production", "latest", "--dry-run"], "database, backups, services")]),
    ]),
    ("Health Check Procedures", &[
        ("Application, Container and Database Health Checks", &[cmd(&["health"], "services.*.health, services.*.container, database")]),
    ]),
    ("Post-Deployment Verification", &[
        ("Smoke Tests", &[cmd(&["smoke"], "smoke, services.mre-app, database")]),
        ("Monitoring", &[cmd(&["logs"], "services.*.container"), cmd(&["status"], "services, database")]),
    ]),
    ("Monitoring and Alerting Setup", &[
        ("Recommended Monitoring and Alerting", &[cmd(&["monitor"], "monitor, services, database, backups")]),
    ]),
    ("Disaster Recovery Procedures", &[
        ("Backup Strategy", &[plan(&["backup", "create"], &["backup", "create", "production", "--dry-run"], "database, backups"), plan(&["backup", "verify"], &["backup", "verify", "production", "latest", "--dry-run"], "database, backups"), cmd(&["backup", "prune"], "backups.keep_days, keep_min"), cmd(&["backup", "list"], "backups"), plan(&["backup", "schedule"], &["backup", "schedule", "install", "production", "--init", "systemd", "--dry-run"], "backups (the units run backup create, verify, prune and drill)"), cmd(&["backup", "continuous"], "backups.continuous, database.container"), cmd(&["backup", "base"], "backups, database.container"), cmd(&["backup", "status"], "backups.continuous, max_archive_lag")]),
        ("Recovery Procedures", &[plan(&["assess"], &["assess", "production", "--install-amcheck", "--dry-run"], "database, backups"), plan(&["drill"], &["drill", "production", "--dry-run"], "database, backups"), cmd(&["recover"], "database, compose"), cmd(&["incidents"], "database, backups.dir"), plan(&["maintenance"], &["maintenance", "on", "production", "--dry-run"], "release.proxy")]),
    ]),
    ("Related Documentation", &[]),
];

/// Commands that serve every section, listed after them.
const OTHER: &[Entry] = &[
    cmd(&["lock"], "database (the advisory lock's server)"),
    cmd(&["demo"], "(none: the demo's own files)"),
    cmd(&["completions"], "(none)"),
    cmd(&["runbook"], "ops.toml's path only"),
];

/// `cli` is the command line's definition (`Cli::command()`), passed in so
/// that this section does not import the command line that names it.
pub fn runbook(ops: &Ops, out: &Output, args: &RunbookArgs, cli: clap::Command) -> Result<()> {
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("docs/RUNBOOK.md"));
    let text = generate(ops, cli)?;
    if args.check {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old == text {
            out.line(&format!("{path} is up to date."));
            return Ok(());
        }
        let diff = diff(&old, &text);
        return Err(anyhow::anyhow!(
            "{path} is stale (the code changed; it is generated):\n{diff}\nRun `cargo xtask runbook` and commit the result"
        ));
    }
    if args.dry_run {
        let same = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
        out.line(&format!(
            "Dry run: would write {path} ({} lines, {}). Nothing was changed.",
            text.lines().count(),
            if same {
                "the same as now"
            } else {
                "different from now"
            }
        ));
        return Ok(());
    }
    crate::core::files::write_atomic(&path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {path}"))?;
    out.line(&format!("Wrote {path}."));
    Ok(())
}

fn generate(ops: &Ops, cli: clap::Command) -> Result<String> {
    let fx = fixture::Fixture::new(ops)?;
    let compose = crate::adapters::compose::detect(crate::adapters::compose::Flavor::Auto)
        .map(|v| v.join(" "))
        .unwrap_or_default();
    let mut md = String::from(
        "<!-- Generated by `cargo xtask runbook` from the code: do not edit. \
         `cargo xtask runbook --check` (run by the tests) fails when it is stale. -->\n\n\
         # The MRE deployment runbook, as it runs\n\n\
         Each section of the runbook (`docs/deployment-runbook.md` of the MRE application), in its \
         order, with the `cargo xtask` commands that automate it. **Steps** are the plan each command \
         runs, in order, read from its `--dry-run` on this repository's `ops.toml` (on a target where \
         nothing runs yet: a first release; placeholders in capitals). `undo` is what runs, in \
         reverse, when a later step fails or the command is interrupted.\n\n",
    );
    md.push_str(EXIT_CODES);
    md.push_str("\n## Contents\n\n");
    for (i, (title, _)) in SECTIONS.iter().enumerate() {
        md.push_str(&format!("{}. [{title}](#{})\n", i + 1, anchor(title)));
    }
    // Not built: each command's help then holds its own options only; the
    // global ones are shown once, here.
    let mut cli = cli.term_width(100).max_term_width(100);
    md.push_str("\n## Options of every command\n\n```text\n");
    let globals: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| {
            let long = a.get_long().map(|l| format!("--{l}")).unwrap_or_default();
            let short = a.get_short().map(|c| format!("-{c}, ")).unwrap_or_default();
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            format!("{short}{long}\n    {help}")
        })
        .collect();
    md.push_str(&globals.join("\n"));
    md.push_str("\n```\n");
    let mut seen = std::collections::BTreeSet::new();
    for (title, subsections) in SECTIONS {
        md.push_str(&format!("\n## {title}\n\n"));
        if subsections.is_empty() {
            md.push_str("No command: this section links to other documents.\n");
        }
        for (sub, entries) in subsections.iter() {
            md.push_str(&format!("### {sub}\n\n"));
            for e in entries.iter() {
                entry(&mut md, &mut cli, &fx, &compose, e, &mut seen)?;
            }
        }
    }
    md.push_str("\n## Other commands\n\n");
    for e in OTHER {
        entry(&mut md, &mut cli, &fx, &compose, e, &mut seen)?;
    }
    Ok(md)
}

fn entry(
    md: &mut String,
    cli: &mut clap::Command,
    fx: &fixture::Fixture,
    compose: &str,
    e: &Entry,
    seen: &mut std::collections::BTreeSet<String>,
) -> Result<()> {
    let mut c: &mut clap::Command = cli;
    for word in e.command {
        c = c.find_subcommand_mut(word).ok_or_else(|| {
            config_error(format!("runbook: no command `{}`", e.command.join(" ")))
        })?;
    }
    let name = e.command.join(" ");
    let about = c
        .get_long_about()
        .or(c.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let first = seen.insert(name.clone());
    if first {
        md.push_str(&format!("#### `cargo xtask {name}`\n\n{about}\n\n"));
    } else {
        md.push_str(&format!(
            "#### `cargo xtask {name}`\n\nDescribed above, with its options.\n\n"
        ));
    }
    md.push_str(&format!("Reads from ops.toml: {}.\n\n", e.keys));
    if let Some(args) = e.dry_run {
        let v = fx.dry_run(args)?;
        md.push_str(&format!(
            "Steps of `cargo xtask {}` ({}):\n\n",
            args.join(" "),
            fx.normalise(v["plan"].as_str().unwrap_or(""), compose)
        ));
        for (i, s) in v["steps"].as_array().into_iter().flatten().enumerate() {
            let title = s["title"].as_str().unwrap_or("");
            md.push_str(&format!("{}. **{}**", i + 1, fx.normalise(title, compose)));
            for d in s["does"].as_array().into_iter().flatten() {
                let d = fx.normalise(d.as_str().unwrap_or(""), compose);
                md.push_str(&format!("\n   - {}", code_spans(&d)));
            }
            if let Some(u) = s["undo"].as_str() {
                md.push_str(&format!(
                    "\n   - undo: {}",
                    code_spans(&fx.normalise(u, compose))
                ));
            }
            md.push('\n');
        }
        md.push('\n');
    }
    if !first {
        return Ok(());
    }
    let help = c
        .clone()
        .about(None)
        .long_about(None)
        .bin_name(format!("cargo xtask {name}"))
        .render_long_help()
        .to_string();
    md.push_str("<details><summary>Options</summary>\n\n```text\n");
    md.push_str(help.trim_end());
    md.push_str("\n```\n\n</details>\n\n");
    Ok(())
}

/// A `$ command` line as code (its note in parentheses after it); other
/// text as it is.
fn code_spans(text: &str) -> String {
    let Some(c) = text.strip_prefix("$ ") else {
        return text.replace('\n', "\n     ");
    };
    let (command, note) = match c.split_once("   (") {
        Some((command, note)) => (command, format!(" ({}", note.trim())),
        None => (c, String::new()),
    };
    format!(
        "`{}`{}",
        command.replace('`', "'"),
        note.replace('\n', "\n     ")
    )
}

fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

const EXIT_CODES: &str = "## Exit codes\n\n\
| code | meaning |\n|---|---|\n\
| 0 | success |\n\
| 1 | a check or a step failed; the message says which and what to try next |\n\
| 2 | usage or configuration error (ops.toml, an unknown environment, a missing secret, a refusal before anything ran) |\n\
| 130, 143 | interrupted (SIGINT, SIGTERM): the undo steps ran; `cargo xtask recover ENV` after a kill -9 |\n";

/// A line diff: what `--check` prints (the first 40 changed lines).
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (i < a.len() || j < b.len()) && out.len() < 40 {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        // Resynchronise on the next line both share.
        let next =
            (i..a.len()).find_map(|x| b[j..].iter().position(|l| *l == a[x]).map(|y| (x, j + y)));
        let (x, y) = next.unwrap_or((a.len(), b.len()));
        out.extend(a[i..x].iter().map(|l| format!("-{l}")));
        out.extend(b[j..y].iter().map(|l| format!("+{l}")));
        i = x;
        j = y;
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn diff_shows_changes() {
        let d = super::diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "-b\n+B\n+d");
    }
}
