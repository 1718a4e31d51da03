//! Continuous archiving and point-in-time restore against real PostgreSQL 15
//! in the demo's database image: the RPO (a writer's rows lost when the
//! database container and its volume are destroyed, then `restore
//! --to-latest`), a dropped table brought back by `restore --to-time`, and a
//! gap in the WAL archive found by `backup status`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ops::OpsToml;
use common::pg::PG_BIN;
use common::*;

const PASSWORD: &str = "wal-test-Secret-9";

/// A database container of the demo's image on a network and a volume of
/// its own, with an ops.toml whose environment `t` archives continuously.
/// Every container, volume and network named after it is removed on drop.
struct Db {
    name: String,
    port: u16,
    dir: TempDir,
    config: PathBuf,
}

impl Db {
    fn start(tag: &str) -> Db {
        ensure_demo_images();
        let name = format!("mre-test-wal-{tag}-{}", std::process::id());
        let port = free_port();
        docker(&["network", "create", &name]);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &name,
            "-e",
            "POSTGRES_USER=pacetracer",
            "-e",
            "POSTGRES_DB=pacetracer",
            "-e",
            &format!("POSTGRES_PASSWORD={PASSWORD}"),
            "-v",
            &format!("{name}:/var/lib/postgresql/data"),
            "-p",
            &format!("127.0.0.1:{port}:5432"),
            "mre-demo-postgres:15",
        ]);
        let dir = TempDir::new(tag);
        let ops = OpsToml::new()
            .env("t", &[])
            .section(
                "t",
                "compose",
                &["files = [\"unused.yml\"]", "project = \"unused-t\""],
            )
            .database("t", port, "TEST_PG_PASSWORD")
            .raw(&format!("container = \"{name}\""))
            .section(
                "t",
                "backups",
                &["continuous = true", "max_archive_lag = \"30s\""],
            );
        let config = dir.write("ops.toml", &ops.build());
        let db = Db {
            name,
            port,
            dir,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.try_psql("SELECT 1").is_none() {
            assert!(Instant::now() < deadline, "the database did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        db
    }

    fn run(&self, args: &[&str]) -> Run {
        xtask_env(&self.config, args, &[("TEST_PG_PASSWORD", PASSWORD)])
    }

    fn try_psql(&self, sql: &str) -> Option<String> {
        let o = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "pacetracer",
                "-d",
                "pacetracer",
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("running psql (apt-get install postgresql-15)");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|| panic!("psql failed: {sql}"))
    }

    fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("backups/t/archive/wal")
    }

    /// The database container and its volume, gone as a lost disk.
    fn destroy(&self) {
        let volume = docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Name}}{{end}}",
            &self.name,
        ]);
        docker(&["rm", "-f", &self.name]);
        docker(&["volume", "rm", &volume]);
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name={}", self.name)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let vols = Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name={}", self.name),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for v in vols.split_whitespace() {
            let _ = Command::new("docker").args(["volume", "rm", v]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// A writer inserting a numbered row every 100 ms through one psql
/// session; the highest number the server acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Db) -> Writer {
        let mut child = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1"])
            .args([
                "-p",
                &db.port.to_string(),
                "-U",
                "pacetracer",
                "-d",
                "pacetracer",
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting psql");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicI64::new(0));
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let a = acked.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(n) = line.trim().parse::<i64>() {
                    a.fetch_max(n, Ordering::SeqCst);
                }
            }
        });
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let sql = format!("INSERT INTO laps (n) VALUES ({n}) RETURNING n;\n");
                if stdin.write_all(sql.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.acked.load(Ordering::SeqCst)
    }
}

