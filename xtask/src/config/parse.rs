//! Deployment Architecture: reading `ops.toml` strictly. Errors name the
//! file, line, column and field path, and what to do next (exit 2).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use camino::Utf8Path;

use super::settings::{parse_duration, EnvironmentSettings, OpsFile};
use super::{config_error, Ops};

/// Parse with errors as `ops.toml:LINE:COL: field.path: what is wrong`.
pub(super) fn parse(path: &Utf8Path, text: &str) -> Result<OpsFile> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        toml_error(path, text, e.inner(), &field)
    })
}

fn toml_error(path: &Utf8Path, text: &str, e: &toml::de::Error, field: &str) -> anyhow::Error {
    let (line, col) = match e.span() {
        Some(span) => line_col(text, span.start),
        None => (1, 1),
    };
    let field = if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    };
    let message = e.message().trim().replace('\n', " ");
    config_error(format!(
        "{path}:{line}:{col}: {field}{message}\n  (the valid keys are documented in docs/ops-toml.md; `cargo xtask config` checks the file)"
    ))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.find(needle).map(|offset| line_col(text, offset))
}

/// Best-effort line of `field` inside `[environments.NAME...]`, for
/// messages about values that parsed but do not make sense.
fn line_of(text: &str, env: &str, field: &str) -> usize {
    let last = field.rsplit('.').next().unwrap_or(field);
    let mut in_env = false;
    let mut env_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_env = t.starts_with(&format!("[environments.{env}]"))
                || t.starts_with(&format!("[environments.{env}."));
            if t == format!("[environments.{env}]") {
                env_line = i + 1;
            }
            if in_env && t.trim_matches(|c| c == '[' || c == ']').ends_with(last) {
                return i + 1;
            }
            continue;
        }
        if in_env && (t.starts_with(&format!("{last} ")) || t.starts_with(&format!("{last}="))) {
            return i + 1;
        }
    }
    env_line
}

pub(super) fn read_env_file(path: &Utf8Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the env file {path}"))?;
    let mut vars = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            return Err(config_error(format!(
                "{path}:{}: expected KEY=VALUE",
                i + 1
            )));
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}

// ---------------------------------------------------------------------------
// One environment, resolved.

