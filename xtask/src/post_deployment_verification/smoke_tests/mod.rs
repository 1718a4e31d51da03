//! Post-Deployment Verification, Smoke Tests: the runbook's five manual
//! checks, automated: the health endpoint (200, the runbook's JSON), the
//! application loads (HTML with its marker; a real headless Chromium with
//! `--browser`), login works (a smoke user, then a protected endpoint with
//! the session), the API endpoints answer as listed and the auth boundary
//! holds, and database queries succeed.

mod login;
use login::{login_and_api, queries};

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use camino::Utf8PathBuf;

use crate::adapters::http;
use crate::adapters::output::Output;
use crate::adapters::process::Command;
use crate::config::{Env, Ops, SmokeSettings};
use crate::core::check::{self, Check, Probe, State};
use crate::core::session;
use crate::health_checks::validate_runbook_json;

/// Run the smoke tests.
///
/// Runbook: Post-Deployment Verification, Smoke Tests.
///
/// The runbook's five manual checks, automated: 1. the health endpoint
/// returns 200 with the runbook's JSON; 2. the application loads (`GET /`
/// is HTML with smoke.marker; with --browser, headless Chromium renders it
/// and saves a screenshot); 3. login works (the smoke user from
/// $MRE_SMOKE_EMAIL / $MRE_SMOKE_PASSWORD logs in, registered first if
/// needed, and reaches smoke.session_path); 4. API endpoints respond
/// (smoke.endpoints with their statuses) and only the public paths answer
/// without a session; 5. database queries succeed. Exit 1 on any failure.
#[derive(clap::Args, Debug)]
pub struct SmokeArgs {
    /// Environment from ops.toml.
    pub env: String,
    /// Test this base URL instead of smoke.url (e.g. a new release before
    /// traffic moves to it). On an `ssh` environment, as the server sees it.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Also load the page in headless Chromium (`apt-get install chromium`)
    /// and save a screenshot.
    #[arg(long)]
    pub browser: bool,
    /// Where --browser saves the screenshot (default: target/smoke-ENV.png).
    #[arg(long, value_name = "PNG", requires = "browser")]
    pub screenshot: Option<Utf8PathBuf>,
}

/// How `run_smoke` runs: the command line's options, for `deploy` too.
#[derive(Clone, Debug, Default)]
pub struct SmokeOptions {
    /// Base URL instead of smoke.url.
    pub url: Option<String>,
    pub browser: bool,
    pub screenshot: Option<Utf8PathBuf>,
}

const HEALTH: &str = "1. Health endpoint returns 200 OK";
const LOADS: &str = "2. Application loads in browser";
const LOGIN: &str = "3. Login functionality works";
const API: &str = "4. API endpoints respond correctly";
const DATABASE: &str = "5. Database queries succeed";

pub fn smoke(ops: &Ops, out: &Output, args: &SmokeArgs) -> Result<()> {
    let env = session::env(ops, out, &args.env)?;
    let start = Instant::now();
    let opts = SmokeOptions {
        url: args.url.clone(),
        browser: args.browser,
        screenshot: args.screenshot.clone(),
    };
    let checks = run_smoke(&env, &opts);
    check::checklist(
        out,
        "smoke",
        &format!("Smoke tests of `{}`", env.name),
        serde_json::json!({ "environment": env.name, "url": base_url(&env, &opts).ok() }),
        &checks,
        start.elapsed(),
    )
    .emit(out);
    let failed = checks.iter().filter(|c| c.state == State::Fail).count();
    if failed > 0 {
        bail!(
            "{failed} of {} smoke tests failed on `{}`:{}",
            checks.len(),
            env.name,
            check::failures(&checks)
        );
    }
    Ok(())
}

