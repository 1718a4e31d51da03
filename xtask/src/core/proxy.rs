//! The reverse proxy in front of the blue-green colours (Production
//! Deployment "blue-green"; Rollback Procedures' maintenance mode), of the
//! kind `release.proxy.kind` names:
//! - nginx: the live colour is written to its upstream file, then `nginx -t`
//!   and `nginx -s reload` (a reload closes idle keep-alive connections);
//! - HAProxy: both colours are servers of one backend; a switch sets their
//!   states through the runtime API (`set server B/S state ready|drain` on
//!   the stats socket, reached with `socat` inside the container): nothing
//!   reloads, the old colour drains. The file is written too, so that a
//!   restarted HAProxy comes up on the live colour.
//!
//! Maintenance mode answers every request 503 with a small page and
//! `Retry-After`: on HAProxy a map entry set at runtime (and in the map
//! file), on nginx an included file and a reload.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::adapters::docker::Docker;
use crate::adapters::output::Output;
use crate::config::{Driver, Env, ProxyKind, ReleaseSettings};
use crate::core::session;
use crate::core::wait::{self, Poll, Waited};

pub const COLOURS: [&str; 2] = ["blue", "green"];

pub fn other(colour: &str) -> &'static str {
    if colour == "blue" {
        "green"
    } else {
        "blue"
    }
}

/// The proxy of a release on Compose: its settings, and the engine it runs on.
pub struct Proxy<'a> {
    env: &'a Env,
    rel: &'a ReleaseSettings,
    docker: Docker,
}

/// What clients are told to wait before trying again, in seconds.
pub const RETRY_AFTER: u32 = 30;
const SOCKET: &str = "/run/haproxy/admin.sock";
const PLACEHOLDER: &str = "192.0.2.1";
const HEADER: &str =
    "# Written by mre-ops at each cutover (cargo xtask deploy/rollback): do not edit.\n";