/// Checks serde cannot make: each finding names the field and its line.
pub(super) fn validate(ops: &Ops, text: &str) -> Result<()> {
    let this = ops;
    if this.file.environments.is_empty() {
        return Err(config_error(format!(
            "{}: no environments: add at least [environments.development]",
            this.path
        )));
    }
    for (name, env) in &this.file.environments {
        let at = |field: &str| {
            format!(
                "{}:{}: environments.{name}.{field}",
                this.path,
                line_of(text, name, field)
            )
        };
        let at_value = |field: &str, value: &str| match locate(text, &format!("\"{value}\"")) {
            Some((line, col)) => {
                format!("{}:{line}:{col}: environments.{name}.{field}", this.path)
            }
            None => at(field),
        };
        match (env.driver, &env.swarm) {
            (super::Driver::Swarm, None) => {
                return Err(config_error(format!(
                    "{}: `swarm` needs [environments.{name}.swarm] (stack, files) and [environments.{name}.release] (docs/swarm.md)",
                    at("driver")
                )))
            }
            (super::Driver::Swarm, Some(s)) => {
                if env.compose.is_some() {
                    return Err(config_error(format!(
                        "{}: a swarm environment is described by [swarm], not [compose]: remove one",
                        at("compose")
                    )));
                }
                if env.release.is_none() {
                    return Err(config_error(format!(
                        "{}: a swarm environment needs [environments.{name}.release] (registry, images, services): \
                         Swarm ignores `build:`, it runs images from a registry",
                        at("driver")
                    )));
                }
                if s.files.is_empty() {
                    return Err(config_error(format!("{}: needs at least one stack file", at("swarm.files"))));
                }
            }
            (super::Driver::Compose, Some(_)) => {
                return Err(config_error(format!(
                    "{}: [swarm] is read with driver = \"swarm\" only: set it, or remove [swarm]",
                    at("swarm")
                )))
            }
            (super::Driver::Compose, None) => {}
        }
        if let Some(w) = &env.migrations.window {
            if let Err(why) = super::migrations::Window::parse(w) {
                return Err(config_error(format!(
                    "{}: {why}",
                    at_value("migrations.window", w)
                )));
            }
        }
        if env.migrations.max_lock_secs.is_nan() || env.migrations.max_lock_secs < 0.0 {
            return Err(config_error(format!(
                "{}: must be a number of seconds, 0 or more",
                at("migrations.max_lock_secs")
            )));
        }
        if env.compose.as_ref().is_some_and(|c| c.files.is_empty()) {
            return Err(config_error(format!(
                "{}: needs at least one Compose file",
                at("compose.files")
            )));
        }
        for argv in env.compose.iter().flat_map(|c| c.pre_build.iter()) {
            if argv.is_empty() {
                return Err(config_error(format!(
                    "{}: an empty command; each entry is [program, args...]",
                    at("compose.pre_build")
                )));
            }
        }
        for (svc, s) in &env.services {
            if let Some(h) = &s.health {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(config_error(format!(
                        "{}: `{}` is not an http:// or https:// URL",
                        at_value(&format!("services.{svc}.health.url"), &h.url),
                        h.url
                    )));
                }
                if !(h.timeout_secs > 0.0 && h.timeout_secs <= 600.0) {
                    return Err(config_error(format!(
                        "{}: expected seconds between 0 and 600, found {}",
                        at(&format!("services.{svc}.health.timeout_secs")),
                        h.timeout_secs
                    )));
                }
            }
        }
        if let Some(db) = &env.database {
            if db.password_env.is_none() && db.url_env.is_none() {
                return Err(config_error(format!(
                    "{}: set password_env (the variable holding the password) or url_env (the variable holding the URL)",
                    at("database")
                )));
            }
            validate_tls(db, env.ssh.is_some(), &at)?;
        }
        if let Some(b) = &env.backups {
            if b.keep_min == 0 {
                return Err(config_error(format!(
                    "{}: keep_min = 0 would let `backup prune` delete every backup but the newest verified one; \
                     keep at least 1 (the runbook keeps 30 days)",
                    at("backups.keep_min")
                )));
            }
            if parse_duration(&b.max_archive_lag).is_none() {
                return Err(config_error(format!(
                    "{}: `{}` is not a duration: write e.g. \"1m\", \"30s\" or a number of seconds",
                    at("backups.max_archive_lag"),
                    b.max_archive_lag
                )));
            }
            if b.continuous && env.database.as_ref().is_some_and(|d| d.container.is_none()) {
                return Err(config_error(format!(
                    "{}: continuous archiving runs pg_receivewal in a container beside the database's: \
                     set database.container (the database container's name)",
                    at("backups.continuous")
                )));
            }
        }
        validate_verification(env, name, &at, &at_value)?;
        if let Some(host) = &env.docker_host {
            if !(host.starts_with("unix://")
                || host.starts_with("tcp://")
                || host.starts_with("http://"))
            {
                return Err(config_error(format!(
                    "{}: `{host}` is not unix:///path or tcp://host:port",
                    at_value("docker_host", host)
                )));
            }
            if (env.ssh.is_some() || env.ssh_env.is_some()) && !host.starts_with("unix:///") {
                return Err(config_error(format!(
                    "{}: with `ssh`, docker_host is the engine's socket on the server (unix:///var/run/docker.sock)",
                    at_value("docker_host", host)
                )));
            }
            if let Some(addr) = host
                .strip_prefix("tcp://")
                .or_else(|| host.strip_prefix("http://"))
            {
                let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let h = h.trim_start_matches('[').trim_end_matches(']');
                let loopback = h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback && env.docker_cert_path.is_none() {
                    return Err(config_error(format!(
                        "{}: the Docker Engine API on a network port is root on that server for anyone who \
                         reaches it; set `ssh = \"user@{h}\"` instead (the engine's socket is reached over SSH), \
                         or, for an engine with TLS client certificates (`dockerd --tlsverify`), \
                         docker_cert_path = \"FOLDER\" (ca.pem, cert.pem, key.pem)",
                        at_value("docker_host", host)
                    )));
                }
            }
        }
        if env.docker_cert_path.is_some()
            && (env.ssh.is_some()
                || !env
                    .docker_host
                    .as_deref()
                    .is_some_and(|h| h.starts_with("tcp://")))
        {
            return Err(config_error(format!(
                "{}: client certificates are for an engine at docker_host = \"tcp://HOST:2376\" \
                 (not a socket, not with `ssh`)",
                at("docker_cert_path")
            )));
        }
        if let Some(target) = &env.ssh {
            if super::env::SshTarget::parse(target).is_none() {
                return Err(config_error(format!(
                    "{}: `{target}` is not user@host or user@host:port",
                    at_value("ssh", target)
                )));
            }
        }
    }
    Ok(())
}

