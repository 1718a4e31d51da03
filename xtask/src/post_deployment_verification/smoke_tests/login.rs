//! Post-Deployment Verification, smoke checks 3 to 5: "Login
//! functionality works" (a smoke user logs in, registering first if need
//! be, and reaches a protected endpoint) and "API endpoints respond
//! correctly" (the listed endpoints, and the auth boundary: only the public
//! paths answer without a session), and "Database queries succeed".

use crate::adapters::output::register_secret;
use crate::adapters::{http, postgres};
use crate::config::{Env, SmokeSettings};
use crate::core::check::Check;
use std::time::{Duration, Instant};

use super::{excerpt, excerpt_sql, is_public, timeout, API, DATABASE, LOGIN};

/// Log the smoke user in (registering it first when the app does not know
/// it), reach the protected endpoint, then every listed endpoint with the
/// session, and check the auth boundary without one.
pub(super) fn login_and_api(env: &Env, base: &str, s: &SmokeSettings) -> Vec<Check> {
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
        checks.push(match http::request("GET", &url, &headers, None, timeout(s)).map_err(|e| e.to_string()) {
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
pub(super) fn boundary(base: &str, s: &SmokeSettings, paths: &[(String, u16)]) -> Check {
    let start = Instant::now();
    let mut checked = Vec::new();
    let mut open = Vec::new();
    for (path, _) in paths.iter().filter(|(p, _)| p.starts_with("/api/")) {
        let url = format!("{base}{path}");
        let public = is_public(s, path);
        match http::get(&url, timeout(s)).map_err(|e| e.to_string()) {
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
pub(super) fn login(
    env: &Env,
    base: &str,
    s: &SmokeSettings,
    checks: &mut Vec<Check>,
) -> Option<String> {
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
        .map_err(|e| e.to_string())
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
pub(super) fn queries(env: &Env, s: &SmokeSettings) -> Vec<Check> {
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
                        postgres::SimpleQueryMessage::Row(r) => {
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
