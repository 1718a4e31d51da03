//! One check type, shared by health (and preflight, smoke and monitor):
//! a name, a state (pass, fail, warn, manual, skip) and its evidence:
//! what was expected, what was found, what to try next. Probes run
//! concurrently (`run`) or are polled until they pass (`poll`), and a list
//! of checks renders as one `Report`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::Report;
use crate::adapters::output::{Output, Tone};

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Pass,
    Fail,
    Warn,
    // MANUAL and SKIP: the pre-deployment checklist's items that need a person
    // or do not apply.
    Manual,
    Skip,
}

impl State {
    fn mark(self, out: &Output) -> String {
        match self {
            State::Pass => out.paint(Tone::Good, "✓"),
            State::Fail => out.paint(Tone::Bad, "✗"),
            State::Warn => out.paint(Tone::Warn, "!"),
            State::Manual => out.paint(Tone::Warn, "?"),
            State::Skip => out.paint(Tone::Dim, "-"),
        }
    }

    fn emoji(self) -> &'static str {
        match self {
            State::Pass => "✅",
            State::Fail => "❌",
            State::Warn => "⚠️",
            State::Manual => "📝",
            State::Skip => "⏭️",
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Check {
    /// What was checked: `mre-app /api/health`, `container mre-app`, `database`.
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub state: State,
    /// Whether it counts as passing (every state but FAIL).
    pub ok: bool,
    /// The evidence, in one line.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub got: Option<String>,
    /// The next thing to try.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub millis: u64,
}

impl Check {
    pub fn pass(
        name: String,
        kind: &'static str,
        target: String,
        detail: String,
        took: Duration,
    ) -> Check {
        Check {
            name,
            kind,
            target,
            state: State::Pass,
            ok: true,
            detail,
            expected: None,
            got: None,
            next: None,
            millis: took.as_millis() as u64,
        }
    }

    /// Passing, with something worth a look.
    pub fn warn(
        name: String,
        kind: &'static str,
        target: String,
        detail: String,
        took: Duration,
    ) -> Check {
        Check {
            state: State::Warn,
            ..Check::pass(name, kind, target, detail, took)
        }
    }

    /// Needs a person: `detail` says what to look at, `next` how to attest it.
    pub fn manual(
        name: String,
        kind: &'static str,
        target: String,
        detail: String,
        next: String,
    ) -> Check {
        Check {
            state: State::Manual,
            next: Some(next),
            ..Check::pass(name, kind, target, detail, Duration::ZERO)
        }
    }

    /// Does not apply here; `detail` says why.
    pub fn skip(name: String, kind: &'static str, target: String, detail: String) -> Check {
        Check {
            state: State::Skip,
            ..Check::pass(name, kind, target, detail, Duration::ZERO)
        }
    }

    /// A failure: `detail` reads "expected …, got …".
    pub fn fail(
        name: String,
        kind: &'static str,
        target: String,
        expected: &str,
        got: String,
        next: String,
        took: Duration,
    ) -> Check {
        Check {
            name,
            kind,
            target,
            state: State::Fail,
            ok: false,
            detail: format!("expected {expected}, got {got}"),
            expected: Some(expected.to_string()),
            got: Some(got),
            next: Some(next),
            millis: took.as_millis() as u64,
        }
    }
}

/// A probe yields one or more checks (one Docker call answers for every
/// container).
pub type Probe<'a> = Box<dyn Fn() -> Vec<Check> + Sync + 'a>;

/// Run every probe at once; the checks in the probes' order.
pub fn run(probes: &[Probe]) -> Vec<Check> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes.iter().map(|p| s.spawn(p)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a check thread panicked"))
            .collect()
    })
}

/// Run the probes until every check passes, `limit` runs out or the operator
/// interrupts; the last round's checks. Progress on a terminal.
pub fn poll(probes: &[Probe], out: &Output, what: &str, limit: Duration) -> Vec<Check> {
    let start = Instant::now();
    loop {
        let round = Instant::now();
        let checks = run(probes);
        let passing = checks.iter().filter(|c| c.ok).count();
        if passing == checks.len()
            || start.elapsed() >= limit
            || super::interrupt::pending().is_some()
        {
            out.progress_done();
            return checks;
        }
        let waiting: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        out.progress(&format!(
            "waiting for {what} ({passing}/{} passing, {:.0}s of {}s): {}",
            checks.len(),
            start.elapsed().as_secs_f64(),
            limit.as_secs(),
            waiting.join(", ")
        ));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
}

/// The failing checks, for an error message: name, evidence, next step.
pub fn failures(checks: &[Check]) -> String {
    let mut msg = String::new();
    for c in checks.iter().filter(|c| !c.ok) {
        msg.push_str(&format!(
            "\n  - {}: {}\n    next: {}",
            c.name,
            c.detail,
            c.next.as_deref().unwrap_or("-")
        ));
    }
    msg
}

/// The checks as a report: `what` names the kind ("health") in
/// annotations, `title` heads the human text and the summary;
/// `json` gets `ok`, `passed`, `failed`, `millis` and `checks` added.
pub fn report(
    out: &Output,
    what: &str,
    title: &str,
    mut json: serde_json::Value,
    checks: &[Check],
    took: Duration,
) -> Report {
    let passed = checks.iter().filter(|c| c.ok).count();
    if let Some(map) = json.as_object_mut() {
        map.insert("ok".into(), (passed == checks.len()).into());
        map.insert("passed".into(), passed.into());
        map.insert("failed".into(), (checks.len() - passed).into());
        map.insert("millis".into(), (took.as_millis() as u64).into());
        map.insert(
            "checks".into(),
            serde_json::to_value(checks).expect("checks serialise"),
        );
    }
    let mut r = Report::new(json);
    r.line(format!(
        "{title}: {passed}/{} checks pass ({} ms)",
        checks.len(),
        took.as_millis()
    ));
    let w = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    for c in checks {
        let mark = c.state.mark(out);
        if c.ok {
            r.line(format!("  {mark} {:<w$} {}", c.name, c.detail));
        } else {
            failure_lines(&mut r, out, c, &mark, w, "FAILED");
            r.error(format!("{what} check {} failed: {}", c.name, c.detail));
        }
    }
    let mut md = format!(
        "### {title}: {passed}/{} pass\n\n| check | result | detail |\n|---|---|---|\n",
        checks.len()
    );
    for c in checks {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            c.name,
            c.state.emoji(),
            c.detail.replace('|', "\\|")
        ));
    }
    r.summary(md);
    r
}

