//! A client's load on a stand-in: GET /api/health (or another path, with
//! the status it must answer) through the proxy (on loopback, or another
//! address) in a loop (curl, one request at a time), counting what failed
//! and why.

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

    /// GET `path` in a loop; any answer but `status` counts as failed.
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
                    Ok(out) if String::from_utf8_lossy(&out.stdout) == want => {
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
