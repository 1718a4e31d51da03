//! One report value per command, rendered where the command runs: human
//! lines on a terminal or in a pipe, one JSON document with `--json`, and
//! under GitHub Actions also error annotations and the step summary (the
//! report's markdown, or its human lines in a text block). Commands
//! build a `Report` and call `emit`, instead of branching on `--json`.

use crate::adapters::output::Output;

pub struct Report {
    /// The machine-readable document (`--json`).
    pub json: serde_json::Value,
    lines: Vec<String>,
    summary: Vec<String>,
    errors: Vec<String>,
}

impl Report {
    pub fn new(json: serde_json::Value) -> Report {
        Report {
            json,
            lines: Vec::new(),
            summary: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A line of the human report.
    pub fn line(&mut self, text: impl Into<String>) -> &mut Self {
        self.lines.push(text.into());
        self
    }

    /// Markdown for the GitHub Actions step summary.
    pub fn summary(&mut self, markdown: impl Into<String>) -> &mut Self {
        self.summary.push(markdown.into());
        self
    }

    /// An error annotation under GitHub Actions (the human lines carry it too).
    pub fn error(&mut self, text: impl Into<String>) -> &mut Self {
        self.errors.push(text.into());
        self
    }

    pub fn emit(&self, out: &Output) {
        if out.json {
            out.json_doc(&self.json);
        } else {
            for l in &self.lines {
                out.line(l);
            }
        }
        self.emit_annotations(out);
    }

    /// A report inside another command's (the checklist a deploy runs):
    /// its lines (on stderr under `--json`, whose stdout carries the outer
    /// command's document), annotations and summary, never a JSON document.
    pub fn emit_part(&self, out: &Output) {
        for l in &self.lines {
            out.line(l);
        }
        self.emit_annotations(out);
    }

    fn emit_annotations(&self, out: &Output) {
        for e in &self.errors {
            out.annotate_error(e);
        }
        if !self.summary.is_empty() {
            out.step_summary(&self.summary.join("\n"));
        } else if !self.lines.is_empty() {
            // Every command's report reaches the step summary: its own
            // markdown when it has some, else its human lines as they are.
            out.step_summary(&format!("```text\n{}\n```\n", self.lines.join("\n")));
        }
    }
}
