//! Pre-Deployment Checklist: the runbook's 17 items, grouped and named as
//! it names them (Code Quality, Database, Configuration, Infrastructure
//! Checks), each a check with its evidence, run concurrently. Items that
//! need a person are MANUAL unless attested.

mod capacity;
mod code_quality;
mod configuration;
mod database;
mod infrastructure;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::adapters::output::Output;
use crate::config::{config_error, Env, Ops};
use crate::core::check::{self, Check, Probe, State};
use crate::core::session;

/// Run the Pre-Deployment Checklist.
///
/// Runbook: Pre-Deployment Checklist.
///
/// The runbook's 17 items, each with its evidence: Code Quality Checks (the
/// test, lint and audit commands from ops.toml `[environments.ENV.preflight]`;
/// code review and documentation are MANUAL unless attested), Database Checks
/// (the migration lint, migrations already applied on staging, a verified
/// backup younger than `backup_max_age_hours`, a rollback plan), Configuration
/// Checks (required variables set and not placeholders, env file untracked
/// and 0600, the database connection, API keys), Infrastructure Checks (images
/// built and tested, container health checks, the network, memory and CPU
/// limits). Exit 1 on any FAIL; WARN and MANUAL items are listed.
#[derive(clap::Args, Debug)]
pub struct PreflightArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Attest a manual item: `review=URL` (code review completed and
    /// approved), `docs=URL` (documentation updated). Repeatable.
    #[arg(long, value_name = "ITEM=URL")]
    pub attest: Vec<String>,
}

/// What a person vouches for: `review` and `docs`, each with a link.
#[derive(Clone, Debug, Default)]
pub struct Attestations(pub BTreeMap<String, String>);

impl Attestations {
    /// `review=URL` pairs; an unknown item or a missing link is a usage error.
    pub fn parse(items: &[String]) -> Result<Attestations> {
        let mut map = BTreeMap::new();
        for item in items {
            let Some((k, v)) = item.split_once('=') else {
                return Err(config_error(format!(
                    "--attest {item}: expected ITEM=URL, e.g. --attest review=https://github.com/ORG/REPO/pull/42"
                )));
            };
            if !matches!(k, "review" | "docs") || v.trim().is_empty() {
                return Err(config_error(format!(
                    "--attest {item}: ITEM is `review` or `docs`, and the link must not be empty"
                )));
            }
            map.insert(k.to_string(), v.trim().to_string());
        }
        Ok(Attestations(map))
    }
}

pub fn preflight(ops: &Ops, out: &Output, args: &PreflightArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let attest = Attestations::parse(&args.attest)?;
    let (checks, report) = checklist(ops, &env, out, &attest, false);
    report.emit(out);
    refuse_on_fail(&env, &checks)
}

/// `deploy`'s first step on a protected environment (runbook: the
/// Pre-Deployment Checklist comes before Production Deployment): the
/// checklist runs and is printed, and a FAIL refuses the deploy before
/// anything changes. With `skip` (the operator's reason) it still runs and
/// is printed, so that the evidence is in the log, but does not refuse.
/// Returns what the release journal records: `passed: …`, or
/// `skipped: REASON; failed: …`.
pub fn gate(
    ops: &Ops,
    env: &Env,
    out: &Output,
    attest: &[String],
    skip: Option<&str>,
) -> Result<String> {
    let attest = Attestations::parse(attest)?;
    if skip.is_some_and(|r| r.trim().is_empty()) {
        return Err(config_error(
            "--skip-preflight needs a reason (it is written to the release journal), e.g. --skip-preflight \"first release: nothing runs yet\"",
        ));
    }
    let (checks, report) = checklist(ops, env, out, &attest, true);
    report.emit_part(out);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.state == State::Fail)
        .map(|c| c.name.as_str())
        .collect();
    if let Some(reason) = skip {
        let reason = reason.trim();
        out.warn(&format!(
            "the pre-deployment checklist of `{}` is skipped ({} item(s) failed): {reason} (recorded in the release journal)",
            env.name,
            failed.len()
        ));
        return Ok(if failed.is_empty() {
            format!("skipped: {reason}")
        } else {
            format!("skipped: {reason}; failed: {}", failed.join(", "))
        });
    }
    refuse_on_fail(env, &checks).map_err(|e| {
        e.context(format!(
            "the deploy of `{0}` is refused: nothing was changed. Fix the items, or deploy with \
             --skip-preflight \"REASON\" (the reason is written to the release journal)",
            env.name
        ))
    })?;
    let n = check::counts(&checks);
    Ok(format!(
        "passed: {} pass, {} warn, {} manual, {} skip",
        n["pass"], n["warn"], n["manual"], n["skip"]
    ))
}

