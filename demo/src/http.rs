//! Minimal HTTP/1.1 server on `std::net`: a thread per connection (max 64), `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 64;
const MAX_BODY: usize = 64 * 1024;
const MAX_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// Header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Query parameter (no percent-decoding; the API only takes plain numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::raw(status, "application/json", value.to_string())
    }

    pub fn raw(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// Serves forever on `0.0.0.0:port`, calling `handler` for every request.
pub fn serve<H>(port: u16, handler: H) -> Result<(), String>
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind 0.0.0.0:{port}: {e}"))?;
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_response(
                &mut stream,
                &error_response(503, "BUSY", "too many connections"),
                true,
            );
            continue;
        }
        let (handler, active) = (handler.clone(), active.clone());
        std::thread::spawn(move || {
            // The connection counts until its answer is written; the log
            // line after it (stdout can block under load) does not.
            handle_connection(stream, &*handler, || {
                active.fetch_sub(1, Ordering::SeqCst);
            });
        });
    }
    Ok(())
}

/// `{"success":false,"error":{"code":..,"message":..}}`, keys in this order.
pub fn error_body(code: &str, message: &str) -> String {
    let error = serde_json::json!({"code": code, "message": message});
    format!("{{\"success\":false,\"error\":{error}}}")
}

pub fn error_response(status: u16, code: &str, message: &str) -> Response {
    Response::raw(status, "application/json", error_body(code, message))
}

fn handle_connection(
    mut stream: TcpStream,
    handler: &dyn Fn(&Request) -> Response,
    done: impl FnOnce(),
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let start = Instant::now();
    let mut head_only = false;
    let (label, response) = match read_request(&stream) {
        Ok(mut req) => {
            let label = format!("{} {}", req.method, req.path);
            // HEAD (e.g. GNU `wget --spider` health checks) is answered like GET, without body.
            if req.method == "HEAD" {
                head_only = true;
                req.method = "GET".into();
            }
            (label, handler(&req))
        }
        Err(None) => {
            done();
            return; // connection closed or timed out before a request arrived
        }
        Err(Some((status, msg))) => (
            "- -".to_string(),
            error_response(status, "BAD_REQUEST", msg),
        ),
    };
    let _ = write_response(&mut stream, &response, !head_only);
    drop(stream);
    done();
    crate::log(&format!(
        "{label} {} {}ms",
        response.status,
        start.elapsed().as_millis()
    ));
}

type ReadError = Option<(u16, &'static str)>;

fn read_line(reader: &mut BufReader<&TcpStream>) -> Result<String, ReadError> {
    let mut line = String::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|_| None)?;
    if n == 0 {
        return Err(None);
    }
    if !line.ends_with('\n') {
        return Err(Some((431, "request line or header too long")));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_request(stream: &TcpStream) -> Result<Request, ReadError> {
    let mut reader = BufReader::new(stream);
    let line = read_line(&mut reader)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Some((400, "malformed request line")));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Some((400, "malformed request line")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(Some((431, "too many headers")));
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(Some((400, "malformed header")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(Some((
            411,
            "chunked bodies are not supported; send Content-Length",
        )));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| Some((400, "invalid Content-Length")))?,
    };
    if len > MAX_BODY {
        return Err(Some((413, "request body larger than 64 KiB")));
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body).map_err(|_| None)?;
    Ok(req)
}

fn write_response(stream: &mut TcpStream, r: &Response, body: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if body {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
