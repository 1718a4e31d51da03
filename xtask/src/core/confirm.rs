//! Deployment Procedures, protected environments: a change goes ahead only
//! when asked (`--yes`, for CI) or confirmed by typing a name on a terminal.
//! The one prompt of deploy, rollback, restore and down.

use std::io::IsTerminal;

use anyhow::{Context, Result};

use crate::config::config_error;

/// Ask `question` on the terminal and go on only when `answer` is typed.
/// Without a terminal, refuse with `no_terminal` (what to pass instead).
/// Every refusal is a configuration error (exit 2): nothing was changed.
pub fn by_typing(question: &str, answer: &str, no_terminal: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(config_error(format!("{no_terminal}. Nothing was changed")));
    }
    eprint!("{question} Type `{answer}` to go on: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    if line.trim() != answer {
        return Err(config_error(format!(
            "the confirmation `{}` is not `{answer}`: nothing was changed",
            line.trim()
        )));
    }
    Ok(())
}

/// Ask for a line of text on the terminal (a reason for the record); an
/// empty answer, or no terminal, is refused with `no_terminal` (exit 2).
pub fn ask(question: &str, no_terminal: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(config_error(format!("{no_terminal}. Nothing was changed")));
    }
    eprint!("{question} ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    let line = line.trim().to_string();
    if line.is_empty() {
        return Err(config_error(format!(
            "no answer: {no_terminal}. Nothing was changed"
        )));
    }
    Ok(line)
}
