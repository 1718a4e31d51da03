//! `mre-demo app`: the web app stand-in (health, register/login, bearer-protected `/api/v1/*`).

use crate::auth;
use crate::db::{self, Db, DbError};
use crate::http::{error_response, serve, Request, Response};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// How long a login lasts: `MRE_DEMO_SESSION_HOURS` (default 24). A release
/// that changes it is how the tests ship code a migration's CHECK depends on.
fn session_lifetime() -> Result<Duration, String> {
    let v = std::env::var("MRE_DEMO_SESSION_HOURS").unwrap_or_default();
    let hours: u64 = match v.trim() {
        "" => 24,
        h => h
            .parse()
            .map_err(|_| format!("MRE_DEMO_SESSION_HOURS {h:?} is not a number of hours"))?,
    };
    Ok(Duration::from_secs(hours * 3600))
}

/// Health endpoint fault injection (`MRE_DEMO_HEALTH_FAULT`), for testing deploy tooling.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Status500,
    Malformed,
    WrongStatus,
    Slow,
    BadTimestamp,
}

impl Fault {
    fn from_env() -> Result<Fault, String> {
        let v = std::env::var("MRE_DEMO_HEALTH_FAULT").unwrap_or_default();
        Ok(match v.trim() {
            "" | "none" => Fault::None,
            "500" => Fault::Status500,
            "malformed" => Fault::Malformed,
            "wrong-status" => Fault::WrongStatus,
            "slow" => Fault::Slow,
            "bad-timestamp" => Fault::BadTimestamp,
            other => {
                return Err(format!(
                    "unknown MRE_DEMO_HEALTH_FAULT {other:?} \
                     (expected none|500|malformed|wrong-status|slow|bad-timestamp)"
                ))
            }
        })
    }
}

/// Auth fault injection (`MRE_DEMO_AUTH_FAULT`), for testing smoke tests:
/// `open` answers protected endpoints without a session (a broken auth
/// boundary), `login` makes every login fail with 500.
#[derive(Clone, Copy, PartialEq, Debug)]
enum AuthFault {
    None,
    Open,
    Login,
}

impl AuthFault {
    fn from_env() -> Result<AuthFault, String> {
        let v = std::env::var("MRE_DEMO_AUTH_FAULT").unwrap_or_default();
        Ok(match v.trim() {
            "" | "none" => AuthFault::None,
            "open" => AuthFault::Open,
            "login" => AuthFault::Login,
            other => {
                return Err(format!(
                    "unknown MRE_DEMO_AUTH_FAULT {other:?} (expected none|open|login)"
                ))
            }
        })
    }
}

struct App {
    db: Db,
    fault: Fault,
    auth_fault: AuthFault,
    session_lifetime: Duration,
    /// `MRE_DEMO_FAIL_EVERY=N`: every Nth request for the index page is
    /// answered 500 (a release that fails some of its traffic while its
    /// health check and smoke tests pass: what a bake period catches).
    fail_every: u64,
    served: std::sync::atomic::AtomicU64,
}

fn fail_every() -> Result<u64, String> {
    match std::env::var("MRE_DEMO_FAIL_EVERY") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("MRE_DEMO_FAIL_EVERY {v:?} is not a whole number")),
        _ => Ok(0),
    }
}

pub fn run(port: u16, url: String) -> Result<(), String> {
    let fault = Fault::from_env()?;
    let auth_fault = AuthFault::from_env()?;
    let app = App {
        db: Db::new(db::config(&url)?),
        fault,
        auth_fault,
        session_lifetime: session_lifetime()?,
        fail_every: fail_every()?,
        served: std::sync::atomic::AtomicU64::new(0),
    };
    crate::log(&format!(
        "mre-demo app listening on 0.0.0.0:{port} (database {}, health fault {fault:?}, auth fault {auth_fault:?})",
        db::redact(&url)
    ));
    match app.db.run(|c| c.simple_query("SELECT 1").map(|_| ())) {
        Ok(()) => crate::log("database reachable"),
        Err(e) => crate::log(&format!(
            "database not reachable yet ({}); will retry per request",
            describe(&e)
        )),
    }
    serve(port, move |req| app.handle(req))
}

fn describe(e: &DbError) -> String {
    match e {
        DbError::SchemaNotReady => "schema not migrated".into(),
        DbError::Unavailable(m) | DbError::Other(m) => m.clone(),
        DbError::Conflict => "conflict".into(),
    }
}

/// `{"success":true,"data":..}`, keys in this order (serde_json would sort them).
fn ok(status: u16, data: Value) -> Response {
    Response::raw(
        status,
        "application/json",
        format!("{{\"success\":true,\"data\":{data}}}"),
    )
}

fn err(status: u16, code: &str, message: &str) -> Response {
    error_response(status, code, message)
}