/// RPO: the database container and its volume destroyed under a writer;
/// `restore --to-latest` from the archive loses at most 1 s of rows.
#[test]
fn restore_to_latest_after_the_volume_is_lost_keeps_all_but_a_second() {
    let db = Db::start("rpo");
    let r = db.run(&["backup", "continuous", "start", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.all().contains(PASSWORD),
        "the password was printed: {r:?}"
    );
    db.psql("CREATE TABLE laps (n bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let w = Writer::start(&db);
    std::thread::sleep(Duration::from_secs(3));
    db.destroy();
    let acked = w.stop();
    assert!(acked >= 20, "the writer wrote only {acked} rows");

    let started = Instant::now();
    let r = db.run(&["restore", "t", "--to-latest"]);
    let rto = started.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Time reached: "), "{r:?}");
    let present: i64 = db
        .psql(&format!("SELECT count(*) FROM laps WHERE n <= {acked}"))
        .parse()
        .unwrap();
    let lost = acked - present;
    eprintln!(
        "RPO: {lost} of {acked} acknowledged rows lost ({} ms of writes); restore --to-latest took {:.1} s",
        lost * 100,
        rto.as_secs_f64()
    );
    assert!(lost <= 10, "{lost} rows lost (more than 1 s): {r:?}");
    // The incident record names the base backup and the time reached.
    let incidents = db.dir.path().join("backups/t/incidents");
    let record = std::fs::read_dir(&incidents)
        .unwrap_or_else(|e| panic!("{}: {e}", incidents.display()))
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .find(|t| t.contains("base backup"))
        .expect("an incident record of the point-in-time restore");
    assert!(
        record.contains("success") && !record.contains(PASSWORD),
        "{record}"
    );
    // Archiving goes on, on the new timeline.
    let s = db.run(&["backup", "status", "t"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(s.stdout.contains("timeline 2"), "{s:?}");
    // A deploy whose Compose file names the volume from before the restore
    // is refused before `docker compose up` could recreate the database on
    // it; nothing is started.
    db.dir.write(
        "unused.yml",
        "services:\n  db:\n    image: mre-demo-postgres:15\n    volumes: [\"pgdata:/var/lib/postgresql/data\"]\nvolumes:\n  pgdata: {}\n",
    );
    let d = db.run(&["deploy", "t"]);
    assert_eq!(d.code, 2, "{d:?}");
    assert!(
        d.stderr.contains("since a point-in-time restore") && d.stderr.contains("external: true"),
        "{d:?}"
    );
    assert!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=com.docker.compose.project=unused-t"
        ])
        .is_empty(),
        "{d:?}"
    );
    // `monitor` exports the lag and evaluates ArchiveLag.
    let prom = db.dir.path().join("metrics.prom");
    let m = db.run(&[
        "--json",
        "monitor",
        "t",
        "--prometheus",
        prom.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&prom).unwrap_or_else(|_| panic!("no metrics file: {m:?}"));
    assert!(text.contains("mre_backup_archive_lag_seconds{"), "{text}");
    assert!(text.contains("mre_backup_archive_lag_bytes{"), "{text}");
    assert!(m.stdout.contains("\"ArchiveLag\""), "{m:?}");
}

/// PITR: a table dropped at T comes back whole with `--to-time T-1s`; rows
/// of other tables written before that are kept, the old container is kept.
/// Ctrl-C during the replay first leaves the old database serving and
/// nothing of the restore behind. Then, on the archive of the new timeline, a segment deleted: `backup
/// status` exits 1 and names it (one database for both: the suite is lean).
#[test]
fn restore_to_time_brings_back_a_dropped_table_and_status_finds_a_gap() {
    let db = Db::start("pitr");
    assert_eq!(db.run(&["backup", "continuous", "start", "t"]).code, 0);
    db.psql(
        "CREATE TABLE laps (n int PRIMARY KEY); INSERT INTO laps SELECT generate_series(1, 5000); \
         CREATE TABLE notes (n int); INSERT INTO notes VALUES (1)",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let t = db.psql("SELECT (clock_timestamp() - interval '1 second')::timestamptz(3)::text");
    db.psql("DROP TABLE laps; INSERT INTO notes VALUES (2)");

    let dry = db.run(&["restore", "t", "--to-time", &t, "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("Dry run"), "{dry:?}");
    assert_eq!(
        db.psql("SELECT count(*) FROM notes"),
        "2",
        "the dry run changed something"
    );

    // Ctrl-C while the WAL is replayed: every step undone, the old
    // database serving as it was, nothing of the restore left.
    let mut child = Command::new(XTASK)
        .arg("--config")
        .arg(&db.config)
        .args(["restore", "t", "--to-time", &t, "--yes"])
        .env("TEST_PG_PASSWORD", PASSWORD)
        .env_remove("GITHUB_ACTIONS")
        .env_remove("DOCKER_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask restore");
    let mut seen = String::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("[3/") {
            let pid = child.id().to_string();
            Command::new("kill").args(["-INT", &pid]).status().unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert_eq!(db.psql("SELECT count(*) FROM notes"), "2", "{seen}");
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={}-pitr", db.name),
        "-q",
    ]) + &docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}-pitr", db.name),
    ]);
    assert!(
        left.is_empty(),
        "the interrupted restore left {left}: {seen}"
    );

    // kill -9 while the WAL is replayed: no undo ran; `recover` removes
    // the replay's container and volume from the record written first.
    let mut child = Command::new(XTASK)
        .arg("--config")
        .arg(&db.config)
        .args(["restore", "t", "--to-time", &t, "--yes"])
        .env("TEST_PG_PASSWORD", PASSWORD)
        .env_remove("GITHUB_ACTIONS")
        .env_remove("DOCKER_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask restore");
    let pitr_left = || {
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={}-pitr", db.name),
            "-q",
        ]) + &docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name={}-pitr", db.name),
        ])
    };
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("[3/") {
        line.clear();
    }
    let waited = Instant::now();
    while docker(&["ps", "-q", "--filter", &format!("name={}-pitr", db.name)]).is_empty()
        && waited.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    assert!(
        !pitr_left().is_empty(),
        "the kill came too late to leave anything"
    );
    let r = db.run(&["recover", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        pitr_left().is_empty(),
        "recover left {}: {r:?}",
        pitr_left()
    );
    assert_eq!(db.psql("SELECT count(*) FROM notes"), "2", "{r:?}");

    let r = db.run(&["restore", "t", "--to-time", &t, "--yes"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Base backup chosen"), "{r:?}");
    assert_eq!(db.psql("SELECT count(*) FROM laps"), "5000");
    assert_eq!(db.psql("SELECT string_agg(n::text, ',') FROM notes"), "1");
    // What was there before is kept, renamed, never deleted.
    let kept = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={}__replaced_", db.name),
        "--format",
        "{{.Names}}",
    ]);
    assert!(!kept.is_empty(), "the replaced container is gone: {r:?}");

    // A segment deleted from the archive.
    let ok = db.run(&["backup", "status", "t", "--json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc: serde_json::Value = serde_json::from_str(&ok.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true, "{ok:?}");
    assert!(doc["last_base_backup"]["name"].is_string(), "{ok:?}");
    db.psql("CREATE TABLE gap (n int)");
    for i in 0..3 {
        db.psql(&format!(
            "INSERT INTO gap VALUES ({i}); SELECT pg_switch_wal()"
        ));
    }
    // Wait until the three switched segments are archived.
    let complete = || {
        let mut v: Vec<String> = std::fs::read_dir(db.wal_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24)
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while complete().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "segments not archived: {:?}",
            complete()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let segs = complete();
    let victim = &segs[segs.len() - 2];
    std::fs::remove_file(db.wal_dir().join(victim)).unwrap();
    let r = db.run(&["backup", "status", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.all().contains(victim.as_str()),
        "the missing segment is not named: {r:?}"
    );
    assert!(
        r.all().contains("cargo xtask backup base t"),
        "no next step: {r:?}"
    );
    // `assess` finds it too, among its checks.
    let r = db.run(&["assess", "t"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.all().contains("WAL archive continuity") && r.all().contains(victim.as_str()),
        "{r:?}"
    );
}
