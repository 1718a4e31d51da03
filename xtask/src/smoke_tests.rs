//! Post-Deployment Verification, Smoke Tests: the runbook's five manual
//! checks, automated: the health endpoint (200, the runbook's JSON), the
//! application loads (HTML with its marker; a real headless Chromium with
//! `--browser`), login works (a smoke user, then a protected endpoint with
//! the session), the API endpoints answer as listed and the auth boundary
//! holds, and database queries succeed.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use camino::Utf8PathBuf;

use crate::adapters::output::{register_secret, Output};
use crate::adapters::process::Command;
use crate::adapters::{http, postgres};
use crate::config::{Env, Ops, SmokeSettings};
use crate::core::check::{self, Check, Probe, State};
use crate::core::session;
use crate::health_checks::validate_runbook_json;

/// Run the smoke tests (runbook: Post-Deployment Verification, Smoke Tests).
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
    /// traffic moves to it).
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

fn base_url(env: &Env, opts: &SmokeOptions) -> Result<String, String> {
    opts.url
        .clone()
        .or_else(|| env.settings.smoke.url.clone())
        .or_else(|| {
            env.settings
                .services
                .get("mre-app")
                .and_then(|s| s.url.clone())
        })
        .map(|u| u.trim_end_matches('/').to_string())
        .ok_or_else(|| "no smoke.url, no url for service mre-app, no --url".to_string())
}

fn timeout(s: &SmokeSettings) -> Duration {
    Duration::from_secs_f64(s.timeout_secs)
}