fn db_err(e: DbError) -> Response {
    match e {
        DbError::SchemaNotReady => err(
            503,
            "SCHEMA_NOT_READY",
            "database schema not migrated: run `cargo xtask migrate deploy`",
        ),
        DbError::Unavailable(m) => {
            crate::log(&format!("database unavailable: {m}"));
            err(503, "DATABASE_UNAVAILABLE", "database unavailable")
        }
        DbError::Conflict => err(409, "CONFLICT", "conflict"),
        DbError::Other(m) => {
            crate::log(&format!("database error: {m}"));
            err(500, "INTERNAL_ERROR", "internal error")
        }
    }
}

fn not_found() -> Response {
    err(404, "NOT_FOUND", "Not found")
}

fn ts(t: SystemTime) -> Value {
    Value::String(crate::format_rfc3339(t))
}

struct User {
    id: String,
    email: String,
    name: Option<String>,
}

impl App {
    fn handle(&self, req: &Request) -> Response {
        let m = req.method.as_str();
        let p = req.path.as_str();
        match (m, p) {
            ("GET", "/")
                if self.fail_every > 0 && {
                    let n = self
                        .served
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    n % self.fail_every == self.fail_every - 1
                } =>
            {
                err(
                    500,
                    "INTERNAL_ERROR",
                    "injected fault (MRE_DEMO_FAIL_EVERY)",
                )
            }
            ("GET", "/") => Response::raw(200, "text/html; charset=utf-8", INDEX_HTML),
            ("GET", "/api/health") => self.health(),
            (_, "/api/health") => err(405, "METHOD_NOT_ALLOWED", "Method not allowed"),
            ("GET", "/api/auth/session" | "/api/auth/csrf") => Response::json(200, &json!({})),
            (_, p) if p.starts_with("/api/auth/") => not_found(),
            ("POST", "/api/v1/auth/register") => self.register(req),
            ("POST", "/api/v1/auth/login") => self.login(req),
            (_, "/api/v1/auth/register" | "/api/v1/auth/login") => {
                err(405, "METHOD_NOT_ALLOWED", "Method not allowed")
            }
            (_, p) if p == "/api" || p.starts_with("/api/") => match self.authenticate(req) {
                Ok(user) => self.protected(req, &user),
                Err(_) if self.auth_fault == AuthFault::Open => {
                    let anyone = User {
                        id: "anonymous".into(),
                        email: "anonymous@example.invalid".into(),
                        name: None,
                    };
                    self.protected(req, &anyone)
                }
                Err(r) => r,
            },
            _ => Response::raw(404, "text/plain; charset=utf-8", "Not found\n"),
        }
    }

    fn health(&self) -> Response {
        // Formatted by hand to keep the documented key order (serde_json sorts keys).
        let body = |status: &str, timestamp: &str| {
            Response::raw(
                200,
                "application/json",
                format!(
                    "{{\"success\":true,\"data\":{{\"status\":\"{status}\",\"timestamp\":\"{timestamp}\"}},\"message\":\"Service is healthy\"}}"
                ),
            )
        };
        let now = || crate::format_rfc3339(SystemTime::now());
        match self.fault {
            Fault::None => body("healthy", &now()),
            Fault::WrongStatus => body("degraded", &now()),
            Fault::BadTimestamp => body("healthy", "yesterday"),
            Fault::Status500 => err(500, "INTERNAL_ERROR", "injected health fault"),
            Fault::Malformed => Response::raw(200, "application/json", "{\"success\":tru"),
            Fault::Slow => {
                std::thread::sleep(Duration::from_secs(30));
                body("healthy", &now())
            }
        }
    }

