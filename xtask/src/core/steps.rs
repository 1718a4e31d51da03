//! The one step runner. A plan is a list of named steps, each with what it
//! does in words and, when it changes something, how to undo it. The same
//! value is printed by `--dry-run`, run for real, and documented: there is
//! no second list to drift. When a step fails (or the operator interrupts),
//! the undos of the steps that ran, the failing one included, run in reverse
//! order, and the error names the step, what completed and what was undone.
//!
//! Steps share state through `S` (`&mut S` is passed to each), so a value a
//! step creates (a database name, a backup) is there for the later steps and
//! the undos without `RefCell`s.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::adapters::output::Output;
use crate::adapters::process::Command;

type Action<'a, S> = Box<dyn FnOnce(&mut S) -> Result<()> + 'a>;

struct Step<'a, S> {
    title: String,
    does: Vec<String>,
    run: Action<'a, S>,
    undo: Option<(String, Action<'a, S>)>,
}

/// A step as data: what `--dry-run`, `--json` and the docs show.
#[derive(Serialize, Clone, Debug)]
pub struct StepDoc {
    pub title: String,
    pub does: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
}

pub struct Plan<'a, S = ()> {
    title: String,
    steps: Vec<Step<'a, S>>,
}

impl<'a, S> Plan<'a, S> {
    pub fn new(title: impl Into<String>) -> Self {
        Plan {
            title: title.into(),
            steps: Vec::new(),
        }
    }

    /// A step that runs one command (shown as the operator would type it,
    /// secrets masked).
    pub fn command(
        &mut self,
        title: impl Into<String>,
        cmd: Command,
        out: &'a Output,
    ) -> &mut Self {
        let does = vec![format!("$ {}", cmd.display())];
        self.steps.push(Step {
            title: title.into(),
            does,
            run: Box::new(move |_| cmd.run(out)),
            undo: None,
        });
        self
    }

    /// A step that runs Rust code with the plan's state; `does` says what it
    /// does, in the words `--dry-run` prints.
    pub fn step(
        &mut self,
        title: impl Into<String>,
        does: impl Into<String>,
        f: impl FnOnce(&mut S) -> Result<()> + 'a,
    ) -> &mut Self {
        self.steps.push(Step {
            title: title.into(),
            does: vec![does.into()],
            run: Box::new(f),
            undo: None,
        });
        self
    }

    /// A step that needs no state.
    pub fn action(
        &mut self,
        title: impl Into<String>,
        does: impl Into<String>,
        f: impl FnOnce() -> Result<()> + 'a,
    ) -> &mut Self {
        self.step(title, does, move |_| f())
    }

    /// How to undo the last step. Runs when that step or a later one fails,
    /// or on an interruption; it must cope with its step having done only
    /// part of its work (or none).
    pub fn undo(
        &mut self,
        does: impl Into<String>,
        f: impl FnOnce(&mut S) -> Result<()> + 'a,
    ) -> &mut Self {
        let step = self
            .steps
            .last_mut()
            .expect("undo() follows the step it undoes");
        step.undo = Some((does.into(), Box::new(f)));
        self
    }

    pub fn docs(&self) -> Vec<StepDoc> {
        self.steps
            .iter()
            .map(|s| StepDoc {
                title: s.title.clone(),
                does: s.does.clone(),
                undo: s.undo.as_ref().map(|(d, _)| d.clone()),
            })
            .collect()
    }

    /// Print the plan (the dry run): human lines, or one JSON document.
    pub fn print(&self, out: &Output) {
        let docs = self.docs();
        if out.json {
            out.json_doc(&serde_json::json!({
                "dry_run": true, "plan": self.title, "steps": docs,
            }));
            return;
        }
        out.line(&format!(
            "Dry run: {} ({} steps). Nothing will be changed.",
            self.title,
            docs.len()
        ));
        for (i, d) in docs.iter().enumerate() {
            out.line(&format!("  {}. {}", i + 1, d.title));
            for s in &d.does {
                out.line(&format!("       {s}"));
            }
            if let Some(u) = &d.undo {
                out.line(&format!("       on failure: {u}"));
            }
        }
    }

    /// Print (dry run) or run the plan with `state`.
    pub fn execute_with(self, out: &Output, dry_run: bool, state: &mut S) -> Result<()> {
        if dry_run {
            self.print(out);
            return Ok(());
        }
        self.execute_timed(out, state).0
    }

    /// Run the plan; also how long each step that ran took (for journals
    /// and reports).
    pub fn execute_timed(self, out: &Output, state: &mut S) -> (Result<()>, Vec<Timing>) {
        let total = self.steps.len();
        let _armed = crate::core::interrupt::arm();
        let mut undos: Vec<(String, String, Action<'a, S>)> = Vec::new();
        let mut timings = Vec::new();
        for (i, step) in self.steps.into_iter().enumerate() {
            let title = step.title;
            let start = std::time::Instant::now();
            let result = {
                let _section = out.section(&format!("[{}/{total}] {title}", i + 1));
                crate::core::interrupt::check().and_then(|()| (step.run)(state))
            };
            timings.push(Timing {
                title: title.clone(),
                seconds: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                ok: result.is_ok(),
            });
            if let Some((does, f)) = step.undo {
                undos.push((title.clone(), does, f));
            }
            if let Err(e) = result {
                let done = if i == 0 {
                    "none".to_string()
                } else {
                    format!("1-{i}")
                };
                let undone = run_undos(out, undos, state);
                return (
                    Err(e.context(format!(
                        "step {}/{total} \"{title}\" failed (steps completed: {done}){undone}",
                        i + 1
                    ))),
                    timings,
                );
            }
        }
        (Ok(()), timings)
    }
}

/// How long a step took.
#[derive(Serialize, serde::Deserialize, Clone, Debug)]
pub struct Timing {
    pub title: String,
    pub seconds: f64,
    pub ok: bool,
}

impl<'a> Plan<'a, ()> {
    /// Print (dry run) or run a plan without shared state.
    pub fn execute(self, out: &Output, dry_run: bool) -> Result<()> {
        self.execute_with(out, dry_run, &mut ())
    }
}

/// Run the undos in reverse; a sentence for the error saying what happened.
fn run_undos<S>(
    out: &Output,
    undos: Vec<(String, String, Action<'_, S>)>,
    state: &mut S,
) -> String {
    if undos.is_empty() {
        return String::new();
    }
    // An interruption must not stop the undos themselves.
    let _shield = crate::core::interrupt::shield();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (title, does, f) in undos.into_iter().rev() {
        let _section = out.section(&format!("undo \"{title}\": {does}"));
        match f(state).with_context(|| format!("undoing \"{title}\"")) {
            Ok(()) => done.push(format!("\"{title}\"")),
            Err(e) => {
                out.warn(&format!("{e:#}; do it by hand: {does}"));
                failed.push(format!("\"{title}\" (by hand: {does})"));
            }
        }
    }
    let mut text = String::new();
    if !done.is_empty() {
        text.push_str(&format!("; undone: {}", done.join(", ")));
    }
    if !failed.is_empty() {
        text.push_str(&format!("; NOT undone: {}", failed.join(", ")));
    }
    text
}