fn health(base: &str, s: &SmokeSettings) -> Check {
    let url = format!("{base}/api/health");
    let start = Instant::now();
    let name = "GET /api/health".to_string();
    match http::get(&url, timeout(s)) {
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
    match http::get(&url, timeout(s)) {
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

/// Log the smoke user in (registering it first when the app does not know
/// it), reach the protected endpoint, then every listed endpoint with the
/// session, and check the auth boundary without one.
fn login_and_api(env: &Env, base: &str, s: &SmokeSettings) -> Vec<Check> {
    let mut checks = Vec::new();
    let token = login(env, base, s, &mut checks);
    let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
    let mut paths: Vec<(String, u16)> = vec![(s.session_path.clone(), 200)];
    for e in &s.endpoints {
        if !paths.iter().any(|(p, _)| p == &e.path) {
            paths.push((e.path.clone(), e.status));
        }
    }
    for (path, status) in &paths {
        let url = format!("{base}{path}");
        let name = format!("GET {path}");
        let start = Instant::now();
        let public = is_public(s, path);
        let headers: Vec<(&str, &str)> = match (&bearer, public) {
            (Some(b), false) => vec![("authorization", b.as_str())],
            (None, false) => {
                checks.push(Check::skip(
                    name,
                    API,
                    url,
                    "no session: the login failed".into(),
                ));
                continue;
            }
            (_, true) => vec![],
        };
        checks.push(match http::request("GET", &url, &headers, None, timeout(s)) {
            Err(why) => Check::fail(
                name,
                API,
                url,
                &format!("status {status}"),
                why,
                "is the app running? `cargo xtask health ENV`".into(),
                start.elapsed(),
            ),
            Ok(r) if r.status == *status => Check::pass(
                name,
                API,
                url,
                format!(
                    "{} {}in {} ms",
                    r.status,
                    if public { "(public) " } else { "with the session " },
                    r.elapsed.as_millis()
                ),
                start.elapsed(),
            ),
            Ok(r) => Check::fail(
                name,
                API,
                url,
                &format!("status {status}"),
                format!("status {} with body {}", r.status, excerpt(&r.body)),
                "read `cargo xtask logs mre-app --tail 100 --env ENV`; fix smoke.endpoints if the API changed".into(),
                start.elapsed(),
            ),
        });
    }
    checks.push(boundary(base, s, &paths));
    checks
}

/// Only the runbook's public endpoints answer without a session: every
/// other listed `/api/*` path must say 401.
fn boundary(base: &str, s: &SmokeSettings, paths: &[(String, u16)]) -> Check {
    let start = Instant::now();
    let mut checked = Vec::new();
    let mut open = Vec::new();
    for (path, _) in paths.iter().filter(|(p, _)| p.starts_with("/api/")) {
        let url = format!("{base}{path}");
        let public = is_public(s, path);
        match http::get(&url, timeout(s)) {
            Err(why) => open.push(format!("{path}: {why}")),
            Ok(r) if !public && r.status != 401 => {
                open.push(format!("{path} answered {} without a session", r.status))
            }
            Ok(r) if public && r.status == 401 => {
                open.push(format!("{path} is public but answered 401"))
            }
            Ok(r) => checked.push(format!("{path} {}", r.status)),
        }
    }
    let name = "auth boundary (no session)".to_string();
    let target = format!("{} /api paths", checked.len() + open.len());
    if open.is_empty() {
        Check::pass(name, API, target, checked.join(", "), start.elapsed())
    } else {
        Check::fail(
            name,
            API,
            target,
            "401 on every non-public /api path without a session, public ones answering",
            open.join("; "),
            "the auth middleware lets requests through: roll back (`cargo xtask restore` / previous release) and fix it".into(),
            start.elapsed(),
        )
    }
}

/// The smoke user's login; registered when the app says the credentials
/// are unknown and smoke.register is on. The token, when logged in.
fn login(env: &Env, base: &str, s: &SmokeSettings, checks: &mut Vec<Check>) -> Option<String> {
    let start = Instant::now();
    let name = "log in the smoke user".to_string();
    let url = format!("{base}/api/v1/auth/login");
    let fail = |expected: &str, got: String, next: String| {
        Check::fail(
            name.clone(),
            LOGIN,
            url.clone(),
            expected,
            got,
            next,
            start.elapsed(),
        )
    };
    let (Some(email), Some(password)) = (env.var(&s.email_env), env.var(&s.password_env)) else {
        checks.push(fail(
            "the smoke user's credentials",
            format!("${} or ${} is not set", s.email_env, s.password_env),
            format!(
                "put {}=... and {}=... (a dedicated smoke user, password of 8+ characters) in {} or the process environment",
                s.email_env,
                s.password_env,
                env.env_file_hint()
            ),
        ));
        return None;
    };
    register_secret(&password);
    let body = serde_json::json!({ "email": email, "password": password }).to_string();
    let post = |path: &str| {
        http::request(
            "POST",
            &format!("{base}{path}"),
            &[],
            Some(&body),
            timeout(s),
        )
    };
    let mut how = "logged in";
    let mut reply = post("/api/v1/auth/login");
    if s.register && matches!(&reply, Ok(r) if r.status == 401) {
        match post("/api/v1/auth/register") {
            Ok(r) if r.status == 201 => {
                how = "registered, then logged in";
                reply = post("/api/v1/auth/login");
            }
            Ok(r) if r.status == 409 => {
                checks.push(fail(
                    "login to succeed",
                    "401 for the smoke user, who exists (register says 409): a wrong password, or login is broken".into(),
                    format!("check ${}; read `cargo xtask logs mre-app --tail 100 --env {}`", s.password_env, env.name),
                ));
                return None;
            }
            Ok(r) => {
                checks.push(fail(
                    "registration to succeed (201)",
                    format!("status {} with body {}", r.status, excerpt(&r.body)),
                    format!(
                        "read `cargo xtask logs mre-app --tail 100 --env {}`",
                        env.name
                    ),
                ));
                return None;
            }
            Err(why) => {
                checks.push(fail("an answer", why, "is the app running?".into()));
                return None;
            }
        }
    }
    let token = match reply {
        Err(why) => {
            checks.push(fail(
                "an answer",
                why,
                "is the app running? `cargo xtask health ENV`".into(),
            ));
            return None;
        }
        Ok(r) if r.status != 200 => {
            checks.push(fail(
                "200 and a session token",
                format!("status {} with body {}", r.status, excerpt(&r.body)),
                format!(
                    "read `cargo xtask logs mre-app --tail 100 --env {}`",
                    env.name
                ),
            ));
            return None;
        }
        Ok(r) => serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v.pointer("/data/token")?.as_str().map(String::from)),
    };
    let Some(token) = token else {
        checks.push(fail(
            "200 and a session token",
            "200 without data.token".into(),
            "the login answer changed shape: update smoke tests".into(),
        ));
        return None;
    };
    register_secret(&token);
    checks.push(Check::pass(
        name,
        LOGIN,
        url,
        format!("{how} as {email} in {} ms", start.elapsed().as_millis()),
        start.elapsed(),
    ));
    Some(token)
}

/// The configured SQL, each on the database: it must return a row.
fn queries(env: &Env, s: &SmokeSettings) -> Vec<Check> {
    if env.settings.database.is_none() || s.queries.is_empty() {
        return vec![Check::skip(
            "database queries".into(),
            DATABASE,
            "-".into(),
            "no [database] or no smoke.queries in ops.toml".into(),
        )];
    }
    let start = Instant::now();
    let url = env
        .database_url()
        .map(|u| crate::database_migrations::split_schema(&u).0);
    let mut client = match url.and_then(|u| postgres::connect(&u, Duration::from_secs(5))) {
        Ok(c) => c,
        Err(e) => {
            return vec![Check::fail(
                "database connection".into(),
                DATABASE,
                "-".into(),
                "a connection",
                format!("{e:#}"),
                format!("`cargo xtask health {}`", env.name),
                start.elapsed(),
            )]
        }
    };
    s.queries
        .iter()
        .map(|sql| {
            let start = Instant::now();
            let name = excerpt_sql(sql);
            match client.simple_query(sql) {
                Ok(msgs) => {
                    let first = msgs.iter().find_map(|m| match m {
                        ::postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or("NULL").to_string())
                        }
                        _ => None,
                    });
                    match first {
                        Some(v) => Check::pass(
                            name,
                            DATABASE,
                            sql.clone(),
                            format!("returned {v} in {} ms", start.elapsed().as_millis()),
                            start.elapsed(),
                        ),
                        None => Check::fail(
                            name,
                            DATABASE,
                            sql.clone(),
                            "a row",
                            "no rows".into(),
                            "is the schema migrated? `cargo xtask migrate status ENV`".into(),
                            start.elapsed(),
                        ),
                    }
                }
                Err(e) => Check::fail(
                    name,
                    DATABASE,
                    sql.clone(),
                    "the query to succeed",
                    format!("{e}"),
                    "is the schema migrated? `cargo xtask migrate status ENV`".into(),
                    start.elapsed(),
                ),
            }
        })
        .collect()
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
