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

/// Columns aligned to their widest cell (colour codes do not count), two
/// spaces apart, each line indented by two; `right` lists the columns
/// aligned to the right (numbers, sizes). The last column is not padded.
pub fn table(rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    fn width(cell: &str) -> usize {
        // Visible characters: ANSI colour sequences (ESC [ ... m) take no room.
        let mut n = 0;
        let mut chars = cell.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                n += 1;
            }
        }
        n
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| width(c))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::from(" ");
            for (i, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[i] - width(cell));
                line.push(' ');
                if right.contains(&i) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.push_str(&pad);
                    }
                }
                if i + 1 < row.len() {
                    line.push(' ');
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_visible_widths() {
        let rows = vec![
            vec!["name".into(), "size".into(), "ok".into()],
            vec![
                "a-long-name".into(),
                "1.2 MB".into(),
                "\u{1b}[32myes\u{1b}[0m".into(),
            ],
        ];
        let lines = super::table(&rows, &[1]);
        assert_eq!(lines[0], "  name           size  ok");
        assert_eq!(lines[1], "  a-long-name  1.2 MB  \u{1b}[32myes\u{1b}[0m");
    }
}
