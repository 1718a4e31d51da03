//! Disaster Recovery Procedures against real PostgreSQL: backups of a
//! throwaway server from the host (round trip with content equality,
//! corruption, truncation, a failed dump, a failed restore, retention, the
//! production guard), and of the demo stack from inside its database
//! container (dump inside vs from the host, restore of a running stack).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD, PG_BIN};
use common::stack::Stack;
use common::*;

/// ops.toml for a throwaway server: `t` (plain) and `prod` (protected), both
/// on its `pacetracer` database, backups from the host.
fn host_config(dir: &TempDir, pg: &Pg, extra: &str) -> PathBuf {
    let mut ops = OpsToml::new();
    for (env, protected) in [("t", false), ("prod", true)] {
        ops = ops
            .env(env, &[&format!("protected = {protected}")])
            .section(
                env,
                "compose",
                &[
                    "files = [\"unused.yml\"]",
                    &format!("project = \"unused-{env}\""),
                ],
            )
            .database(env, pg.port, "TEST_PG_PASSWORD")
            .section(
                env,
                "backups",
                &["method = \"host\"", "offsite = \"offsite\"", extra],
            );
    }
    dir.write("ops.toml", &ops.build())
}

fn run(config: &Path, args: &[&str]) -> Run {
    xtask_env(config, args, &[("TEST_PG_PASSWORD", PASSWORD)])
}

/// Every table's rows, as text, hashed: equal fingerprints, equal contents.
fn fingerprint(pg: &Pg) -> String {
    pg.psql(
        "SELECT string_agg(t || ':' || h, ' ' ORDER BY t) FROM ( \
           SELECT 'public.kinds' t, md5(coalesce(string_agg(k::text, '|' ORDER BY k::text), '')) h FROM public.kinds k \
           UNION ALL SELECT 'public.laps', md5(coalesce(string_agg(l::text, '|' ORDER BY l::text), '')) FROM public.laps l \
           UNION ALL SELECT 'other.notes', md5(coalesce(string_agg(n::text, '|' ORDER BY n::text), '')) FROM other.notes n) x",
    )
}

fn seed(pg: &Pg) {
    pg.psql(
        r#"
CREATE TABLE kinds (
  id serial PRIMARY KEY, raw bytea, txt text, doc jsonb, num numeric(30,10),
  at timestamptz, flag boolean, arr int[]);
INSERT INTO kinds (raw, txt, doc, num, at, flag, arr)
  SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), ''), 'hex'), 'ünïcødé ✓ ' || repeat('x', 3000) || E'\n\t\\',
         '{"a": [1, 2, {"b": null}]}', 12345678901234567890.0123456789, '2025-01-27T00:00:00Z', true, ARRAY[1,NULL,3]
  FROM generate_series(0, 255) b;
INSERT INTO kinds (raw, txt) VALUES (NULL, NULL), ('\x00', '');
CREATE TABLE laps (id bigserial PRIMARY KEY, kind int REFERENCES kinds(id), seq bigint UNIQUE, driver text);
INSERT INTO laps (kind, seq, driver) SELECT 1, g, 'driver ' || (g % 7) FROM generate_series(1, 20000) g;
CREATE SCHEMA other;
CREATE TABLE other.notes (id int PRIMARY KEY, body text);
INSERT INTO other.notes SELECT g, md5(g::text) FROM generate_series(1, 500) g;
"#,
    );
}

