//! A throwaway PostgreSQL 15 server for one test: initdb into a temporary
//! folder, started on a free loopback port, stopped and removed on drop.
//! Real PostgreSQL, no container needed; fails (never skips) with the way
//! to get it when the binaries are missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, TempDir};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PASSWORD: &str = "test-pw-Zq81xv";

pub struct Pg {
    pub port: u16,
    dir: TempDir,
}

fn as_postgres(program: &str) -> Command {
    let path = format!("{PG_BIN}/{program}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: these tests need the PostgreSQL 15 server binaries. \
         Install them with `apt-get install postgresql-15` (.ci/run does this on CI)."
    );
    // initdb and postgres refuse to run as root.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

impl Pg {
    /// A running server with superuser and database `pacetracer` (password
    /// `PASSWORD`, scram-sha-256 over TCP).
    pub fn start() -> Pg {
        Pg::start_with(None)
    }

    /// A server that takes TCP connections over TLS only (`ssl = on`, its
    /// certificate and key given; pg_hba `hostssl`, no `host` line): a
    /// plain-text connection is refused ("no encryption").
    pub fn start_tls(cert: &Path, key: &Path) -> Pg {
        Pg::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> Pg {
        let dir = TempDir::new("pg");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres", &dir.path().display().to_string()])
            .status();
        let data = dir.path().join("data");
        let pwfile = dir.write("pw", PASSWORD);
        let _ = Command::new("chown")
            .args(["postgres", &pwfile.display().to_string()])
            .status();
        let out = as_postgres("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "pacetracer",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = data.join(to);
                std::fs::copy(from, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                let _ = Command::new("chown")
                    .args(["postgres", &to.display().to_string()])
                    .status();
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let port = free_port();
        let log = dir.path().join("log");
        let out = as_postgres("pg_ctl")
            .args([
                "-D",
                &data.display().to_string(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "30",
                "start",
                "-o",
            ])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{options}",
                dir.path().display()
            ))
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pg = Pg { port, dir };
        pg.psql_db("postgres", "CREATE DATABASE pacetracer");
        pg
    }

    pub fn url(&self) -> String {
        self.url_for("pacetracer")
    }

    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://pacetracer:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run SQL with psql in database `pacetracer`; stdout (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("pacetracer", sql)
    }

    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args([
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "pacetracer",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args([
                "-D",
                &self.data_dir().display().to_string(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
