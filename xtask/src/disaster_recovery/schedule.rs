//! Disaster Recovery, Backup Strategy: "Automated backup schedule". `backup
//! schedule install|uninstall|show ENV` writes and enables a systemd timer
//! (or a cron entry) that runs this checkout's `cargo xtask` daily (backup
//! create, verify, prune) and monthly (drill), at the times of the GitHub
//! `backup.yml` workflow, which stays for teams that prefer it. Every file
//! it writes carries a marker line; uninstall removes exactly those.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::{config_error, Env, Ops};
use crate::core::files::{writable, write_atomic};
use crate::core::report::Report;
use crate::core::steps::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleAction {
    Install,
    Uninstall,
    Show,
}

/// Where the schedule lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// systemd when it is PID 1 (or ROOT is not /) and ROOT/etc/systemd/system
    /// is writable, else cron when ROOT/etc/cron.d is, else print.
    Auto,
    /// Units in ROOT/etc/systemd/system, the timers enabled (and started
    /// when ROOT is /).
    Systemd,
    /// One file in ROOT/etc/cron.d.
    Cron,
    /// Write nothing: print what to add.
    Print,
}

/// The daily run: the times of .github/workflows/backup.yml.
const DAILY: (&str, &str) = ("*-*-* 03:17:00 UTC", "17 3 * * *");
const MONTHLY: (&str, &str) = ("*-*-01 04:47:00 UTC", "47 4 1 * *");
const MARKER: &str = "# Written by `cargo xtask backup schedule install";

/// One file the schedule consists of.
struct File {
    path: Utf8PathBuf,
    text: String,
}

struct Schedule {
    init: Init,
    root: Utf8PathBuf,
    files: Vec<File>,
    /// The timers to enable (systemd).
    timers: Vec<String>,
}

fn words(s: &str) -> Result<&str> {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '%' | '"' | '\'' | '\\' | '$' | ';'))
    {
        bail!(config_error(format!(
            "`{s}` cannot go in a systemd unit or a crontab line as it is (spaces, %, quotes, \\, $ or ;): \
             move the checkout (or cargo) to a plain path, or add the schedule by hand"
        )));
    }
    Ok(s)
}

