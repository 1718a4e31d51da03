//! Pre-Deployment Checklist, Code Quality Checks: the test, lint and audit
//! commands named in ops.toml, run for real; code review and documentation
//! need a person (MANUAL) unless attested or read from the CI context.

use std::time::{Duration, Instant};

use super::{Ctx, CODE};
use crate::adapters::process::Command;
use crate::core::check::Check;

pub(super) fn tests(ctx: &Ctx) -> Vec<Check> {
    vec![command_item(
        ctx,
        CODE,
        "All tests passing (unit, integration, E2E)",
        "tests",
        ctx.env.settings.preflight.tests.as_deref(),
    )]
}

pub(super) fn lint(ctx: &Ctx) -> Vec<Check> {
    vec![command_item(
        ctx,
        CODE,
        "Linting and type checking passed",
        "lint",
        ctx.env.settings.preflight.lint.as_deref(),
    )]
}

pub(super) fn audit(ctx: &Ctx) -> Vec<Check> {
    vec![command_item(
        ctx,
        CODE,
        "No security vulnerabilities in dependencies",
        "audit",
        ctx.env.settings.preflight.audit.as_deref(),
    )]
}

/// Run `argv` from ops.toml's folder; exit 0 passes. The last lines of its
/// output are the evidence.
pub(super) fn command_item(
    ctx: &Ctx,
    kind: &'static str,
    name: &str,
    key: &str,
    argv: Option<&[String]>,
) -> Check {
    let env = ctx.env;
    let Some(argv) = argv else {
        return Check::manual(
            name.into(),
            kind,
            format!("preflight.{key}"),
            "no command configured: check it by hand".into(),
            format!(
                "set `{key} = [\"program\", \"args\"...]` in [environments.{}.preflight] of ops.toml",
                env.name
            ),
        );
    };
    let start = Instant::now();
    let cmd = Command::new(&argv[0], &argv[1..]).dir(&env.dir);
    let shown = cmd.display();
    let timeout = Duration::from_secs(env.settings.preflight.command_timeout_secs);
    match cmd.capture(timeout) {
        Err(e) => Check::fail(
            name.into(),
            kind,
            shown,
            "the command to run",
            format!("{e:#}"),
            format!("install `{}` or fix preflight.{key} in ops.toml", argv[0]),
            start.elapsed(),
        ),
        Ok(c) if c.timed_out => Check::fail(
            name.into(),
            kind,
            shown,
            "exit 0",
            format!("still running after {} s (killed)", timeout.as_secs()),
            "raise preflight.command_timeout_secs, or make the command faster".into(),
            start.elapsed(),
        ),
        Ok(c) if c.code == Some(0) => Check::pass(
            name.into(),
            kind,
            shown.clone(),
            format!(
                "`{shown}` exit 0 in {:.1} s{}",
                start.elapsed().as_secs_f64(),
                tail(&c.output, 1)
            ),
            start.elapsed(),
        ),
        Ok(c) => Check::fail(
            name.into(),
            kind,
            shown.clone(),
            "exit 0",
            format!(
                "exit {}{}",
                c.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "by a signal".into()),
                tail(&c.output, 3)
            ),
            format!("run `{shown}` (from {}) and fix what it reports", env.dir),
            start.elapsed(),
        ),
    }
}

/// The last `n` non-empty lines of a command's output, as `: a / b`.
fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let cut: Vec<String> = lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(200).collect())
        .collect();
    format!(": {}", cut.join(" / "))
}

/// PASS when a person attested `item` (`--attest item=URL`).
fn attested(ctx: &Ctx, item: &str, name: &str) -> Option<Check> {
    let url = ctx.attest.0.get(item)?;
    Some(Check::pass(
        name.into(),
        CODE,
        url.clone(),
        format!("attested by {}: {url}", who()),
        Duration::ZERO,
    ))
}

/// "Code review completed and approved": attested (`--attest review=URL`),
/// or an approving review in the GitHub Actions event; else MANUAL.
pub(super) fn review(ctx: &Ctx) -> Check {
    let name = "Code review completed and approved";
    if let Some(c) = attested(ctx, "review", name) {
        return c;
    }
    if let Some(evidence) = approved_in_ci() {
        return Check::pass(name.into(), CODE, "CI".into(), evidence, Duration::ZERO);
    }
    Check::manual(
        name.into(),
        CODE,
        "the change's pull request".into(),
        "no approval recorded".into(),
        format!(
            "check the pull request is approved, then run with `--attest review=URL` (`cargo xtask preflight {} --attest review=https://...`)",
            ctx.env.name
        ),
    )
}

/// "Documentation updated": MANUAL unless attested.
pub(super) fn docs(ctx: &Ctx) -> Check {
    let name = "Documentation updated";
    if let Some(c) = attested(ctx, "docs", name) {
        return c;
    }
    Check::manual(
        name.into(),
        CODE,
        "docs".into(),
        "no automatic check yet: read the change's docs".into(),
        "then run with `--attest docs=URL` (the commit or page updated)".into(),
    )
}

fn who() -> String {
    std::env::var("GITHUB_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "the operator".into())
}

/// Under GitHub Actions: a `pull_request_review` event whose review is
/// approved, from the event payload (`GITHUB_EVENT_PATH`).
fn approved_in_ci() -> Option<String> {
    if std::env::var("GITHUB_ACTIONS").as_deref() != Ok("true") {
        return None;
    }
    let path = std::env::var("GITHUB_EVENT_PATH").ok()?;
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let review = event.get("review")?;
    let state = review.get("state")?.as_str()?;
    if !state.eq_ignore_ascii_case("approved") {
        return None;
    }
    let by = review
        .pointer("/user/login")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let url = review
        .get("html_url")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    Some(format!("approved by {by} (GitHub review {url})"))
}
