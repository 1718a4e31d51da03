//! A migrations folder and a throwaway PostgreSQL 15 with an ops.toml for
//! both (`development` and `staging`), shared by the migration tests.

use std::path::PathBuf;
use std::process::Command;

use super::ops::OpsToml;
use super::pg::{Pg, PASSWORD};
use super::{xtask_env, Run, TempDir};

pub const PW_VAR: &str = "MIG_TEST_PASSWORD";

/// Prisma's DDL, as shared/reference/prisma-migrate.md quotes it from
/// prisma-engines (`create_migrations_table`).
pub const PRISMA_DDL: &str = "CREATE TABLE _prisma_migrations (
  id                  VARCHAR(36) PRIMARY KEY NOT NULL,
  checksum            VARCHAR(64) NOT NULL,
  finished_at         TIMESTAMPTZ,
  migration_name      VARCHAR(255) NOT NULL,
  logs                TEXT,
  rolled_back_at      TIMESTAMPTZ,
  started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
  applied_steps_count INTEGER NOT NULL DEFAULT 0
);";

pub struct Setup {
    pub pg: Pg,
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(extra: &str) -> Setup {
        let pg = Pg::start();
        let dir = TempDir::new("migrations");
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        let mut ops = OpsToml::new();
        for env in ["development", "staging"] {
            ops = ops
                .env(env, &[])
                .section(
                    env,
                    "compose",
                    &["files = [\"none.yml\"]", "project = \"mig-test\""],
                )
                .database(env, pg.port, PW_VAR)
                .section(
                    env,
                    "migrations",
                    &["dir = \"migrations\"", "lock_wait_secs = 30", extra],
                );
        }
        let toml = ops.build();
        let config = dir.write("ops.toml", &toml);
        Setup { pg, dir, config }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        xtask_env(&self.config, args, &[(PW_VAR, PASSWORD)])
    }

    pub fn migration(&self, name: &str, sql: &str) -> PathBuf {
        let d = self.dir.path().join("migrations").join(name);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("migration.sql");
        std::fs::write(&f, sql).unwrap();
        f
    }

    pub fn rows(&self) -> Vec<Vec<String>> {
        self.pg
            .psql(
                "SELECT id, checksum, migration_name, finished_at IS NOT NULL, rolled_back_at IS NOT NULL, \
                 replace(coalesce(logs, '<null>'), E'\\n', ' '), applied_steps_count FROM _prisma_migrations ORDER BY started_at, migration_name",
            )
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }
}

pub fn spawn_deploy(s: &Setup) -> std::process::Child {
    Command::new(super::XTASK)
        .args(["--config", s.config.to_str().unwrap(), "migrate", "deploy"])
        .env(PW_VAR, PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Kill -9 the xtask once `sql` runs on the server, then end its server
/// session (as the server does when it notices the client is gone).
pub fn kill_while_running(s: &Setup, marker: &str) {
    let mut child = spawn_deploy(s);
    let start = std::time::Instant::now();
    loop {
        let n = s.pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        ));
        if n != "0" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the migration never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    s.pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    ));
    wait_for_value(
        &s.pg,
        "the killed run's session to end",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"),
        "0",
        30,
    );
}

/// psql running `sql` in the background (a session holding a lock, an open
/// transaction); killed on drop.
pub fn psql_background(pg: &Pg, sql: &str) -> super::Child {
    let child = Command::new(format!("{}/psql", super::pg::PG_BIN))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
        .args(["-U", "pacetracer", "-d", "pacetracer", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running psql");
    super::Child(child)
}

/// Poll `sql` (one value) until it returns `want`; fail after `secs` naming `what`.
pub fn wait_for_value(pg: &Pg, what: &str, sql: &str, want: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let got = pg.psql(sql);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {secs} s for {what}: `{sql}` gives {got:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// kill -9 a running `migrate deploy` once `ready` (a query giving `t`) says
/// so, and leave its server session alone: the server goes on with the
/// statement it was running, as it does when a client dies.
pub fn kill_when(s: &Setup, what: &str, ready: &str) {
    let mut child = spawn_deploy(s);
    wait_for_value(&s.pg, what, ready, "t", 30);
    child.kill().unwrap();
    child.wait().unwrap();
}
