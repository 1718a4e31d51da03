//! Output that fits where it runs: colour and progress on a terminal, plain
//! lines in a pipe, JSON with `--json`, annotations and a step summary under
//! GitHub Actions. Every line goes through `redact` so that no secret the
//! process knows about is ever printed.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret value so that it is masked wherever it would be printed.
pub fn register_secret(value: &str) {
    // Very short values would mask unrelated text and protect nothing.
    if value.len() < 4 {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap();
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
    // Only on a real runner (which also sets GITHUB_RUN_ID): elsewhere the
    // command would print the value for anyone reading the terminal.
    if std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true")
        && std::env::var_os("GITHUB_RUN_ID").is_some()
    {
        // Ask the runner to mask it in its own logs as well. On stderr, which
        // the runner reads for workflow commands too, so that a `--json`
        // stdout stays one document.
        eprintln!("::add-mask::{value}");
    }
}

/// The text with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap();
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Warn,
    Dim,
}

pub struct Output {
    pub json: bool,
    /// Whether the JSON document was printed (main prints one for an error
    /// otherwise).
    pub json_printed: std::cell::Cell<bool>,
    pub quiet: bool,
    pub verbose: u8,
    /// Progress (spinners, rewriting lines) only when stderr is a terminal.
    pub tty: bool,
    color: bool,
    pub github: bool,
}

impl Output {
    pub fn new(json: bool, quiet: bool, verbose: u8) -> Output {
        let tty = std::io::stderr().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none() && !json;
        let github = std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true");
        Output {
            json,
            json_printed: std::cell::Cell::new(false),
            quiet,
            verbose,
            tty,
            color,
            github,
        }
    }

    pub fn paint(&self, tone: Tone, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Warn => "33",
            Tone::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// A line of the human report: stdout normally, stderr under `--json`
    /// (stdout then carries only the JSON document).
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let text = redact(text);
        if self.json {
            err_line(&text);
        } else {
            out_line(&text);
        }
    }

    /// Only with `-v`.
    pub fn detail(&self, text: &str) {
        if self.verbose > 0 {
            eprintln!("{}", self.paint(Tone::Dim, &redact(text)));
        }
    }

    /// A warning: on stderr (also under `--json`), painted on a terminal,
    /// a `::warning::` annotation under GitHub Actions. Shown even with -q.
    pub fn warn(&self, text: &str) {
        let text = redact(text);
        if self.github {
            self.workflow_command(&format!("::warning::{}", escape_annotation(&text)));
        }
        err_line(&format!("{} {text}", self.paint(Tone::Warn, "warning:")));
    }

    /// An error annotation; the process's final error is printed by `main`.
    pub fn annotate_error(&self, text: &str) {
        if self.github {
            self.workflow_command(&format!("::error::{}", escape_annotation(&redact(text))));
        }
    }

    /// A GitHub Actions workflow command: on stdout, in order with the
    /// human lines, except under `--json`, where stdout is the document.
    fn workflow_command(&self, line: &str) {
        if self.json {
            err_line(line);
        } else {
            out_line(line);
        }
    }

    /// The machine-readable result of a command, on stdout.
    pub fn json_doc(&self, value: &serde_json::Value) {
        self.json_printed.set(true);
        let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        out_line(&redact(&text));
    }

    /// Append markdown to the GitHub Actions step summary, if there is one.
    pub fn step_summary(&self, markdown: &str) {
        if !self.github {
            return;
        }
        let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
            return;
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{}", redact(markdown));
        }
    }

    /// `key=value` lines for later workflow steps (`$GITHUB_OUTPUT`), under
    /// GitHub Actions only. Values are redacted and kept to one line.
    pub fn github_output(&self, pairs: &[(&str, &str)]) {
        if !self.github {
            return;
        }
        let Some(path) = std::env::var_os("GITHUB_OUTPUT") else {
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            for (k, v) in pairs {
                let _ = writeln!(f, "{k}={}", redact(v).replace('\n', " "));
            }
        }
    }

    /// A named section: `==> title` (a collapsible group under GitHub
    /// Actions); on drop, how long it took.
    pub fn section(&self, title: &str) -> Section<'_> {
        if !self.quiet {
            if self.github {
                self.workflow_command(&format!("::group::{title}"));
            } else {
                eprintln!("{} {}", self.paint(Tone::Dim, "==>"), redact(title));
            }
        }
        Section {
            out: self,
            title: title.to_string(),
            start: Instant::now(),
        }
    }

    /// Rewrite the current terminal line (progress); no-op off a terminal.
    pub fn progress(&self, text: &str) {
        if self.tty && !self.quiet {
            eprint!("\r\x1b[2K{}", redact(text));
            let _ = std::io::stderr().flush();
        }
    }

    pub fn progress_done(&self) {
        if self.tty && !self.quiet {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

pub struct Section<'a> {
    out: &'a Output,
    title: String,
    start: Instant,
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        if self.out.quiet {
            return;
        }
        let took = format!("{:.1}s", self.start.elapsed().as_secs_f64());
        if self.out.github {
            self.out.workflow_command("::endgroup::");
        }
        self.out
            .detail(&format!("    ({} took {took})", self.title));
    }
}

/// A line on stdout. A reader that went away (`| head`) is not an error
/// worth a panic: the rest of the report is dropped.
fn out_line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// A line on stderr, likewise.
fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn escape_annotation(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}
