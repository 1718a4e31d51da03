//! A client's load on a stand-in: GET /api/health (or another path, with
//! the status it must answer) through the proxy (on loopback, or another
//! address) in a loop, counting what failed and why: curl, a new
//! connection per request; or `keep_alive`, many HTTP/1.1 connections each
//! reused for request after request (a connection the proxy closes between
//! two requests is a failed request, as `wrk` counts it).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests against the proxy in a loop until stopped: (ok, failed).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
    /// When each failed request started, from the load's start.
    failed_at: Arc<Mutex<Vec<Duration>>>,
    started: Instant,
}

impl Load {
    pub fn start(port: u16) -> Load {
        Load::expecting(port, "/api/health", "200")
    }

    /// GET /api/health on `host:port` (an engine in a namespace).
    pub fn start_at(host: &str, port: u16) -> Load {
        Load::expecting_at(host, port, "/api/health", "200")
    }

    /// GET `path` in a loop; any answer but `status` (or one of `200|503`)
    /// counts as failed.
    pub fn expecting(port: u16, path: &str, status: &str) -> Load {
        Load::expecting_at("127.0.0.1", port, path, status)
    }

    pub fn expecting_at(host: &str, port: u16, path: &str, status: &str) -> Load {
        let (host, path, want) = (host.to_string(), path.to_string(), status.to_string());
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let failed_at = Arc::new(Mutex::new(Vec::new()));
        let at = failed_at.clone();
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            let mut why = Vec::new();
            let url = format!("http://{host}:{port}{path}");
            while !s.load(Ordering::SeqCst) {
                let sent = t0.elapsed();
                match std::process::Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "5",
                        &url,
                    ])
                    .output()
                {
                    Ok(out)
                        if want
                            .split('|')
                            .any(|w| String::from_utf8_lossy(&out.stdout) == w) =>
                    {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(out) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        at.lock().unwrap().push(sent);
                        why.push(String::from_utf8_lossy(&out.stdout).into_owned());
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        at.lock().unwrap().push(sent);
                        why.push(e.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            why
        });
        Load {
            stop,
            ok,
            failed,
            handle: Some(handle),
            failed_at,
            started: t0,
        }
    }

    /// `conns` HTTP/1.1 connections to 127.0.0.1:`port`, each sending GET
    /// `path` again and again on the same connection; any answer but
    /// `status` (`200`) fails, and so does a connection closed, reset or
    /// refused under a request (then a new one is opened). A server that
    /// says `Connection: close` is obeyed (a new connection, no failure).
    pub fn keep_alive(port: u16, conns: usize, path: &str, status: u16) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let failed_at = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let (s, o, f, at, path) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            failed_at.clone(),
            path.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let why = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..conns {
                    scope.spawn(|| {
                        let mut conn: Option<KeptConn> = None;
                        while !s.load(Ordering::SeqCst) {
                            let sent = t0.elapsed();
                            let c = match conn.take() {
                                Some(c) => Ok(c),
                                None => KeptConn::open(port),
                            };
                            match c.and_then(|mut c| {
                                c.get(&path).map(|(st, keep, body)| (c, st, keep, body))
                            }) {
                                Ok((c, st, keep, body)) => {
                                    if st == status {
                                        o.fetch_add(1, Ordering::SeqCst);
                                    } else {
                                        f.fetch_add(1, Ordering::SeqCst);
                                        at.lock().unwrap().push(sent);
                                        let body: String = body.chars().take(80).collect();
                                        why.lock().unwrap().push(format!("status {st}: {body}"));
                                    }
                                    if keep {
                                        conn = Some(c);
                                    }
                                }
                                Err(e) => {
                                    f.fetch_add(1, Ordering::SeqCst);
                                    at.lock().unwrap().push(sent);
                                    why.lock().unwrap().push(e.to_string());
                                }
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    });
                }
            });
            why.into_inner().unwrap()
        });
        Load {
            stop,
            ok,
            failed,
            handle: Some(handle),
            failed_at,
            started: t0,
        }
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the failed requests were sent, from the load's start.
    pub fn failed_at(&self) -> Vec<Duration> {
        self.failed_at.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let why = self.handle.take().unwrap().join().unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            why,
        )
    }
}

/// One kept-alive HTTP/1.1 connection.
struct KeptConn {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl KeptConn {
    fn open(port: u16) -> std::io::Result<KeptConn> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(KeptConn {
            reader: std::io::BufReader::new(stream),
        })
    }

    /// GET `path`: the status, whether the connection may be reused, and
    /// the body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, bool, String)> {
        use std::io::{BufRead, Read, Write};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        self.reader
            .get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection was closed before an answer (a kept-alive connection dropped)",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("not an HTTP status line: {line:?}")))?;
        let (mut length, mut keep) = (0usize, true);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(bad("the connection was closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().map_err(|_| bad("a bad Content-Length"))?;
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    keep = false;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, keep, String::from_utf8_lossy(&body).into_owned()))
    }
}