fn plan_files(ops: &Ops, env: &Env, root: &Utf8Path, init: Init) -> Result<Schedule> {
    let name = words(&env.name)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(config_error(format!(
            "environment name `{name}` cannot name a unit or cron file: letters, digits, - and _ only"
        )));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo = if cargo.contains('/') {
        cargo
    } else {
        Command::new("sh", ["-c", "command -v cargo"])
            .read()
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| s.starts_with('/'))
            .context("finding cargo on PATH for the schedule (the unit needs its full path)")?
    };
    let (cargo, dir, config) = (
        words(&cargo)?,
        words(ops.dir.as_str())?,
        words(ops.path.as_str())?,
    );
    // The account this runs as: the units run `cargo` with its toolchain.
    let user = Command::new("id", ["-un"])
        .read()
        .map(|u| u.trim().to_string())
        .context("asking `id -un` who runs this (the units run as that user)")?;
    let user = words(&user)?;
    let bin_dir = Utf8Path::new(cargo)
        .parent()
        .map(|p| p.as_str())
        .unwrap_or("/usr/bin");
    let head = format!(
        "{MARKER} {name}` (mre-ops); `cargo xtask backup schedule uninstall {name}` removes it.\n"
    );
    let daily = [
        format!("backup create {name}"),
        format!("backup verify {name} latest"),
        format!("backup prune {name}"),
    ];
    let monthly = [format!("drill {name}")];
    let init = match init {
        Init::Auto => {
            let systemd = if root == "/" {
                std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
            } else {
                true
            };
            if systemd && writable(&root.join("etc/systemd/system")) {
                Init::Systemd
            } else if writable(&root.join("etc/cron.d")) {
                Init::Cron
            } else {
                Init::Print
            }
        }
        i => i,
    };
    let mut files = Vec::new();
    let mut timers = Vec::new();
    match init {
        Init::Systemd | Init::Auto => {
            let units = root.join("etc/systemd/system");
            for (kind, what, when, cmds) in [
                (
                    "backup",
                    "daily backup (create, verify, prune)",
                    DAILY.0,
                    &daily[..],
                ),
                ("drill", "monthly recovery drill", MONTHLY.0, &monthly[..]),
            ] {
                let unit = format!("mre-ops-{kind}-{name}");
                let exec: String = cmds
                    .iter()
                    .map(|c| format!("ExecStart={cargo} xtask --config {config} {c}\n"))
                    .collect();
                files.push(File {
                    path: units.join(format!("{unit}.service")),
                    text: format!(
                        "{head}[Unit]\nDescription=mre-ops {what} of `{name}`\n\
                         Wants=network-online.target\nAfter=network-online.target docker.service\n\n\
                         [Service]\nType=oneshot\nUser={user}\nWorkingDirectory={dir}\n\
                         Environment=PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n{exec}"
                    ),
                });
                files.push(File {
                    path: units.join(format!("{unit}.timer")),
                    text: format!(
                        "{head}[Unit]\nDescription=mre-ops {what} of `{name}`\n\n\
                         [Timer]\nOnCalendar={when}\nPersistent=true\nRandomizedDelaySec=5min\n\n\
                         [Install]\nWantedBy=timers.target\n"
                    ),
                });
                timers.push(format!("{unit}.timer"));
            }
        }
        Init::Cron | Init::Print => {
            let line = |when: &str, cmds: &[String]| {
                let run: Vec<String> = cmds
                    .iter()
                    .map(|c| format!("{cargo} xtask --config {config} {c}"))
                    .collect();
                format!("{when} {user} cd {dir} && {}\n", run.join(" && "))
            };
            files.push(File {
                path: root.join(format!("etc/cron.d/mre-ops-backup-{name}")),
                text: format!(
                    "{head}PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin\n{}{}",
                    line(DAILY.1, &daily),
                    line(MONTHLY.1, &monthly)
                ),
            });
        }
    }
    Ok(Schedule {
        init,
        root: root.to_owned(),
        files,
        timers,
    })
}

fn systemctl(root: &Utf8Path, args: &[&str]) -> Command {
    let mut a: Vec<String> = Vec::new();
    if root != "/" {
        a.push(format!("--root={root}"));
    }
    a.extend(args.iter().map(|s| s.to_string()));
    Command::new("systemctl", a)
}