fn manifest(dump: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dump.with_extension("json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn last_line(r: &Run) -> PathBuf {
    PathBuf::from(r.stdout.trim().lines().last().unwrap_or_default())
}

/// A copy of a backup under another name, with its manifest.
fn copy_backup(dump: &Path, name: &str) -> PathBuf {
    let to = dump.with_file_name(format!("{name}.dump"));
    std::fs::copy(dump, &to).unwrap();
    let mut m = manifest(dump);
    m["file"] = format!("{name}.dump").into();
    std::fs::write(to.with_extension("json"), m.to_string()).unwrap();
    to
}

/// The safety backup a restore took, from its `Safety backup: PATH` line.
fn safety_backup(r: &Run) -> PathBuf {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Safety backup: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no safety backup named: {r:?}"))
}

fn databases(pg: &Pg) -> String {
    pg.psql_db(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
    )
}

#[test]
fn round_trip_corruption_guard_and_failed_restore() {
    let pg = Pg::start();
    seed(&pg);
    let dir = TempDir::new("backups");
    let config = host_config(&dir, &pg, "");
    let original = fingerprint(&pg);

    // Create: the path on the last line, 0600, a manifest that matches.
    let r = run(&config, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let dump = last_line(&r);
    assert!(dump.starts_with(dir.path().join("backups/t")), "{r:?}");
    let name = dump.file_stem().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("pacetracer-20"), "{name}");
    assert_eq!(
        std::fs::metadata(&dump).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let m = manifest(&dump);
    assert_eq!(m["sha256"], sha256(&dump));
    assert_eq!(m["size"], std::fs::metadata(&dump).unwrap().len());
    assert_eq!(m["tables"]["public.laps"], 20000, "{m}");
    assert_eq!(m["tables"]["public.kinds"], 3, "{m}");
    assert_eq!(m["tables"]["other.notes"], 500, "{m}");
    assert!(m["pg_dump_version"].as_str().unwrap().contains("15"), "{m}");
    assert!(!r.all().contains(PASSWORD), "password leaked: {r:?}");
    // The off-site copy is byte-identical.
    let off = dir.path().join("offsite/t").join(dump.file_name().unwrap());
    assert_eq!(sha256(&off), m["sha256"].as_str().unwrap());
    assert_eq!(m["offsite"]["sha256_ok"], true);

    // Verify: full restore into a scratch database, recorded, scratch dropped.
    let before = databases(&pg);
    let v = run(&config, &["backup", "verify", "t", &name]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(manifest(&dump)["verifications"][0]["ok"], true);
    assert_eq!(
        databases(&pg),
        before,
        "the scratch database was left behind"
    );
    let l = run(&config, &["--json", "backup", "list", "t"]);
    let list: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    assert_eq!(list["backups"][0]["verified"], true, "{list}");

    // Change the data, then restore: the contents come back exactly.
    pg.psql("DELETE FROM laps WHERE seq > 100; UPDATE kinds SET txt = 'changed'; DROP TABLE other.notes; CREATE TABLE extra (x int)");
    let changed_laps = pg.psql("SELECT count(*) FROM laps");
    let r = run(&config, &["restore", "t", &name, "--yes", "--wait", "10"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fingerprint(&pg),
        original,
        "restored data differs from the dumped data"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'extra'"),
        "0"
    );
    assert!(
        r.stdout.contains(m["started_at"].as_str().unwrap()),
        "{r:?}"
    );
    // The safety backup exists, holds the changed state, and is named.
    let safety = safety_backup(&r);
    let sm = manifest(&safety);
    assert_eq!(sm["tables"]["public.laps"].to_string(), changed_laps);
    assert!(sm["reason"].as_str().unwrap().contains("safety"), "{sm}");
    assert!(
        r.stdout.contains(&format!(
            "cargo xtask restore t {}",
            safety.file_stem().unwrap().to_str().unwrap()
        )),
        "{r:?}"
    );
    // The replaced database is kept (named in the output), nothing else.
    let replaced = r
        .stdout
        .split('`')
        .find(|w| w.starts_with("pacetracer__mre_replaced_"))
        .unwrap_or_else(|| panic!("the replaced database is not named: {r:?}"))
        .to_string();
    assert_eq!(
        databases(&pg),
        before.replace("pacetracer,", &format!("pacetracer,{replaced},")),
        "a staged database was left behind"
    );
    assert_eq!(
        pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'pacetracer'"),
        "pacetracer",
        "the restored database keeps its owner"
    );
    pg.psql_db("postgres", &format!("DROP DATABASE \"{replaced}\""));

    // The production guard: no terminal, no --yes: exit 2, nothing done.
    let count_before = std::fs::read_dir(dir.path().join("backups/prod"))
        .map(|d| d.count())
        .unwrap_or(0);
    let g = run(
        &config,
        &[
            "restore",
            "prod",
            dump.to_str().unwrap(),
            "--from-other-environment",
        ],
    );
    assert_eq!(g.code, 2, "{g:?}");
    assert!(
        g.stderr.contains("--yes") && g.stderr.contains("protected"),
        "{g:?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("backups/prod"))
            .map(|d| d.count())
            .unwrap_or(0),
        count_before
    );

    // On a terminal: the database name must be typed.
    let on_terminal = |typed: &str| -> (i32, String) {
        use std::io::Write;
        let line = format!(
            "{XTASK} --config {} restore prod {} --from-other-environment --wait 10",
            config.display(),
            dump.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("TEST_PG_PASSWORD", PASSWORD)
            .env_remove("GITHUB_ACTIONS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("`script` (util-linux) gives the command a terminal");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{typed}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = on_terminal("production");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is not `pacetracer`"), "{text}");
    // Then the reason for the incident record: asked for, not optional.
    let (code, text) = on_terminal("pacetracer");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--reason"), "{text}");
    let (code, text) = on_terminal("pacetracer\nbad DELETE at 14:02");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Type `pacetracer` to go on")
            && text.contains("Why (for the incident record)?")
            && text.contains("Restored `prod`"),
        "{text}"
    );
    let incident = text
        .lines()
        .find_map(|l| l.split_once("Incident record: ").map(|(_, f)| f.trim()))
        .unwrap_or_else(|| panic!("no incident record: {text}"));
    assert!(std::fs::read_to_string(incident)
        .unwrap()
        .contains("| why | bad DELETE at 14:02 |"));
    assert_eq!(fingerprint(&pg), original);

    // Corruption: one byte changed, and a truncated copy.
    let altered = copy_backup(&dump, "pacetracer-altered");
    let mut bytes = std::fs::read(&altered).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&altered, &bytes).unwrap();
    let v = run(&config, &["backup", "verify", "t", "pacetracer-altered"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.all().contains("was altered"), "{v:?}");
    let truncated = copy_backup(&dump, "pacetracer-truncated");
    std::fs::write(&truncated, &bytes[..mid]).unwrap();
    let v = run(
        &config,
        &["backup", "verify", "t", truncated.to_str().unwrap()],
    );
    assert_eq!(v.code, 1, "{v:?}");
    assert!(v.all().contains("is truncated"), "{v:?}");
    let l = run(&config, &["backup", "list", "t"]);
    assert!(l.stdout.contains("FAILED"), "{l:?}");
    for bad in ["pacetracer-altered", "pacetracer-truncated"] {
        let r = run(&config, &["restore", "t", bad, "--yes"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("refusing to restore"), "{r:?}");
    }
    assert_eq!(fingerprint(&pg), original);

    // A backup damaged before its checksum was taken passes the checksum
    // but fails to restore: the database stays as it was, and says so.
    // (Successful restores above kept the databases they replaced.)
    for db in databases(&pg)
        .split(',')
        .filter(|d| d.contains("__mre_replaced_"))
    {
        pg.psql_db("postgres", &format!("DROP DATABASE \"{db}\""));
    }
    pg.psql("INSERT INTO laps (kind, seq, driver) VALUES (1, 999999, 'after')");
    let current = fingerprint(&pg);
    let broken = copy_backup(&dump, "pacetracer-broken");
    let whole = std::fs::read(&dump).unwrap();
    std::fs::write(&broken, &whole[..whole.len() * 2 / 3]).unwrap();
    let mut bm = manifest(&broken);
    bm["sha256"] = sha256(&broken).into();
    bm["size"] = std::fs::metadata(&broken).unwrap().len().into();
    std::fs::write(broken.with_extension("json"), bm.to_string()).unwrap();
    let r = run(&config, &["restore", "t", "pacetracer-broken", "--yes"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("was not changed"), "{r:?}");
    assert_eq!(
        fingerprint(&pg),
        current,
        "a failed restore changed the database"
    );
    assert_eq!(
        databases(&pg),
        before,
        "a failed restore left a database behind"
    );

    // A failed dump leaves nothing that looks like a backup.
    pg.psql("CREATE ROLE limited LOGIN PASSWORD 'limited-pw-123'; CREATE TABLE secret (x int); INSERT INTO secret VALUES (1); GRANT SELECT ON laps, kinds TO limited; GRANT USAGE ON SCHEMA other TO limited");
    let limited = dir.write(
        "limited.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("user = \"pacetracer\"", "user = \"limited\"")
            .replace("TEST_PG_PASSWORD", "LIMITED_PW")
            .replace(
                "[environments.t.backups]",
                "[environments.t.backups]\ndir = \"limited-backups\"",
            ),
    );
    let r = xtask_env(
        &limited,
        &["backup", "create", "t"],
        &[("LIMITED_PW", "limited-pw-123")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nothing was kept"), "{r:?}");
    let folder = dir.path().join("limited-backups/t");
    let left: Vec<String> = std::fs::read_dir(&folder)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed dump left {left:?}");
}

#[test]
fn an_interrupted_dump_leaves_nothing_that_looks_like_a_backup() {
    let pg = Pg::start();
    pg.psql("CREATE TABLE held (id int); INSERT INTO held VALUES (1)");
    let dir = TempDir::new("interrupted");
    let config = host_config(&dir, &pg, "");
    // Another session holds a lock, so the dump is under way (partial file
    // created, pg_dump waiting) when the process is killed.
    let mut holder = Command::new(format!("{PG_BIN}/psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lock = holder.stdin.take().unwrap();
    use std::io::Write;
    lock.write_all(b"BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE;\n")
        .unwrap();
    lock.flush().unwrap();
    // Until the lock is held.
    let start = Instant::now();
    while pg.psql(
        "SELECT count(*) FROM pg_locks WHERE relation = 'held'::regclass AND mode = 'AccessExclusiveLock' AND granted",
    ) != "1"
    {
        assert!(start.elapsed() < Duration::from_secs(20), "the lock was never taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = Command::new(XTASK)
        .args([
            "--config",
            config.to_str().unwrap(),
            "backup",
            "create",
            "t",
        ])
        .env("TEST_PG_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let folder = dir.path().join("backups/t");
    let deadline = Instant::now() + Duration::from_secs(20);
    let files = || -> Vec<String> {
        std::fs::read_dir(&folder)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    while !files().iter().any(|f| f.contains(".partial-")) {
        assert!(
            Instant::now() < deadline,
            "the dump never started: {:?}",
            files()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lock.write_all(b"COMMIT;\n").unwrap();
    drop(lock);
    holder.wait().unwrap();
    let left = files();
    assert!(!left.iter().any(|f| f.ends_with(".dump")), "{left:?}");
    let l = run(&config, &["backup", "list", "t"]);
    assert!(l.stdout.contains("No backups"), "{l:?}");
    let v = run(&config, &["backup", "verify", "t", "latest"]);
    assert_eq!(v.code, 2, "{v:?}");
    assert!(v.stderr.contains("there is no usable backup"), "{v:?}");
}

#[test]
fn retention_by_age_keeps_the_newest_verified() {
    let pg = Pg::start();
    pg.psql("CREATE TABLE x (id int); INSERT INTO x VALUES (1)");
    let dir = TempDir::new("retention");
    let config = host_config(&dir, &pg, "keep_days = 30\nkeep_min = 1");
    let mut dumps = Vec::new();
    for _ in 0..4 {
        let r = run(&config, &["backup", "create", "t"]);
        assert_eq!(r.code, 0, "{r:?}");
        dumps.push(last_line(&r));
    }
    // Ages (days) and verification, oldest first: only the oldest is verified.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (dump, (days, verified)) in
        dumps
            .iter()
            .zip([(45, true), (35, false), (10, false), (0, false)])
    {
        let mut m = manifest(dump);
        m["started_unix"] = (now - days * 86400 - 60).into();
        m["verifications"] = if verified {
            serde_json::json!([{"at": "2025-01-01T00:00:00.000Z", "ok": true, "seconds": 1.0, "detail": "ok"}])
        } else {
            serde_json::json!([])
        };
        std::fs::write(dump.with_extension("json"), m.to_string()).unwrap();
    }
    let r = run(&config, &["backup", "prune", "t", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    let name = |i: usize| dumps[i].file_stem().unwrap().to_str().unwrap().to_string();
    assert!(
        r.stdout
            .contains(&format!("would delete {}", dumps[1].display())),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains(&format!("{} (", dumps[0].display())),
        "the newest verified backup must stay: {r:?}"
    );
    assert!(
        dumps.iter().all(|d| d.exists()),
        "--dry-run deleted something"
    );
    let r = run(&config, &["--json", "backup", "prune", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let kept: Vec<bool> = dumps.iter().map(|d| d.exists()).collect();
    assert_eq!(kept, [true, false, true, true], "{r:?}");
    assert!(!dumps[1].with_extension("json").exists());
    // With keep_min 4 nothing goes.
    let config4 = host_config(&dir, &pg, "keep_days = 30\nkeep_min = 4");
    let r = run(&config4, &["backup", "prune", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Deleted 0 of 3"), "{r:?}");
    // The drill writes a report beside the backups and touches nothing live.
    let dbs = databases(&pg);
    let d = run(&config, &["drill", "t"]);
    assert_eq!(d.code, 0, "{d:?}");
    assert_eq!(databases(&pg), dbs);
    let report = std::fs::read_dir(dir.path().join("backups/t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("drill-")
        })
        .expect("a drill report");
    let text = std::fs::read_to_string(report).unwrap();
    assert!(
        text.contains("**passed**") && text.contains(&name(3)),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// The demo stack, with backups taken inside its database container.

fn demo_stack() -> Stack {
    Stack::new(
        "dr",
        ", MRE_INGEST_RATE = \"20\"",
        "[environments.e2e.backups]\nmethod = \"container\"",
    )
}

fn laps(s: &Stack) -> i64 {
    s.psql("SELECT count(*) FROM laps").parse().unwrap_or(0)
}

fn wait_for_laps(s: &Stack, more_than: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while laps(s) <= more_than {
        assert!(Instant::now() < deadline, "no new laps after 60 s");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The archive as SQL, without comments (versions and timestamps differ).
fn archive_sql(dump: &Path) -> String {
    let out = Command::new(format!("{PG_BIN}/pg_restore"))
        .args(["-f", "-"])
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--") && !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn demo_stack_container_backups_and_restore_of_a_running_stack() {
    ensure_demo_images();
    let s = demo_stack();
    let r = s.run(&["deploy", "e2e"]);
    assert_eq!(r.code, 0, "deploy failed: {r:?}");
    wait_for_laps(&s, 5);

    // Inside the container and from the host: equivalent archives. The
    // ingestion service is paused so that both see the same data.
    docker(&[
        "stop",
        "-t",
        "1",
        &format!("{}-liverc-ingestion-service", s.prefix),
    ]);
    let inside = s.run(&["backup", "create", "e2e"]);
    assert_eq!(inside.code, 0, "{inside:?}");
    let host = s.run(&["backup", "create", "e2e", "--method", "host"]);
    assert_eq!(host.code, 0, "{host:?}");
    let (inside, host) = (last_line(&inside), last_line(&host));
    assert_eq!(manifest(&inside)["method"], "container");
    assert_eq!(manifest(&host)["method"], "host");
    assert_eq!(manifest(&inside)["tables"], manifest(&host)["tables"]);
    assert_eq!(
        archive_sql(&inside),
        archive_sql(&host),
        "the two archives differ"
    );
    // The streamed archive survives a full restore (binary-safe both ways).
    let last_seq: i64 = s.psql("SELECT max(seq) FROM laps").parse().unwrap();
    let v = s.run(&["backup", "verify", "e2e", inside.to_str().unwrap()]);
    assert_eq!(v.code, 0, "{v:?}");
    docker(&["start", &format!("{}-liverc-ingestion-service", s.prefix)]);

    // Restore a running stack: the app is stopped and started, health passes.
    let backed_up = manifest(&inside)["tables"]["public.laps"].as_i64().unwrap();
    wait_for_laps(&s, backed_up + 10);
    let app_started = s.started_at("app");
    let r = s.run(&[
        "restore",
        "e2e",
        inside.file_stem().unwrap().to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(
        s.started_at("app"),
        app_started,
        "the app was not stopped and started"
    );
    let safety = safety_backup(&r);
    let safety_laps = manifest(&safety)["tables"]["public.laps"].as_i64().unwrap();
    assert!(
        safety_laps >= backed_up + 10,
        "the safety backup holds the later laps"
    );
    // What the restore brought back: no lap newer than the backup's.
    let restored: i64 = s
        .psql(&format!(
            "SELECT count(*) FROM laps WHERE seq <= {last_seq}"
        ))
        .parse()
        .unwrap();
    assert_eq!(restored, backed_up, "the laps of the backup are back");
    let h = s.run(&["health", "e2e", "--wait", "60"]);
    assert_eq!(h.code, 0, "{h:?}");
    assert!(!r.all().contains(&s.password()), "password leaked: {r:?}");
}

#[test]
fn verify_with_the_server_down_judges_nothing() {
    let pg = Pg::start();
    seed(&pg);
    let dir = TempDir::new("dr-down");
    let config = host_config(&dir, &pg, "");
    let r = run(&config, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let dump = last_line(&r);
    let before = std::fs::read_to_string(dump.with_extension("json")).unwrap();
    drop(pg);
    let v = run(&config, &["backup", "verify", "t", "latest"]);
    assert_eq!(v.code, 1, "{v:?}");
    assert!(
        v.stderr.contains("could not verify") && v.stderr.contains("was not judged"),
        "{v:?}"
    );
    let after = std::fs::read_to_string(dump.with_extension("json")).unwrap();
    assert_eq!(
        before, after,
        "an inconclusive verification must not touch the manifest"
    );
    let l = run(&config, &["backup", "list", "t"]);
    assert!(!l.stdout.contains("FAILED"), "{l:?}");
}

#[test]
fn restore_refuses_another_environments_backup_and_latest_skips_safety_copies() {
    let pg = Pg::start();
    seed(&pg);
    let dir = TempDir::new("dr-guard");
    let config = host_config(&dir, &pg, "");
    let r = run(&config, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let dump = last_line(&r);
    let name = dump.file_stem().unwrap().to_string_lossy().to_string();

    // A backup of `t` is not restored into `prod` without saying so.
    let other = run(
        &config,
        &["restore", "prod", &dump.display().to_string(), "--yes"],
    );
    assert_eq!(other.code, 2, "{other:?}");
    assert!(
        other.stderr.contains("--from-other-environment")
            && other.stderr.contains("Nothing was changed"),
        "{other:?}"
    );

    // After a restore, `latest` is still the backup restored, not the
    // safety copy of what the restore replaced (at once: two restores in
    // one second must not collide).
    let done = run(&config, &["restore", "t", "latest", "--yes"]);
    assert_eq!(done.code, 0, "{done:?}");
    let again = run(&config, &["restore", "t", "latest", "--dry-run"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains(&format!("Backup chosen: {name}")),
        "{again:?}"
    );
}