/// The smoke tests against `env` (or `opts.url`), concurrently, grouped by
/// the runbook's five checks. For `deploy` after a cutover: any FAIL means
/// the release does not work for users. Never an error: problems are FAIL
/// checks with their evidence.
pub fn run_smoke(env: &Env, opts: &SmokeOptions) -> Vec<Check> {
    let base = match base_url(env, opts) {
        Ok(b) => b,
        Err(why) => {
            return vec![Check::fail(
                "base URL".into(),
                HEALTH,
                "-".into(),
                "the application's URL",
                why,
                format!(
                "set url in [environments.{}.smoke] (or the url of service mre-app), or pass --url",
                env.name
            ),
                Duration::ZERO,
            )]
        }
    };
    let s = &env.settings.smoke;
    let base = base.as_str();
    let mut probes: Vec<Probe<'_>> = vec![
        Box::new(move || vec![health(base, s)]),
        Box::new(move || vec![page(base, s)]),
    ];
    if opts.browser {
        probes.push(Box::new(move || vec![browser(env, base, s, opts)]));
    }
    probes.push(Box::new(move || login_and_api(env, base, s)));
    probes.push(Box::new(move || queries(env, s)));
    check::run(&probes)
}

/// What a deploy checks before anything changes, so that the smoke tests
/// after its cutover cannot fail for want of settings: a base URL and the
/// smoke user's credentials.
pub fn ready(env: &Env) -> Result<()> {
    let s = &env.settings.smoke;
    let mut missing = Vec::new();
    if let Err(why) = base_url(env, &SmokeOptions::default()) {
        missing.push(why);
    }
    for var in [&s.email_env, &s.password_env] {
        if env.var(var).is_none() {
            missing.push(format!("${var} is not set"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::config::config_error(format!(
        "the deploy of `{}` runs the smoke tests after its cutover, and they cannot run: {}. \
         Put {}=... and {}=... (a dedicated smoke user, registered on first use; password of 8+ characters) \
         in {} or the environment, and set [environments.{}.smoke] url if needed; nothing was changed",
        env.name,
        missing.join("; "),
        s.email_env,
        s.password_env,
        env.env_file_hint(),
        env.name
    )))
}

/// smoke.url, else the `url` of service mre-app, else the origin of its
/// health URL (`http://host:port`).
fn base_url(env: &Env, opts: &SmokeOptions) -> Result<String, String> {
    let app = env.settings.services.get("mre-app");
    opts.url
        .clone()
        .or_else(|| env.settings.smoke.url.clone())
        .or_else(|| app.and_then(|s| s.url.clone()))
        .or_else(|| {
            let health = app?.health.as_ref()?.url.as_str();
            let (scheme, rest) = health.split_once("://")?;
            let host = rest.split('/').next()?;
            Some(format!("{scheme}://{host}"))
        })
        .map(|u| u.trim_end_matches('/').to_string())
        .ok_or_else(|| {
            "no smoke.url, no url or health URL for service mre-app, no --url".to_string()
        })
        // On an `ssh` environment, through the connection.
        .and_then(|u| crate::core::session::reach(env, &u).map_err(|e| format!("{e:#}")))
}

fn timeout(s: &SmokeSettings) -> Duration {
    Duration::from_secs_f64(s.timeout_secs)
}

fn health(base: &str, s: &SmokeSettings) -> Check {
    let url = format!("{base}/api/health");
    let start = Instant::now();
    let name = "GET /api/health".to_string();
    match http::get(&url, timeout(s)).map_err(|e| e.to_string()) {
        Err(why) => Check::fail(
            name,
            HEALTH,
            url,
            "200 with the runbook's JSON",
            why,
            "is the app running? `cargo xtask health ENV`".into(),
            start.elapsed(),
        ),
        Ok(r) => match validate_runbook_json(r.status, &r.body) {
            Ok(detail) => Check::pass(
                name,
                HEALTH,
                url,
                format!("{detail} in {} ms", r.elapsed.as_millis()),
                start.elapsed(),
            ),
            Err((expected, got)) => Check::fail(
                name,
                HEALTH,
                url,
                &expected,
                got,
                "read `cargo xtask logs mre-app --tail 100 --env ENV`".into(),
                start.elapsed(),
            ),
        },
    }
}

fn page(base: &str, s: &SmokeSettings) -> Check {
    let url = format!("{base}/");
    let start = Instant::now();
    let name = "GET / (HTML)".to_string();
    let expected = format!("200, an HTML page containing `{}`", s.marker);
    let fail = |got: String| {
        Check::fail(
            name.clone(),
            LOADS,
            url.clone(),
            &expected,
            got,
            "open the URL yourself; read `cargo xtask logs mre-app --env ENV`".into(),
            start.elapsed(),
        )
    };
    match http::get(&url, timeout(s)).map_err(|e| e.to_string()) {
        Err(why) => fail(why),
        Ok(r) if r.status != 200 => fail(format!("status {}", r.status)),
        Ok(r) if !r.body.to_ascii_lowercase().contains("<html") => {
            fail(format!("200 but not HTML ({} bytes)", r.body.len()))
        }
        Ok(r) if !r.body.contains(&s.marker) => fail(format!(
            "HTML without `{}` ({} bytes): the wrong app, or an error page?",
            s.marker,
            r.body.len()
        )),
        Ok(r) => Check::pass(
            name,
            LOADS,
            url,
            format!(
                "200, HTML with `{}` ({} bytes, {} ms)",
                s.marker,
                r.body.len(),
                r.elapsed.as_millis()
            ),
            start.elapsed(),
        ),
    }
}

/// Headless Chromium renders the page: its DOM must hold the marker, and a
/// screenshot is saved.
fn browser(env: &Env, base: &str, s: &SmokeSettings, opts: &SmokeOptions) -> Check {
    let url = format!("{base}/");
    let start = Instant::now();
    let name = "Chromium renders /".to_string();
    let shot = opts.screenshot.clone().unwrap_or_else(|| {
        crate::config::workspace_root().join(format!("target/smoke-{}.png", env.name))
    });
    let fail = |expected: &str, got: String, next: String| {
        Check::fail(
            name.clone(),
            LOADS,
            url.clone(),
            expected,
            got,
            next,
            start.elapsed(),
        )
    };
    let Some(program) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|p| Command::new("which", [*p]).read().is_ok())
    else {
        return fail(
            "headless Chromium",
            "no chromium on PATH".into(),
            "install it: `apt-get install chromium` (Debian)".into(),
        );
    };
    if let Some(dir) = shot.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(&shot);
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ];
    let limit = Duration::from_secs(60);
    let dom =
        Command::new(program, common.iter().copied().chain(["--dump-dom", &url])).capture(limit);
    match dom {
        Err(e) => {
            return fail(
                "the browser to run",
                format!("{e:#}"),
                "check the chromium install".into(),
            )
        }
        Ok(c) if c.code != Some(0) || !c.output.contains(&s.marker) => {
            return fail(
                &format!("the rendered page to contain `{}`", s.marker),
                format!(
                    "exit {:?}{}, {} bytes of output without it",
                    c.code,
                    if c.timed_out { " (timed out)" } else { "" },
                    c.output.len()
                ),
                format!("open {url} in a browser and look at the console"),
            )
        }
        Ok(_) => {}
    }
    let shot_arg = format!("--screenshot={shot}");
    let taken = Command::new(
        program,
        common
            .iter()
            .copied()
            .chain(["--window-size=1280,800", shot_arg.as_str(), url.as_str()]),
    )
    .capture(limit);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    match taken {
        Ok(c) if c.code == Some(0) && size > 0 => Check::pass(
            name,
            LOADS,
            url.clone(),
            format!(
                "rendered with `{}`; screenshot {shot} ({size} bytes)",
                s.marker
            ),
            start.elapsed(),
        ),
        Ok(c) => fail(
            "a screenshot",
            format!("exit {:?}, {size} bytes at {shot}", c.code),
            "run chromium --headless --screenshot by hand to see why".into(),
        ),
        Err(e) => fail(
            "a screenshot",
            format!("{e:#}"),
            "check the chromium install".into(),
        ),
    }
}

/// Whether `path` answers without a session (smoke.public; `*` ends a prefix).
fn is_public(s: &SmokeSettings, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    s.public.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == p,
    })
}

fn excerpt_sql(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 60 {
        format!("{}…", one.chars().take(60).collect::<String>())
    } else {
        one
    }
}

fn excerpt(body: &str) -> String {
    let one: String = body
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(160)
        .collect();
    if one.is_empty() {
        "(empty)".into()
    } else {
        format!("`{one}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_paths() {
        let s = SmokeSettings::default();
        assert!(is_public(&s, "/api/health"));
        assert!(is_public(&s, "/api/auth/session"));
        assert!(is_public(&s, "/api/v1/auth/login"));
        assert!(!is_public(&s, "/api/v1/me"));
        assert!(!is_public(&s, "/api/v1/auth/loginx"));
        assert!(!is_public(&s, "/api/healthz"));
    }
}