    fn register(&self, req: &Request) -> Response {
        let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
            return err(400, "VALIDATION_ERROR", "body must be JSON");
        };
        let email = body["email"].as_str().unwrap_or("").trim().to_lowercase();
        let password = body["password"].as_str().unwrap_or("");
        let name = match &body["name"] {
            Value::Null => None,
            Value::String(s) => Some(s.trim().to_string()),
            _ => return err(400, "VALIDATION_ERROR", "name must be a string"),
        };
        if !email.contains('@') || email.len() > 254 {
            return err(400, "VALIDATION_ERROR", "a valid email is required");
        }
        if password.chars().count() < 8 {
            return err(
                400,
                "VALIDATION_ERROR",
                "password must be at least 8 characters",
            );
        }
        let id = auth::new_id();
        let hash = auth::hash_password(password);
        let res = self.db.run(|c| {
            c.execute(
                "INSERT INTO users (id, email, name, password_hash) VALUES ($1, $2, $3, $4)",
                &[&id, &email, &name, &hash],
            )
        });
        match res {
            Ok(_) => {
                crate::log(&format!("registered user {id}"));
                ok(201, json!({"user": {"id": id, "email": email}}))
            }
            Err(DbError::Conflict) => err(409, "EMAIL_EXISTS", "email already registered"),
            Err(e) => db_err(e),
        }
    }

    fn login(&self, req: &Request) -> Response {
        if self.auth_fault == AuthFault::Login {
            return err(500, "INTERNAL_ERROR", "injected login fault");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
            return err(400, "VALIDATION_ERROR", "body must be JSON");
        };
        let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str())
        else {
            return err(400, "VALIDATION_ERROR", "email and password are required");
        };
        let email = email.trim().to_lowercase();
        let row = self.db.run(|c| {
            c.query_opt(
                "SELECT id, password_hash FROM users WHERE email = $1",
                &[&email],
            )
        });
        let user_id: String = match row {
            Ok(Some(row)) if auth::verify_password(password, row.get(1)) => row.get(0),
            Ok(Some(_)) => return err(401, "INVALID_CREDENTIALS", "invalid email or password"),
            Ok(None) => {
                auth::dummy_verify(password);
                return err(401, "INVALID_CREDENTIALS", "invalid email or password");
            }
            Err(e) => return db_err(e),
        };
        let (token, token_hash) = auth::new_token();
        let expires = SystemTime::now() + self.session_lifetime;
        let session_id = auth::new_id();
        let res = self.db.run(|c| {
            c.execute(
                "INSERT INTO sessions (id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
                &[&session_id, &user_id, &token_hash, &expires],
            )
        });
        match res {
            Ok(_) => ok(200, json!({"token": token, "expiresAt": ts(expires)})),
            Err(e) => db_err(e),
        }
    }

    /// The user behind `Authorization: Bearer <token>`, or the response to send instead.
    fn authenticate(&self, req: &Request) -> Result<User, Response> {
        let unauthorized = || err(401, "UNAUTHORIZED", "Authentication required");
        let token = req
            .header("authorization")
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        let hash = auth::token_hash(token);
        let row = self.db.run(|c| {
            c.query_opt(
                "SELECT u.id, u.email, u.name FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.expires_at > now()",
                &[&hash],
            )
        });
        match row {
            Ok(Some(r)) => Ok(User {
                id: r.get(0),
                email: r.get(1),
                name: r.get(2),
            }),
            Ok(None) => Err(unauthorized()),
            Err(e) => Err(db_err(e)),
        }
    }

    fn protected(&self, req: &Request, user: &User) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/api/v1/me") => ok(
                200,
                json!({"user": {"id": user.id, "email": user.email, "name": user.name}}),
            ),
            ("GET", "/api/v1/events") => self.events(),
            ("GET", "/api/v1/laps") => {
                let limit = req
                    .query_param("limit")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(50)
                    .clamp(1, 1000);
                self.laps(limit)
            }
            _ => not_found(),
        }
    }

    fn events(&self) -> Response {
        let rows = self.db.run(|c| {
            c.query(
                "SELECT id, name, track, starts_at, created_at FROM events \
                 ORDER BY created_at DESC LIMIT 100",
                &[],
            )
        });
        match rows {
            Ok(rows) => {
                let events: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.get::<_, String>(0),
                            "name": r.get::<_, String>(1),
                            "track": r.get::<_, Option<String>>(2),
                            "startsAt": r.get::<_, Option<SystemTime>>(3).map(ts),
                            "createdAt": ts(r.get(4)),
                        })
                    })
                    .collect();
                ok(200, json!({ "events": events }))
            }
            Err(e) => db_err(e),
        }
    }

    fn laps(&self, limit: i64) -> Response {
        let rows = self.db.run(|c| {
            c.query(
                "SELECT id, event_id, seq, driver, lap_number, lap_time_ms, recorded_at \
                 FROM laps ORDER BY seq DESC LIMIT $1",
                &[&limit],
            )
        });
        match rows {
            Ok(rows) => {
                let laps: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.get::<_, i64>(0),
                            "eventId": r.get::<_, String>(1),
                            "seq": r.get::<_, i64>(2),
                            "driver": r.get::<_, String>(3),
                            "lapNumber": r.get::<_, i32>(4),
                            "lapTimeMs": r.get::<_, i32>(5),
                            "recordedAt": ts(r.get(6)),
                        })
                    })
                    .collect();
                ok(200, json!({ "laps": laps }))
            }
            Err(e) => db_err(e),
        }
    }
}

const INDEX_HTML: &str = "<!doctype html>
<html lang=\"en\">
<head><meta charset=\"utf-8\"><title>My Race Engineer (demo)</title></head>
<body>
<h1>My Race Engineer (demo)</h1>
<p>Stand-in for the MRE web app. API: <code>/api/health</code>, <code>/api/v1/auth/register</code>,
<code>/api/v1/auth/login</code>, <code>/api/v1/me</code>, <code>/api/v1/events</code>,
<code>/api/v1/laps?limit=N</code>.</p>
</body>
</html>
";