impl<'a> Proxy<'a> {
    pub fn new(env: &'a Env, rel: &'a ReleaseSettings) -> Result<Proxy<'a>> {
        Ok(Proxy {
            env,
            rel,
            docker: session::docker(env)?,
        })
    }

    /// The container Compose made for `service` (None: never created).
    fn container_of(&self, service: &str) -> Result<Option<String>> {
        Ok(self
            .docker
            .project_containers(&self.env.compose()?.project)?
            .into_iter()
            .find(|c| c.service.as_deref() == Some(service))
            .map(|c| c.name))
    }

    /// The proxy's container, or an error naming what is missing.
    pub fn container(&self) -> Result<String> {
        self.container_of(&self.rel.proxy.service)?.with_context(|| {
            format!(
                "the proxy service `{}` (release.proxy.service) has no container in Compose project `{}`",
                self.rel.proxy.service,
                self.env.project().unwrap_or("?")
            )
        })
    }

    /// The live colour of each blue-green service, as the proxy's file says.
    pub fn live_colours(&self) -> Result<BTreeMap<String, String>> {
        if self.container().is_err() {
            return Ok(BTreeMap::new());
        }
        let text = self.proxy_sh(
            "cat \"$1\" 2>/dev/null || true",
            &[self.rel.proxy.config_path()],
            b"",
        )?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("# live "))
            .filter_map(|l| l.split_once(' '))
            .map(|(s, c)| (s.to_string(), c.trim().to_string()))
            .collect())
    }

    /// Whether the proxy's container runs the kind ops.toml names (its
    /// stats socket, or nginx's pid file): false after `proxy.kind`
    /// changed, so that Compose recreates it.
    pub fn runs_its_kind(&self) -> Result<bool> {
        let test = match self.kind() {
            ProxyKind::Haproxy => "[ -S \"$1\" ] && echo yes || true",
            ProxyKind::Nginx => "[ -f /run/nginx.pid ] && echo yes || true",
        };
        Ok(self.proxy_sh(test, &[SOCKET], b"")?.trim() == "yes")
    }

    fn kind(&self) -> ProxyKind {
        self.rel.proxy.kind
    }

    /// Run `script` (`sh -c`, with `args`) in the proxy, `input` on stdin:
    /// its standard output, or an error with its standard error.
    fn proxy_sh(&self, script: &str, args: &[&str], input: &[u8]) -> Result<String> {
        let proxy = self.container()?;
        let mut words = vec!["sh", "-c", script, "sh"];
        words.extend_from_slice(args);
        let mut stdin: &[u8] = input;
        let mut text = Vec::new();
        let outcome = self
            .docker
            .exec(&proxy, &words, &[], Some(&mut stdin), &mut text)
            .with_context(|| format!("running a command in the proxy `{proxy}`"))?;
        if outcome.exit_code != 0 {
            bail!(
                "the proxy `{proxy}` ({:?}) refused: {}",
                self.kind(),
                outcome.stderr.trim()
            );
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// HAProxy's runtime API: `commands` (one line, `;`-separated) on the
    /// stats socket; what it answered.
    fn runtime(&self, commands: &str) -> Result<String> {
        self.proxy_sh(
            "command -v socat >/dev/null || { echo 'socat is not installed in the proxy image (Debian: apt-get install socat)' >&2; exit 1; }; \
             [ -S \"$1\" ] || { echo \"no HAProxy stats socket at $1: is the proxy running HAProxy (release.proxy.kind = \\\"haproxy\\\"; the demo's MRE_PROXY_KIND=haproxy)?\" >&2; exit 1; }; \
             socat -t 5 stdio \"unix-connect:$1\"",
            &[SOCKET],
            format!("{commands}\n").as_bytes(),
        )
        .context("asking HAProxy's runtime API")
    }

    /// What the proxy's file would hold with `colours` live.
    fn render(&self, colours: &BTreeMap<String, String>) -> String {
        let mut conf = String::from(HEADER);
        for (svc, colour) in colours {
            conf.push_str(&format!("# live {svc} {colour}\n"));
        }
        let maint = self.rel.proxy.maintenance_path();
        for (svc, colour) in colours {
            let port = self.rel.services[svc].port.unwrap_or(80);
            match self.kind() {
                ProxyKind::Nginx => {
                    let include = maint.replace("maintenance.inc", "maintenance*.inc");
                    conf.push_str(&format!(
                        "server {{\n    listen {port};\n    include {include};\n    location / {{\n        proxy_pass http://{svc}-{colour}:{port};\n    }}\n}}\n"
                    ));
                }
                ProxyKind::Haproxy => {
                    let found = format!("str(page),map({maint})");
                    conf.push_str(&format!(
                        "frontend {svc}\n    bind :{port}\n    \
                         http-request return status 503 content-type \"text/html; charset=utf-8\" lf-string \"%[{found},b64dec]\" hdr Retry-After {RETRY_AFTER} if {{ {found} -m found }}\n    \
                         default_backend {svc}\nbackend {svc}\n"
                    ));
                    for c in COLOURS {
                        let off = if c == colour { "" } else { " disabled" };
                        // A stopped colour's name does not resolve: a placeholder
                        // (TEST-NET-1, never routed) keeps its address family, so
                        // that the runtime API may set its address later.
                        conf.push_str(&format!(
                            "    server {c} {svc}-{c}:{port} init-addr libc,{PLACEHOLDER}{off}\n"
                        ));
                    }
                }
            }
        }
        conf
    }

    /// Point the proxy at `colours` (service → colour). nginx: write the
    /// file, `nginx -t` (the old file comes back if it fails), reload.
    /// HAProxy: the new colour's servers `ready` and the old ones `drain`
    /// through the runtime API, and the file written for a restart; a
    /// reload only when the backends themselves change (the first release).
    pub fn switch(&self, colours: &BTreeMap<String, String>) -> Result<()> {
        self.switch_share(colours, None)
    }

    /// `switch`, or with `share` (1 to 99, HAProxy only) a canary: both
    /// colours ready, weighted `share` to `100 - share`, the file left
    /// naming the old colour (a restarted proxy serves the old one only).
    pub fn switch_share(
        &self,
        colours: &BTreeMap<String, String>,
        share: Option<u32>,
    ) -> Result<()> {
        let conf = self.render(colours);
        let path = self.rel.proxy.config_path();
        if share.is_some() && self.kind() != ProxyKind::Haproxy {
            bail!("a canary share needs release.proxy.kind = \"haproxy\" (its weights at runtime)");
        }
        match self.kind() {
            ProxyKind::Nginx => {
                self.write_checked(path, &conf, true)?;
                // New workers take over within moments of the reload.
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            }
            ProxyKind::Haproxy => {
                let live = self.live_colours()?;
                let current = self.proxy_sh("cat \"$1\" 2>/dev/null || true", &[path], b"")?;
                let same_backends = !live.is_empty()
                    && live.keys().eq(colours.keys())
                    && current == self.render(&live);
                if !same_backends && share.is_none() {
                    return self.write_checked(path, &conf, true);
                }
                if share.is_none() {
                    self.write_checked(path, &conf, false)?;
                }
                let (mut addrs, mut states) = (Vec::new(), Vec::new());
                for (svc, colour) in colours {
                    let port = self.rel.services[svc].port.unwrap_or(80);
                    // The address Docker gave the colour now (names resolve
                    // only at HAProxy's start).
                    if let Some(ip) = self
                        .container_of(&format!("{svc}-{colour}"))?
                        .map(|n| self.docker.container_image_ip(&n))
                        .transpose()?
                        .flatten()
                        .and_then(|(_, ip, _)| ip)
                    {
                        addrs.push(format!("set server {svc}/{colour} addr {ip} port {port}"));
                    }
                    let old = other(colour);
                    let (w_new, w_old, old_state) = match share {
                        Some(p) => (p.clamp(1, 99), 100 - p.clamp(1, 99), "ready"),
                        None => (1, 1, "drain"),
                    };
                    states.push(format!("set weight {svc}/{colour} {w_new}"));
                    states.push(format!("set weight {svc}/{old} {w_old}"));
                    states.push(format!("set server {svc}/{colour} state ready"));
                    states.push(format!("set server {svc}/{old} state {old_state}"));
                }
                // An address change answers what it did; a state change
                // answers nothing unless it failed.
                let said = if addrs.is_empty() {
                    String::new()
                } else {
                    self.runtime(&addrs.join("; "))?
                };
                let refused: Vec<&str> = said
                    .lines()
                    .filter(|l| {
                        !l.trim().is_empty()
                            && !l.contains("changed from")
                            && !l.contains("no need to change")
                    })
                    .collect();
                let said = if refused.is_empty() {
                    self.runtime(&states.join("; "))?
                } else {
                    refused.join("\n")
                };
                if said.lines().any(|l| !l.trim().is_empty()) {
                    // The file goes back to what it was: it must say what runs.
                    let _ = self.write_checked(path, &current, false);
                    bail!(
                        "HAProxy refused the switch ({}; {}): {}. The proxy's state is unchanged where it refused; \
                         `cargo xtask status {}` shows what serves",
                        addrs.join("; "),
                        states.join("; "),
                        said.trim(),
                        self.env.name
                    );
                }
                self.verify_ready(colours)
            }
        }
    }

    /// Each of `colours`' servers is in service for HAProxy (no maintenance
    /// flag, an address, running).
    fn verify_ready(&self, colours: &BTreeMap<String, String>) -> Result<()> {
        for (svc, colour) in colours {
            let state = self.runtime(&format!("show servers state {svc}"))?;
            // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
            let row = state
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() > 6 && f[3] == colour.as_str());
            let Some(f) = row else {
                bail!("HAProxy has no server {svc}/{colour} (show servers state {svc}): {state}");
            };
            let admin: u32 = f[6].parse().unwrap_or(u32::MAX);
            // SRV_ADMF_MAINT: forced, inherited or resolution maintenance (0x04, "disabled
            // in the configuration", is only a marker).
            if f[5] != "2" || admin & 0x23 != 0 {
                bail!(
                    "HAProxy's server {svc}/{colour} is not in service after the switch (address {}, operational state {}, \
                     admin flags {}): is the container `{svc}-{colour}` running on the proxy's network?",
                    f[4],
                    f[5],
                    f[6]
                );
            }
        }
        Ok(())
    }

    /// Write `text` to `path` in the proxy (the previous file kept as
    /// `.prev`), check the whole configuration, and when `reload`, reload;
    /// a configuration that fails the check puts the previous file back.
    fn write_checked(&self, path: &str, text: &str, reload: bool) -> Result<()> {
        let (check, apply) = match self.kind() {
            ProxyKind::Nginx => ("nginx -t", "nginx -s reload"),
            ProxyKind::Haproxy => (
                "haproxy -c -q -f /etc/haproxy/haproxy.cfg -f \"$(dirname \"$f\")/\"",
                // The master (-W) starts new workers: listeners are
                // handed over, old workers finish their connections.
                "kill -USR2 \"$(cat /run/haproxy.pid)\"",
            ),
        };
        let script = format!(
            "set -e; f=\"$1\"; cat > \"$f.next\"; [ -f \"$f\" ] && cp \"$f\" \"$f.prev\"; mv \"$f.next\" \"$f\"; \
             if ! {check} >/tmp/mre-proxy-check 2>&1; then [ -f \"$f.prev\" ] && mv \"$f.prev\" \"$f\"; cat /tmp/mre-proxy-check >&2; exit 1; fi; \
             if [ \"$2\" = reload ]; then {apply}; fi"
        );
        let mode = if reload { "reload" } else { "keep" };
        self.proxy_sh(&script, &[path, mode], text.as_bytes())
            .with_context(|| format!("writing {path} in the proxy (its old file stays)"))?;
        if reload && self.kind() == ProxyKind::Haproxy {
            // The new worker owns the stats socket once it answers.
            let out = Output::new(false, true, 0);
            wait::until(
                &out,
                "HAProxy's new worker",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    Ok(match self.runtime("show info") {
                        Ok(_) => Poll::Ready(()),
                        Err(e) => Poll::Pending(format!("{e:#}")),
                    })
                },
            )?;
        }
        Ok(())
    }

    /// After a switch away from `from` (service → colour): wait until the
    /// proxy has no request left on those colours, at most `limit`. HAProxy
    /// says how many sessions each server has; nginx's old workers are
    /// given the whole `limit`.
    pub fn drain(
        &self,
        out: &Output,
        from: &BTreeMap<String, String>,
        limit: Duration,
    ) -> Result<()> {
        if from.is_empty() {
            return Ok(());
        }
        if self.kind() == ProxyKind::Nginx {
            return wait::sleep(limit);
        }
        let waited = wait::until(
            out,
            "the old colour to drain",
            limit,
            Duration::from_millis(100),
            || {
                let stat = self.runtime("show stat")?;
                let busy: Vec<String> = stat
                    .lines()
                    .map(|l| l.split(',').collect::<Vec<_>>())
                    .filter(|f| f.len() > 4 && from.get(f[0]).is_some_and(|c| c == f[1]))
                    .filter(|f| f[4] != "0")
                    .map(|f| format!("{}/{}: {} request(s)", f[0], f[1], f[4]))
                    .collect();
                Ok(if busy.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(busy.join(", "))
                })
            },
        )?;
        if let Waited::TimedOut(why) = waited {
            out.warn(&format!(
                "the old colour still had requests after {} s ({why}); stopping it ends them",
                limit.as_secs()
            ));
        }
        Ok(())
    }

    /// Whether maintenance mode is on, and its message.
    pub fn maintenance_state(&self) -> Result<Option<String>> {
        let path = self.rel.proxy.maintenance_path();
        let text = self.proxy_sh("cat \"$1\" 2>/dev/null || true", &[&path], b"")?;
        let on = match self.kind() {
            ProxyKind::Nginx => !text.trim().is_empty(),
            ProxyKind::Haproxy => text.lines().any(|l| l.starts_with("page ")),
        };
        Ok(on.then(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("# maintenance: "))
                .unwrap_or("")
                .to_string()
        }))
    }

    /// Maintenance mode on (`Some(message)`) or off (`None`). HAProxy: the
    /// map file written and its entry set at runtime (no reload); nginx:
    /// the included file written or removed, then `nginx -t` and a reload.
    pub fn set_maintenance(&self, message: Option<&str>) -> Result<()> {
        let path = self.rel.proxy.maintenance_path();
        let page = message.map(page);
        let note = message
            .map(|m| format!("# maintenance: {}\n", one_line(m)))
            .unwrap_or_default();
        match self.kind() {
            ProxyKind::Haproxy => {
                let file = match &page {
                    Some(p) => format!("{note}page {}\n", base64(p.as_bytes())),
                    None => String::new(),
                };
                self.proxy_sh(
                    "set -e; cat > \"$1.next\"; mv \"$1.next\" \"$1\"",
                    &[&path],
                    file.as_bytes(),
                )
                .with_context(|| format!("writing {path} in the proxy"))?;
                let mut commands = vec![format!("clear map {path}")];
                if let Some(p) = &page {
                    commands.push(format!("add map {path} page {}", base64(p.as_bytes())));
                }
                let said = self.runtime(&commands.join("; "))?;
                if said.lines().any(|l| !l.trim().is_empty()) {
                    bail!("HAProxy refused maintenance mode ({path}): {}", said.trim());
                }
                Ok(())
            }
            ProxyKind::Nginx => {
                let body = match &page {
                    Some(p) => format!(
                        "{note}default_type text/html;\nadd_header Retry-After {RETRY_AFTER} always;\nreturn 503 '{p}';\n"
                    ),
                    None => String::new(),
                };
                self.proxy_sh(
                    "set -e; if [ \"$2\" = on ]; then cat > \"$1\"; else rm -f \"$1\"; fi",
                    &[&path, if page.is_some() { "on" } else { "off" }],
                    body.as_bytes(),
                )
                .with_context(|| format!("writing {path} in the proxy"))?;
                let live = self.live_colours()?;
                if live.is_empty() {
                    self.proxy_sh("nginx -t 2>&1 && nginx -s reload", &[], b"")?;
                    Ok(())
                } else {
                    // Rewritten with its include line (files of older
                    // releases lack it), checked, reloaded.
                    self.switch(&live)
                }
            }
        }
    }
}