pub(super) fn schedule(
    ops: &Ops,
    env: &Env,
    out: &Output,
    action: ScheduleAction,
    root: &Utf8Path,
    init: Init,
    dry_run: bool,
) -> Result<()> {
    let s = plan_files(ops, env, root, init)?;
    let live = root == "/";
    let installed: Vec<&File> = s.files.iter().filter(|f| ours(&f.path)).collect();
    let mut json = serde_json::json!({
        "environment": env.name, "init": s.init, "root": s.root.as_str(),
        "files": s.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        "installed": installed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        "timers": s.timers, "dry_run": dry_run,
    });
    match action {
        ScheduleAction::Show => {
            let mut r = Report::new(json);
            r.line(format!(
                "Schedule of `{}` ({}): daily backup create, verify and prune at {} (cron `{}`), \
                 monthly drill at {} (`{}`); installed: {}",
                env.name,
                format!("{:?}", s.init).to_lowercase(),
                DAILY.0,
                DAILY.1,
                MONTHLY.0,
                MONTHLY.1,
                if installed.is_empty() { "no" } else { "yes" }
            ));
            for f in &s.files {
                r.line(format!("--- {}", f.path));
                r.line(f.text.trim_end().to_string());
            }
            r.emit(out);
            Ok(())
        }
        ScheduleAction::Install if s.init == Init::Print => {
            let mut r = Report::new(json);
            r.line(format!(
                "Neither {} nor {} is writable here (run as root, or pass --init): add this yourself \
                 (e.g. `crontab -e`, without the user column), or use the GitHub backup.yml workflow.",
                s.root.join("etc/systemd/system"),
                s.root.join("etc/cron.d")
            ));
            for f in &s.files {
                r.line(f.text.trim_end().to_string());
            }
            r.emit(out);
            Ok(())
        }
        ScheduleAction::Install => {
            let mut plan: Plan = Plan::new(format!("backup schedule install {}", env.name));
            for f in &s.files {
                let (path, text) = (&f.path, &f.text);
                plan.action(
                    format!("Write {}", path.file_name().unwrap_or_default()),
                    format!("write {path} (0644)"),
                    move || {
                        if path.exists() && !ours(path) {
                            bail!(
                                "{path} exists and was not written by mre-ops: move it away first"
                            );
                        }
                        write_atomic(path, text.as_bytes(), 0o644)
                            .with_context(|| format!("writing {path}"))
                    },
                )
                .undo(format!("rm {path}"), move |_| remove(path));
            }
            if s.init == Init::Systemd {
                let mut enable = vec!["enable"];
                if live {
                    plan.command("Reload systemd", systemctl(root, &["daemon-reload"]), out);
                    enable.push("--now");
                }
                enable.extend(s.timers.iter().map(String::as_str));
                plan.command("Enable the timers", systemctl(root, &enable), out);
                let mut disable = vec!["disable".to_string()];
                if live {
                    disable.push("--now".into());
                }
                disable.extend(s.timers.iter().cloned());
                let undo = systemctl(
                    root,
                    &disable.iter().map(String::as_str).collect::<Vec<_>>(),
                );
                plan.undo(format!("$ {}", undo.display()), move |_| {
                    undo.read().map(drop)
                });
            }
            plan.execute(out, dry_run)?;
            if !dry_run {
                json["installed"] = json["files"].clone();
                Report::new(json)
                    .line(format!(
                        "Scheduled `{}` ({}): daily backup at {}, monthly drill at {}. \
                         `cargo xtask backup schedule uninstall {}` removes it{}.",
                        env.name,
                        format!("{:?}", s.init).to_lowercase(),
                        DAILY.0,
                        MONTHLY.0,
                        env.name,
                        if live && s.init == Init::Systemd {
                            format!(
                                "; `systemctl list-timers 'mre-ops-*-{}*'` shows the next runs",
                                env.name
                            )
                        } else {
                            String::new()
                        }
                    ))
                    .emit(out);
            }
            Ok(())
        }
        ScheduleAction::Uninstall => {
            let mut plan: Plan = Plan::new(format!("backup schedule uninstall {}", env.name));
            if s.init == Init::Systemd && !installed.is_empty() {
                let mut disable = vec!["disable"];
                if live {
                    disable.push("--now");
                }
                disable.extend(s.timers.iter().map(String::as_str));
                plan.command("Disable the timers", systemctl(root, &disable), out);
            }
            for f in &installed {
                let path = &f.path;
                plan.action(
                    format!("Remove {}", path.file_name().unwrap_or_default()),
                    format!("rm {path}"),
                    move || remove(path),
                );
            }
            if s.init == Init::Systemd && live && !installed.is_empty() {
                plan.command("Reload systemd", systemctl(root, &["daemon-reload"]), out);
            }
            let left: Vec<&File> = s
                .files
                .iter()
                .filter(|f| f.path.exists() && !ours(&f.path))
                .collect();
            plan.execute(out, dry_run)?;
            if !dry_run {
                let mut r = Report::new(json);
                r.line(if installed.is_empty() {
                    format!(
                        "No schedule of `{}` was installed ({}).",
                        env.name,
                        format!("{:?}", s.init).to_lowercase()
                    )
                } else {
                    format!(
                        "Removed the schedule of `{}`: {} file(s).",
                        env.name,
                        installed.len()
                    )
                });
                for f in left {
                    r.line(format!("Left {}: it has no mre-ops marker line.", f.path));
                }
                r.emit(out);
            }
            Ok(())
        }
    }
}

/// A file this command wrote: its first line is the marker.
fn ours(path: &Utf8Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARKER))
}

fn remove(path: &Utf8Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {path}"))
        }
        _ => Ok(()),
    }
}