/// The checklist run and rendered (`preflight`, and a deploy's gate).
fn checklist(
    ops: &Ops,
    env: &Env,
    out: &Output,
    attest: &Attestations,
    deploying: bool,
) -> (Vec<Check>, crate::core::report::Report) {
    let start = Instant::now();
    let checks = run_preflight(ops, env, attest, deploying);
    let report = check::checklist(
        out,
        "preflight",
        &format!("Pre-deployment checklist for `{}`", env.name),
        serde_json::json!({ "environment": env.name }),
        &checks,
        start.elapsed(),
    );
    (checks, report)
}

/// Every item of the checklist for `env`, concurrently, in the runbook's
/// order. `deploying`: a deploy runs it as its first step, and takes and
/// verifies a backup itself before any change (which counts for the
/// backup and rollback items). It never returns an error itself: a problem
/// is a FAIL item with its evidence.
pub fn run_preflight(ops: &Ops, env: &Env, attest: &Attestations, deploying: bool) -> Vec<Check> {
    let ctx = Ctx {
        ops,
        env,
        attest,
        deploying,
    };
    let ctx = &ctx;
    let probes: Vec<Probe<'_>> = vec![
        Box::new(move || code_quality::tests(ctx)),
        Box::new(move || vec![code_quality::review(ctx)]),
        Box::new(move || code_quality::lint(ctx)),
        Box::new(move || code_quality::audit(ctx)),
        Box::new(move || vec![code_quality::docs(ctx)]),
        Box::new(move || database::checks(ctx)),
        Box::new(move || configuration::checks(ctx)),
        Box::new(move || infrastructure::checks(ctx)),
        Box::new(move || infrastructure::swarm_checks(ctx)),
        Box::new(move || capacity::room_check(ctx).into_iter().collect()),
    ];
    check::run(&probes)
}

/// An error naming the FAIL items when there is one; Ok otherwise (WARN,
/// MANUAL and SKIP do not block).
pub fn refuse_on_fail(env: &Env, checks: &[Check]) -> Result<()> {
    let failed: Vec<&Check> = checks.iter().filter(|c| c.state == State::Fail).collect();
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "{} of {} pre-deployment items failed for `{}`:{}\nFix them and run `cargo xtask preflight {}` again",
        failed.len(),
        checks.len(),
        env.name,
        check::failures(checks),
        env.name
    )
}

/// What every item may look at.
pub(crate) struct Ctx<'a> {
    pub ops: &'a Ops,
    pub env: &'a Env,
    pub attest: &'a Attestations,
    /// Run by `deploy`, which backs up and verifies before any change.
    pub deploying: bool,
}

pub(crate) const CODE: &str = "Code Quality Checks";
pub(crate) const DATABASE: &str = "Database Checks";
pub(crate) const CONFIGURATION: &str = "Configuration Checks";
pub(crate) const INFRASTRUCTURE: &str = "Infrastructure Checks";

/// Whether a value is a placeholder rather than a real setting.
pub(crate) fn placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    let bare = v.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    v.is_empty()
        || (v.starts_with('<') && v.ends_with('>'))
        || (v.starts_with("${") && v.ends_with('}'))
        || v.starts_with("your")
        || v.contains("changeme")
        || v.contains("change_me")
        || v.contains("change-me")
        || v.contains("replace_me")
        || v.contains("replace-me")
        || v.contains("placeholder")
        || matches!(
            bare,
            "todo"
                | "tbd"
                | "fixme"
                | "xxx"
                | "secret"
                | "password"
                | "example"
                | "test"
                | "none"
                | "null"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        for p in [
            "",
            " ",
            "changeme",
            "CHANGEME",
            "TODO",
            "<your key>",
            "your-api-key",
            "xxx",
            "${X}",
            "password",
        ] {
            assert!(placeholder(p), "{p:?}");
        }
        for v in ["4f9c2a", "s3cr3t-Long-Value", "postgres://u:p@h/db"] {
            assert!(!placeholder(v), "{v:?}");
        }
    }

    #[test]
    fn attest_parses() {
        let a = Attestations::parse(&["review=https://x/pull/1".into()]).unwrap();
        assert_eq!(a.0["review"], "https://x/pull/1");
        assert!(Attestations::parse(&["review".into()]).is_err());
        assert!(Attestations::parse(&["ship=it".into()]).is_err());
    }
}
