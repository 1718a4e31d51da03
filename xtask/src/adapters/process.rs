//! Processes. A command is data (program, arguments, environment, folder)
//! before it runs, so that `--dry-run` prints exactly what a real run would
//! execute (the step runner holds plans made of them).

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use super::output::{redact, Output};

#[derive(Clone, Debug)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment. Values are never printed: only the names are.
    pub env: Vec<(String, String)>,
    pub dir: Option<Utf8PathBuf>,
    /// Bytes fed to its standard input (a password for `--password-stdin`);
    /// never shown.
    pub stdin: Option<Vec<u8>>,
    /// Start from an environment of PATH and HOME only (plus `env`), so
    /// that nothing of the caller's shell leaks in.
    pub clean_env: bool,
}

impl Command {
    pub fn new<I, S>(program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            dir: None,
            stdin: None,
            clean_env: false,
        }
    }

    pub fn envs(mut self, vars: &[(String, String)]) -> Command {
        self.env.extend(vars.iter().cloned());
        self
    }

    /// Only PATH and HOME of this process's environment, then `envs`.
    pub fn clean_env(mut self) -> Command {
        self.clean_env = true;
        self
    }

    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Command {
        self.stdin = Some(bytes);
        self
    }

    pub fn dir(mut self, dir: &Utf8Path) -> Command {
        self.dir = Some(dir.to_owned());
        self
    }

    /// The command line as an operator would type it; environment values
    /// are left out and known secrets are masked.
    pub fn display(&self) -> String {
        let mut words = vec![quote(&self.program)];
        words.extend(self.args.iter().map(|a| quote(a)));
        let mut line = words.join(" ");
        if !self.env.is_empty() {
            let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
            line.push_str(&format!("   (with {} set)", names.join(", ")));
        }
        redact(&line)
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        if let Some(dir) = &self.dir {
            e = e.dir(dir.as_std_path());
        }
        if self.clean_env {
            // One full environment: duct applies an outer `env` before an
            // inner `full_env`, which would drop it.
            let mut all: Vec<(String, String)> = ["PATH", "HOME"]
                .into_iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect();
            all.extend(self.env.iter().cloned());
            e = e.full_env(all);
        } else {
            for (k, v) in &self.env {
                e = e.env(k, v);
            }
        }
        if let Some(bytes) = &self.stdin {
            e = e.stdin_bytes(bytes.clone());
        }
        e
    }

    /// Run with the child's output streamed to stderr.
    pub fn run(&self, out: &Output) -> Result<()> {
        out.detail(&format!("$ {}", self.display()));
        // A child's output is progress, not the report: stderr, so that
        // stdout carries only mre-ops's own result.
        let mut e = self.expression().unchecked().stdout_to_stderr();
        if out.quiet {
            // -q: only errors. Keep the output, show it if the command fails.
            e = e.stderr_capture();
        }
        let output = e.run().with_context(|| {
            format!(
                "could not start `{}`: is `{}` installed and on PATH?",
                self.display(),
                self.program
            )
        })?;
        if !output.status.success() {
            if out.quiet {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    redact(&String::from_utf8_lossy(&output.stderr)).as_bytes(),
                );
            }
            bail!(
                "`{}` failed ({}); its output is above",
                self.display(),
                output.status
            );
        }
        Ok(())
    }

    /// Run with `stdin` streamed in (or nothing) and stdout streamed into
    /// `sink` as it comes (a dump written while it is hashed); stderr is
    /// captured. The outcome: the exit code (128 + N for a signal N) and
    /// stderr, masked; an error only when it could not run at all.
    pub fn stream(
        &self,
        stdin: Option<std::fs::File>,
        sink: &mut dyn std::io::Write,
    ) -> Result<(i64, String)> {
        use std::os::unix::process::ExitStatusExt;
        let mut e = self.expression().stderr_capture().unchecked();
        e = match stdin {
            Some(f) => e.stdin_file(f),
            None => e.stdin_null(),
        };
        let mut reader = e.reader().with_context(|| {
            format!(
                "could not start `{}`: is `{}` installed and on PATH?",
                self.display(),
                self.program
            )
        })?;
        let copied = std::io::copy(&mut reader, sink);
        let output = reader
            .try_wait()
            .with_context(|| format!("waiting for `{}`", self.program))?
            .cloned();
        copied.with_context(|| format!("copying the output of `{}`", self.program))?;
        let Some(output) = output else {
            bail!("`{}` did not finish after its output ended", self.program);
        };
        let code = output
            .status
            .code()
            .map(i64::from)
            .unwrap_or_else(|| 128 + i64::from(output.status.signal().unwrap_or(0)));
        Ok((code, redact(String::from_utf8_lossy(&output.stderr).trim())))
    }

    /// Run and capture stdout (stderr is captured too and shown on failure).
    pub fn read(&self) -> Result<String> {
        let output = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| {
                format!(
                    "could not start `{}`: is `{}` installed and on PATH?",
                    self.display(),
                    self.program
                )
            })?;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.display(),
                output.status,
                redact(String::from_utf8_lossy(&output.stderr).trim())
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// How a captured command ended.
pub struct Captured {
    /// The exit code; None when killed (by a signal or the timeout).
    pub code: Option<i32>,
    pub timed_out: bool,
    /// Standard output and error, interleaved as far as pipes allow,
    /// known secrets masked.
    pub output: String,
}

impl Command {
    /// Run with stdout and stderr captured together, killed after `timeout`.
    /// An error only when it cannot start.
    pub fn capture(&self, timeout: std::time::Duration) -> Result<Captured> {
        let handle = self
            .expression()
            .stderr_to_stdout()
            .stdout_capture()
            .unchecked()
            .start()
            .with_context(|| {
                format!(
                    "could not start `{}`: is `{}` installed and on PATH?",
                    self.display(),
                    self.program
                )
            })?;
        let start = std::time::Instant::now();
        let mut timed_out = false;
        while handle
            .try_wait()
            .with_context(|| format!("waiting for `{}`", self.display()))?
            .is_none()
        {
            if start.elapsed() >= timeout {
                timed_out = true;
                let _ = handle.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let output = handle
            .wait()
            .with_context(|| format!("waiting for `{}`", self.display()))?;
        Ok(Captured {
            code: if timed_out {
                None
            } else {
                output.status.code()
            },
            timed_out,
            output: redact(&String::from_utf8_lossy(&output.stdout)),
        })
    }
}

fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn a_clean_environment_keeps_its_own_variables_only() {
        // A variable this process already has (set_var would race with the
        // other tests' threads): the clean environment must not pass it on.
        let (leak, _) = std::env::vars()
            .find(|(k, v)| {
                !matches!(k.as_str(), "PATH" | "HOME")
                    && !v.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .expect("the test process has some environment variable besides PATH and HOME");
        let out = Command::new(
            "sh",
            [
                "-c".to_string(),
                format!("echo \"$MRE_OPS_TEST_SET-${{{leak}}}-$PATH\""),
            ],
        )
        .clean_env()
        .envs(&[("MRE_OPS_TEST_SET".into(), "set".into())])
        .read()
        .unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            out.trim(),
            format!("set--{path}"),
            "{leak} leaked, or PATH did not pass"
        );
    }
}