/// `sslmode` and `sslrootcert`: a CA file exactly when the certificate is
/// checked, and no TLS settings where the SSH connection carries the database.
fn validate_tls(
    db: &super::DatabaseSettings,
    ssh: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<()> {
    use super::SslMode;
    match (db.sslmode, &db.sslrootcert) {
        (Some(SslMode::VerifyFull), None) => {
            return Err(config_error(format!(
                "{}: sslmode = \"verify-full\" checks the server's certificate against a CA file: \
                 set sslrootcert = \"path/to/ca.pem\" (your provider's CA bundle, relative to ops.toml)",
                at("database.sslmode")
            )))
        }
        (mode, Some(_)) if mode != Some(SslMode::VerifyFull) => {
            return Err(config_error(format!(
                "{}: the CA file is used with sslmode = \"verify-full\" only (with \"require\" the certificate \
                 is not checked): set sslmode = \"verify-full\", or remove sslrootcert",
                at("database.sslrootcert")
            )))
        }
        _ => {}
    }
    if ssh && db.sslmode.is_some_and(|m| m != SslMode::Disable) {
        return Err(config_error(format!(
            "{}: with `ssh` the database is reached through the SSH connection (already encrypted), \
             where TLS does not apply: remove sslmode (TLS is for a database reached directly over a network)",
            at("database.sslmode")
        )));
    }
    Ok(())
}

/// The preflight, smoke and monitor sections: commands, paths, durations,
/// thresholds and URLs that parse but cannot work.
fn validate_verification(
    env: &EnvironmentSettings,
    name: &str,
    at: &dyn Fn(&str) -> String,
    at_value: &dyn Fn(&str, &str) -> String,
) -> Result<()> {
    let p = &env.preflight;
    for (key, cmd) in [
        ("tests", &p.tests),
        ("lint", &p.lint),
        ("audit", &p.audit),
        ("image_test", &p.image_test),
    ] {
        if cmd
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            return Err(config_error(format!(
                "{}: an empty command; write [program, args...]",
                at(&format!("preflight.{key}"))
            )));
        }
    }
    if p.backup_max_age_hours.is_nan() || p.backup_max_age_hours <= 0.0 {
        return Err(config_error(format!(
            "{}: expected hours above 0, found {}",
            at("preflight.backup_max_age_hours"),
            p.backup_max_age_hours
        )));
    }
    if let Some(staging) = &p.staging {
        if staging == name {
            return Err(config_error(format!(
                "{}: `{staging}` is this environment; name the one migrations are tested on first",
                at_value("preflight.staging", staging)
            )));
        }
    }
    let s = &env.smoke;
    if let Some(url) = &s.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(config_error(format!(
                "{}: `{url}` is not an http:// or https:// URL",
                at_value("smoke.url", url)
            )));
        }
    }
    for path in std::iter::once(&s.session_path)
        .chain(s.endpoints.iter().map(|e| &e.path))
        .chain(s.public.iter())
    {
        if !path.starts_with('/') {
            return Err(config_error(format!(
                "{}: `{path}` must start with /",
                at_value("smoke", path)
            )));
        }
    }
    if let Some(e) = s
        .endpoints
        .iter()
        .find(|e| !(100..=599).contains(&e.status))
    {
        return Err(config_error(format!(
            "{}: status {} of {} is not an HTTP status",
            at("smoke.endpoints"),
            e.status,
            e.path
        )));
    }
    if !(s.timeout_secs > 0.0 && s.timeout_secs <= 600.0) {
        return Err(config_error(format!(
            "{}: expected seconds between 0 and 600, found {}",
            at("smoke.timeout_secs"),
            s.timeout_secs
        )));
    }
    let m = &env.monitor;
    for (key, value) in [("interval", &m.interval), ("log_window", &m.log_window)] {
        if parse_duration(value).is_none() {
            return Err(config_error(format!(
                "{}: `{value}` is not a duration (`30s`, `5m`, `1h`)",
                at_value(&format!("monitor.{key}"), value)
            )));
        }
    }
    if m.probes == 0 || m.probes > 1000 {
        return Err(config_error(format!(
            "{}: expected 1 to 1000 probes, found {}",
            at("monitor.probes"),
            m.probes
        )));
    }
    if m.prefix.is_empty()
        || !m
            .prefix
            .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        || !m
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(config_error(format!(
            "{}: `{}` is not a Prometheus metric name prefix (letters, digits, _)",
            at("monitor.prefix"),
            m.prefix
        )));
    }
    if let Some(url) = &m.webhook {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(config_error(format!(
                "{}: `{url}` is not an http:// or https:// URL",
                at_value("monitor.webhook", url)
            )));
        }
    }
    for (key, rule) in m.alerts.rules() {
        if let Some(f) = &rule.for_ {
            if parse_duration(f).is_none() {
                return Err(config_error(format!(
                    "{}: for = `{f}` is not a duration (`0s`, `1m`, `5m`)",
                    at(&format!("monitor.alerts.{key}"))
                )));
            }
        }
        if rule.threshold.is_some_and(|t| !t.is_finite() || t < 0.0) {
            return Err(config_error(format!(
                "{}: the threshold must be a number of 0 or more",
                at(&format!("monitor.alerts.{key}"))
            )));
        }
    }
    Ok(())
}