/// The proxy of `env` when maintenance mode applies to it: a release on
/// Compose (`[release]` with its proxy). None otherwise.
fn stage_of(env: &Env) -> Option<Result<Proxy<'_>>> {
    let rel = env.settings.release.as_ref()?;
    if env.settings.driver != Driver::Compose {
        return None;
    }
    Some(Proxy::new(env, rel))
}

/// HAProxy's `show stat` (CSV) of `env`'s proxy: None when it has no
/// running HAProxy (nginx keeps no per-server counters to read).
pub fn stat_csv(env: &Env) -> Option<Result<String>> {
    let stage = match stage_of(env)? {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    if stage.kind() != ProxyKind::Haproxy || stage.container().is_err() {
        return None;
    }
    Some(stage.runtime("show stat"))
}

/// Whether `env` has a proxy maintenance mode can be set on.
pub fn maintenance_applies(env: &Env) -> bool {
    stage_of(env).is_some()
}

/// The proxy's container of `env`, when it has one running.
pub fn proxy_container_of(env: &Env) -> Option<String> {
    stage_of(env)?.ok()?.container().ok()
}

/// Maintenance mode of `env`'s proxy: `Some(message)` when on; None when
/// off, or when there is no proxy (not a release, or not running).
pub fn maintenance_state(env: &Env) -> Result<Option<String>> {
    let Some(stage) = stage_of(env) else {
        return Ok(None);
    };
    let stage = stage?;
    if stage.container().is_err() {
        return Ok(None);
    }
    stage.maintenance_state()
}

/// Maintenance mode on (`Some(message)`) or off on `env`'s proxy.
pub fn set_maintenance(env: &Env, message: Option<&str>) -> Result<()> {
    let Some(stage) = stage_of(env) else {
        bail!(
            "`{}` has no proxy maintenance mode can be set on: it needs `[environments.{0}.release]` with its proxy, on Compose",
            env.name
        );
    };
    stage?.set_maintenance(message)
}

/// The maintenance page: one line of HTML, the message escaped (no quote,
/// `$` or backslash left, so nginx's string and HAProxy's map take it).
fn page(message: &str) -> String {
    let escaped: String = one_line(message)
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            '$' => "&#36;".to_string(),
            '\\' => "&#92;".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>\
         <body><h1>Down for maintenance</h1><p>{escaped}</p><p>Please try again in a few minutes.</p></body></html>"
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Standard base64 (HAProxy's `b64dec` reads it back): the page goes into
/// the map as one word.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_page() {
        assert_eq!(super::base64(b"ab"), "YWI=");
        assert_eq!(super::base64(b"abc"), "YWJj");
        assert_eq!(super::base64(b"a"), "YQ==");
        let p = super::page("back at 10:00 <UTC> & 'soon' $x");
        assert!(p.contains("back at 10:00 &lt;UTC&gt; &amp; &#39;soon&#39; &#36;x"));
        assert!(!p.contains('\'') && !p.contains('$') && !p.contains('\n'));
    }
}
