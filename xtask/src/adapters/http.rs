//! HTTP (ureq): one request with a deadline (GET, or POST with a JSON
//! body, with headers), and failures explained in words an operator can act
//! on.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

/// GET `url`, giving up after `timeout`. Any status is a reply; only a
/// failure to get one is an error, described for a human (`{e}` is the
/// whole sentence).
pub fn get(url: &str, timeout: Duration) -> Result<Reply> {
    request("GET", url, &[], None, timeout)
}

/// `method` (GET or POST) `url` with `headers` and, for POST, a JSON
/// `body`; no redirects followed. Any status is a reply.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        // Health answers are small; ureq's default 128 KiB buffers cost a
        // millisecond each to zero in a debug build.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(4 * 1024)
        .build()
        .into();
    let start = Instant::now();
    let sent = if method == "POST" {
        let mut req = agent.post(url).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send(body.unwrap_or(""))
    } else {
        let mut req = agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call()
    };
    let mut response = sent.map_err(|e| anyhow!(describe(&e, url, timeout)))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|e| anyhow!(describe(&e, url, timeout)))?;
    Ok(Reply {
        status,
        body,
        elapsed: start.elapsed(),
    })
}

/// POST a JSON document (webhooks: release notices, alerts). The URL is
/// never put in the error (webhook URLs carry their token).
pub fn post_json(url: &str, body: &str, timeout: Duration) -> Result<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let start = Instant::now();
    let mut response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| anyhow!(describe(&e, "the webhook", timeout)))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Ok(Reply {
        status,
        body,
        elapsed: start.elapsed(),
    })
}

fn describe(e: &ureq::Error, url: &str, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => {
            format!("no answer from {url} within {} s", timeout.as_secs_f64())
        }
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused at {url}: nothing is listening on that port")
        }
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            format!("no answer from {url} within {} s", timeout.as_secs_f64())
        }
        ureq::Error::ConnectionFailed => {
            format!("connection to {url} failed: nothing is listening, or a firewall drops it")
        }
        ureq::Error::HostNotFound => format!("host of {url} not found (DNS)"),
        ureq::Error::BadUri(u) => format!("`{u}` is not a valid URL"),
        other => format!("request to {url} failed: {other}"),
    }
}