/// How many checks are in each state, for titles and JSON.
pub fn counts(checks: &[Check]) -> serde_json::Value {
    let n = |st: State| checks.iter().filter(|c| c.state == st).count();
    serde_json::json!({
        "pass": n(State::Pass),
        "fail": n(State::Fail),
        "warn": n(State::Warn),
        "manual": n(State::Manual),
        "skip": n(State::Skip),
    })
}

/// The checks as a checklist: grouped under their `kind` (in order of first
/// appearance), every state counted in the title, WARN and MANUAL items
/// listed with what to do, and a markdown checklist (`- [x]`) in the GitHub
/// step summary instead of a table.
pub fn checklist(
    out: &Output,
    what: &str,
    title: &str,
    mut json: serde_json::Value,
    checks: &[Check],
    took: Duration,
) -> Report {
    let counts = counts(checks);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if let Some(map) = json.as_object_mut() {
        map.insert("ok".into(), (failed == 0).into());
        map.insert("counts".into(), counts.clone());
        map.insert("millis".into(), (took.as_millis() as u64).into());
        map.insert(
            "checks".into(),
            serde_json::to_value(checks).expect("checks serialise"),
        );
    }
    let tally = ["pass", "fail", "warn", "manual", "skip"]
        .iter()
        .filter(|k| counts[**k].as_u64().unwrap_or(0) > 0)
        .map(|k| format!("{} {}", counts[*k], k.to_uppercase()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = Report::new(json);
    r.line(format!("{title}: {tally} ({} ms)", took.as_millis()));
    let w = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut md = format!("### {title}\n\n{tally}\n");
    let mut group = "";
    for c in checks {
        if c.kind != group {
            group = c.kind;
            r.line(out.paint(Tone::Dim, group));
            md.push_str(&format!("\n**{group}**\n\n"));
        }
        let mark = c.state.mark(out);
        let state = format!("{:?}", c.state).to_uppercase();
        match c.state {
            State::Fail => {
                failure_lines(&mut r, out, c, &mark, w, "FAIL");
                r.error(format!("{what}: {} failed: {}", c.name, c.detail));
            }
            State::Pass => {
                r.line(format!("  {mark} {:<w$} {}", c.name, c.detail));
            }
            _ => {
                r.line(format!("  {mark} {:<w$} {state}: {}", c.name, c.detail));
                if let Some(next) = &c.next {
                    r.line(format!("      next:     {next}"));
                }
            }
        }
        let boxed = if c.state == State::Pass { "x" } else { " " };
        md.push_str(&format!(
            "- [{boxed}] {} {} — {}: {}\n",
            c.state.emoji(),
            c.name,
            state,
            c.detail.replace('\n', " ")
        ));
    }
    let open: Vec<&Check> = checks
        .iter()
        .filter(|c| matches!(c.state, State::Warn | State::Manual))
        .collect();
    if !open.is_empty() {
        r.line(format!(
            "Needs a look ({}): {}",
            open.len(),
            open.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    r.summary(md);
    r
}

/// A failed check in the human report: its name, then what was expected,
/// what was found and the next thing to try.
fn failure_lines(r: &mut Report, out: &Output, c: &Check, mark: &str, w: usize, label: &str) {
    r.line(format!(
        "  {mark} {:<w$} {}",
        c.name,
        out.paint(Tone::Bad, label)
    ));
    r.line(format!(
        "      expected: {}",
        c.expected.as_deref().unwrap_or("-")
    ));
    r.line(format!(
        "      got:      {}",
        c.got.as_deref().unwrap_or("-")
    ));
    r.line(format!(
        "      next:     {}",
        c.next.as_deref().unwrap_or("-")
    ));
}
