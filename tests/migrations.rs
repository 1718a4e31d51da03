//! `cargo xtask migrate` against a real PostgreSQL 15 (tests/common/pg.rs):
//! Prisma's bookkeeping byte for byte, failures, baselining, concurrency,
//! drift, the lint and the prisma runner.
mod common;

use std::path::Path;
use std::process::Command;

use common::migrate::{kill_while_running, Setup, PRISMA_DDL, PW_VAR};
use common::pg::{Pg, PASSWORD};

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn demo_migration(name: &str) -> String {
    std::fs::read_to_string(
        common::workspace_root()
            .join("prisma/migrations")
            .join(name)
            .join("migration.sql"),
    )
    .unwrap()
}

fn columns(pg: &Pg, schema: &str) -> String {
    pg.psql(&format!(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default \
         FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = '_prisma_migrations' \
         ORDER BY ordinal_position"
    ))
}

#[test]
fn deploy_writes_prisma_bookkeeping() {
    let s = Setup::new("");
    let f1 = s.migration(
        "20250101000000_init",
        &demo_migration("20250101000000_init"),
    );
    let f2 = s.migration(
        "20250115000000_laps",
        &demo_migration("20250115000000_laps"),
    );
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("pending"), "{r:?}");

    let r = s.run(&["migrate", "deploy", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Apply 20250115000000_laps"), "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );

    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("in a transaction"), "{r:?}");
    let rows = s.rows();
    assert_eq!(rows.len(), 2);
    for (row, (file, name)) in rows
        .iter()
        .zip([(&f1, "20250101000000_init"), (&f2, "20250115000000_laps")])
    {
        let id = &row[0];
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "UUID v4: {id}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase() || c == '-'));
        assert_eq!(row[1], sha256sum(file));
        assert_eq!(row[2], name);
        assert_eq!(&row[3..], ["t", "f", "<null>", "1"]);
    }
    // The table exactly as Prisma creates it.
    s.pg.psql(&format!(
        "CREATE SCHEMA reference; SET search_path TO reference; {PRISMA_DDL}"
    ));
    assert_eq!(columns(&s.pg, "public"), columns(&s.pg, "reference"));
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_indexes WHERE tablename = '_prisma_migrations' AND schemaname = 'public'"),
        "1",
        "the primary key only: no unique index on migration_name"
    );
    assert!(s.pg.psql("SELECT count(*) FROM laps").starts_with('0'));

    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Database schema is up to date!"), "{r:?}");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("No pending migrations"), "{r:?}");
    let r = s.run(&["--json", "migrate", "status"]);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(doc["up_to_date"], true);
}

#[test]
fn a_failed_migration_changes_nothing_and_blocks_until_resolved() {
    let s = Setup::new("");
    s.migration("20250101000000_one", "CREATE TABLE one (x int);\n");
    let bad = s.migration(
        "20250102000000_two",
        "CREATE TABLE two (x int);\nALTER TABLE one ADD COLUMN y int;\nINSERT INTO nope VALUES (1);\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("schema is exactly as it was"), "{r:?}");
    assert!(
        r.stderr
            .contains("resolve --rolled-back 20250102000000_two"),
        "{r:?}"
    );
    // Half-way: the first statements were rolled back with the rest.
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'two'"),
        "0"
    );
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'one' AND column_name = 'y'"),
        "0"
    );
    let rows = s.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][2], "20250102000000_two");
    assert_eq!(rows[1][3], "f", "finished_at stays NULL");
    assert!(
        rows[1][5].contains("Database error code: 42P01") && rows[1][5].contains("nope"),
        "{:?}",
        rows[1]
    );
    assert_eq!(rows[1][6], "0");

    // The next deploy refuses, naming it, with its logs and both resolve commands.
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    for needle in [
        "20250102000000_two",
        "started at",
        "nope",
        "resolve --rolled-back",
        "resolve --applied",
    ] {
        assert!(r.stderr.contains(needle), "{needle}: {r:?}");
    }
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("failed"), "{r:?}");

    // Fix, resolve, deploy.
    std::fs::write(
        &bad,
        "CREATE TABLE two (x int);\nALTER TABLE one ADD COLUMN y int;\n",
    )
    .unwrap();
    let r = s.run(&[
        "migrate",
        "resolve",
        "--rolled-back",
        "20250102000000_two",
        "--dry-run",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.rows()[1][4], "f", "dry run changes nothing");
    let r = s.run(&["migrate", "resolve", "--rolled-back", "20250102000000_two"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = s.run(&["migrate", "resolve", "--rolled-back", "20250102000000_two"]);
    assert_eq!(r.code, 2, "nothing failed any more: {r:?}");
    let r = s.run(&["migrate", "deploy", "development"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows = s.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][4], "t", "the failed row is rolled back");
    assert_eq!(&rows[2][2..5], ["20250102000000_two", "t", "f"]);
    assert_eq!(rows[2][1], sha256sum(&bad));
}

#[test]
fn baselining_with_resolve_applied() {
    let s = Setup::new("");
    let f = s.migration(
        "20250101000000_init",
        "CREATE TABLE users (id text PRIMARY KEY);\n",
    );
    s.migration("20250102000000_more", "CREATE TABLE more (id int);\n");
    s.pg.psql("CREATE TABLE users (id text PRIMARY KEY)");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("resolve --applied"), "{r:?}");
    assert!(r.stderr.contains("users"), "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = '_prisma_migrations'"),
        "0"
    );

    let r = s.run(&["migrate", "resolve", "--applied", "20250101000000_init"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows = s.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], sha256sum(&f));
    assert_eq!(&rows[0][3..], ["t", "f", "", "0"]);
    let r = s.run(&["migrate", "resolve", "--applied", "20250101000000_init"]);
    assert_eq!(r.code, 2, "already applied: {r:?}");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.rows().len(), 2);
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'more'"),
        "1"
    );
}

#[test]
fn two_deploys_at_once_apply_once() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_slow",
        "SELECT pg_sleep(2);\nCREATE TABLE slow (x int);\n",
    );
    let spawn = || {
        Command::new(common::XTASK)
            .arg("--config")
            .arg(&s.config)
            .args(["migrate", "deploy"])
            .env(PW_VAR, PASSWORD)
            .env_remove("GITHUB_ACTIONS")
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(spawn);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = sc.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    assert_eq!(s.rows().len(), 1, "exactly one applied it");
    let both = format!("{}\n{}", text(&a), text(&b));
    assert!(
        both.contains("Waiting for the lock of `development`")
            || both.contains("Waiting for the migration lock"),
        "{both}"
    );
    assert!(
        both.contains("applied meanwhile by another migrator")
            || both.contains("No pending migrations"),
        "{both}"
    );

    // A lock held by someone else: a bounded wait and a clear message.
    let holder = Command::new(format!("{}/psql", common::pg::PG_BIN))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &s.pg.port.to_string(),
            "-U",
            "pacetracer",
            "-d",
            "pacetracer",
        ])
        .args([
            "-c",
            "SELECT pg_advisory_lock(72707369); SELECT pg_sleep(8);",
        ])
        .env("PGPASSWORD", PASSWORD)
        .spawn()
        .unwrap();
    let _holder = common::Child(holder);
    common::migrate::wait_for_value(
        &s.pg,
        "the other session to hold the migration lock",
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = 72707369 AND granted",
        "t",
        10,
    );
    s.migration("20250102000000_next", "CREATE TABLE next (x int);\n");
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("lock_wait_secs = 30", "lock_wait_secs = 1");
    std::fs::write(&s.config, config).unwrap();
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("still holds the migration lock") && r.stderr.contains("PID"),
        "{r:?}"
    );
}

#[test]
fn drift_crlf_missing_files_and_an_empty_folder() {
    let s = Setup::new("");
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 0, "empty folder: {r:?}");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");

    let crlf = s.migration(
        "20250101000000_crlf",
        "CREATE TABLE a (x int);\r\nCREATE TABLE b (x int);\r\n",
    );
    let gone = s.migration("20250102000000_gone", "CREATE TABLE c (x int);\n");
    let edited = s.migration("20250103000000_edited", "CREATE TABLE d (x int);\n");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.rows()[0][1],
        sha256sum(&crlf),
        "the checksum of the bytes, not normalised"
    );

    std::fs::write(&crlf, "CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n").unwrap();
    std::fs::remove_file(&gone).unwrap();
    std::fs::write(&edited, "CREATE TABLE d (x int, y int);\n").unwrap();
    s.pg.psql("INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at) VALUES ('x', 'y', '20240101000000_elsewhere', now())");
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = |name: &str| {
        r.stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("_crlf").contains("applied"),
        "CRLF to LF still matches: {r:?}"
    );
    assert!(line("_gone").contains("missing"), "{r:?}");
    assert!(line("_edited").contains("edited"), "{r:?}");
    assert!(line("_elsewhere").contains("not-on-disk"), "{r:?}");

    std::fs::create_dir_all(s.dir.path().join("migrations/20250104000000_empty")).unwrap();
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("migration.sql is missing"), "{r:?}");
    assert!(
        r.stdout.contains("warning") && r.stdout.contains("_edited"),
        "deploy warns about drift: {r:?}"
    );

    std::fs::write(
        s.dir.path().join("migrations/migration_lock.toml"),
        "provider = \"mysql\"\n",
    )
    .unwrap();
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("P3019"), "{r:?}");
}

#[test]
fn the_lint_blocks_staging_not_development() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_init",
        "CREATE TABLE users (id int, name text);\nCREATE INDEX users_name ON users (name);\n",
    );
    assert_eq!(
        s.run(&["migrate", "deploy", "staging"]).code,
        0,
        "new tables are not risky"
    );
    let risky = s.migration(
        "20250102000000_drop",
        "ALTER TABLE users DROP COLUMN name;\n",
    );
    let r = s.run(&["migrate", "review", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("ban-drop-column") && r.stdout.contains("require-lock-timeout"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("1 | ALTER TABLE users DROP COLUMN name;"),
        "{r:?}"
    );

    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("ban-drop-column") && r.stderr.contains("--allow-risky"),
        "{r:?}"
    );
    assert_eq!(s.rows().len(), 1, "nothing applied");

    std::fs::write(
        &risky,
        "SET lock_timeout = '5s';\n-- mre-ops:allow ban-drop-column\nALTER TABLE users DROP COLUMN name;\n",
    )
    .unwrap();
    let r = s.run(&["migrate", "review", "staging"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("accepted"), "{r:?}");
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 0, "{r:?}");

    s.migration(
        "20250103000000_index",
        "CREATE INDEX users_id ON users (id);\n",
    );
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = s.run(&["migrate", "deploy", "staging", "--allow-risky"]);
    assert_eq!(r.code, 0, "{r:?}");

    s.migration(
        "20250104000000_concurrent",
        "CREATE INDEX CONCURRENTLY users_pos ON users (id) WHERE id > 0;\n",
    );
    s.migration("20250105000000_dev", "DROP TABLE users;\n");
    let r = s.run(&["migrate", "deploy", "development"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("without a transaction (line 1: CREATE INDEX CONCURRENTLY)"),
        "{r:?}"
    );
}

#[test]
fn new_creates_a_timestamped_folder() {
    let s = Setup::new("");
    let r = s.run(&["migrate", "new", "add_lap_sector"]);
    assert_eq!(r.code, 0, "{r:?}");
    let dir = s.dir.path().join("migrations");
    let lock = std::fs::read_to_string(dir.join("migration_lock.toml")).unwrap();
    assert!(lock.contains("provider = \"postgresql\""));
    let made: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_add_lap_sector"))
        .collect();
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].len(), 14 + 1 + "add_lap_sector".len());
    assert!(made[0][..14].chars().all(|c| c.is_ascii_digit()));
    assert!(dir.join(&made[0]).join("migration.sql").exists());
    for bad in ["Add", "1x", "a-b", "", "a b"] {
        let r = s.run(&["migrate", "new", bad]);
        assert_eq!(r.code, 2, "{bad}: {r:?}");
    }
}

/// The `prisma` runner runs the runbook's `npx prisma migrate deploy` in the
/// app container; the demo image has no npx, so this checks the call and
/// the message for exit 127 (no fake Prisma).
#[test]
fn prisma_runner_execs_in_the_app_container() {
    common::require_docker();
    common::ensure_demo_images();
    let name = format!("mig-test-prisma-{}", std::process::id());
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _gone = Gone(name.clone());
    common::docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--entrypoint",
        "sleep",
        "mre-demo-base:bookworm-3",
        "300",
    ]);
    let s = Setup::new(&format!("runner = \"prisma\"\ncontainer = \"{name}\"\n"));
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    let r = s.run(&["migrate", "deploy", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("$ docker exec {name} npx prisma migrate deploy")),
        "{r:?}"
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("`npx` is not installed") && r.stderr.contains("runner = \"native\""),
        "{r:?}"
    );
}

/// "Backup database before migration": a protected environment with no
/// backups configured is refused before anything runs, by `migrate deploy`
/// and by `deploy`.
#[test]
fn protected_without_backups_is_refused() {
    let s = Setup::new("");
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "[environments.staging]\n",
        "[environments.staging]\nprotected = true\n",
    );
    std::fs::write(&s.config, text).unwrap();
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    for args in [
        &["migrate", "deploy", "staging"][..],
        &["deploy", "staging", "--dry-run"][..],
    ] {
        let r = s.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("needs a backup first"), "{r:?}");
    }
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
}

#[test]
fn failures_outside_a_transaction_are_recorded_and_explained() {
    let s = Setup::new("");
    // A new enum value used in the same script: applied statement by
    // statement, as Prisma does, not refused by a wrapping transaction.
    s.migration(
        "20250101000000_enum",
        "CREATE TYPE \"Role\" AS ENUM ('A');\nCREATE TABLE t (r \"Role\" NOT NULL DEFAULT 'A');\n",
    );
    s.migration(
        "20250102000000_enum_value",
        "ALTER TYPE \"Role\" ADD VALUE 'B';\nALTER TABLE t ALTER COLUMN r SET DEFAULT 'B';\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("uses the enum value 'B' of `Role` added at line 1"),
        "the mode is said: {r:?}"
    );

    // A failed CREATE INDEX CONCURRENTLY leaves an INVALID index: say so.
    s.pg.psql("INSERT INTO t VALUES ('A'), ('A')");
    s.migration(
        "20250103000000_unique",
        "CREATE UNIQUE INDEX CONCURRENTLY \"t_r_key\" ON t (r);\n",
    );
    let f = s.run(&["migrate", "deploy"]);
    assert_eq!(f.code, 1, "{f:?}");
    assert!(
        f.stderr.contains("INVALID") && f.stderr.contains("DROP INDEX CONCURRENTLY public.t_r_key"),
        "{f:?}"
    );
    std::fs::remove_dir_all(s.dir.path().join("migrations/20250103000000_unique")).unwrap();
    s.pg.psql("DROP INDEX t_r_key");
    s.pg.psql("DELETE FROM _prisma_migrations WHERE migration_name = '20250103000000_unique'");

    // A script with its own transaction that fails: its error is in `logs`.
    s.migration(
        "20250104000000_own_tx",
        "BEGIN;\nALTER TABLE t ADD COLUMN x int;\nSELECT 1/0;\nCOMMIT;\n",
    );
    let g = s.run(&["migrate", "deploy"]);
    assert_eq!(g.code, 1, "{g:?}");
    let logs = s
        .pg
        .psql("SELECT logs FROM _prisma_migrations WHERE migration_name = '20250104000000_own_tx'");
    assert!(logs.contains("division by zero"), "logs: {logs:?}");
    assert_eq!(s.pg.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = 'x'"), "0");
}

/// Issue: a migration file that is not UTF-8 is refused by deploy, status
/// and review, naming the file and the byte; nothing is applied.
#[test]
fn non_utf8_migration_files_are_refused() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (x text);\n");
    let d = s.dir.path().join("migrations/20250102000000_latin1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("migration.sql"),
        b"INSERT INTO t VALUES ('caf\xe9');\n",
    )
    .unwrap();
    for args in [
        &["migrate", "deploy"][..],
        &["migrate", "status"][..],
        &["migrate", "review", "--all"][..],
    ] {
        let r = s.run(args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(
                "20250102000000_latin1/migration.sql is not valid UTF-8: byte 26 (line 1)"
            ),
            "{args:?}: {r:?}"
        );
    }
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0",
        "nothing applied"
    );
}

/// Issue: `ALTER TYPE ... ADD VALUE` runs in a transaction (PostgreSQL 12+):
/// a failure half-way leaves the schema as it was.
#[test]
fn enum_values_are_added_in_a_transaction() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_enum",
        "CREATE TYPE \"Role\" AS ENUM ('A');\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    s.migration(
        "20250102000000_more",
        "ALTER TYPE \"Role\" ADD VALUE 'B';\nCREATE TABLE half (x int);\nSELECT 1/0;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("in a transaction"), "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum"),
        "A",
        "no half-added value"
    );
    assert_eq!(s.pg.psql("SELECT to_regclass('half') IS NULL"), "t");
    // Fixed: it applies in a transaction.
    s.migration(
        "20250102000000_more",
        "ALTER TYPE \"Role\" ADD VALUE 'B';\nCREATE TABLE half (x int);\n",
    );
    s.run(&["migrate", "resolve", "--rolled-back", "20250102000000_more"]);
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("applied 20250102000000_more in a transaction"),
        "{r:?}"
    );
}

/// Issue: a killed run of a file that cannot run in a transaction: the row
/// says how many statements ran and which is next; status says so, and the
/// next deploy finishes the file there.
#[test]
fn a_killed_run_without_a_transaction_records_its_progress() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.migration(
        "20250102000000_idx",
        "CREATE INDEX CONCURRENTLY t_x ON t (x);\nSELECT pg_sleep(2) AS nontx_marker;\nCREATE INDEX CONCURRENTLY t_x2 ON t (x);\n",
    );
    kill_while_running(&s, "nontx_marker");
    let row = s.pg.psql("SELECT applied_steps_count, logs FROM _prisma_migrations WHERE migration_name = '20250102000000_idx'");
    assert!(
        row.starts_with("1|") && row.contains("1 of 3 statement(s) applied; the next is line 2"),
        "{row}"
    );
    let st = s.run(&["migrate", "status"]);
    assert_eq!(st.code, 1, "{st:?}");
    assert!(
        st.stdout
            .contains("It ran statement by statement and was interrupted: 1 of 3")
            && st
                .stdout
                .contains("`cargo xtask migrate deploy development` finishes it"),
        "{st:?}"
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("Finish 20250102000000_idx")
            || r.stderr.contains("Finish 20250102000000_idx"),
        "{r:?}"
    );
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid::regclass::text IN ('t_x', 't_x2')"),
        "2"
    );
    let rows = s.rows();
    assert_eq!(rows.len(), 2, "the same row finished: {rows:?}");
    assert_eq!(
        (
            rows[1][3].as_str(),
            rows[1][5].as_str(),
            rows[1][6].as_str()
        ),
        ("t", "<null>", "1"),
        "{rows:?}"
    );
}

/// Issue: a killed run of a transactional file: the server rolled it back,
/// so the next deploy says so and applies it again; an error still refuses.
#[test]
fn a_killed_transactional_run_is_applied_again() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_init",
        "CREATE TABLE k (x int);\nSELECT pg_sleep(30) AS tx_marker;\n",
    );
    kill_while_running(&s, "tx_marker");
    assert_eq!(
        s.pg.psql("SELECT to_regclass('k') IS NULL"),
        "t",
        "rolled back by the server"
    );
    let st = s.run(&["migrate", "status"]);
    assert!(
        st.stdout
            .contains("ran in a transaction and was interrupted"),
        "{st:?}"
    );
    s.migration("20250101000000_init", "CREATE TABLE k (x int);\n");
    // The dry run says what the real run does, and changes nothing.
    let r = s.run(&["migrate", "deploy", "--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("a real run marks it rolled back and applies it again"),
        "{r:?}"
    );
    assert_eq!(s.rows().len(), 1);
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("was interrupted while it ran in a transaction"),
        "{r:?}"
    );
    let rows = s.rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0][4], "t",
        "the interrupted row is rolled back: {rows:?}"
    );
    assert_eq!(rows[1][3], "t", "the new row finished: {rows:?}");
    assert_eq!(s.pg.psql("SELECT to_regclass('k') IS NOT NULL"), "t");
}

/// Issue: `status --strict` is a CI gate on drift.
#[test]
fn status_strict_fails_on_drift() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    s.migration("20250102000000_two", "CREATE TABLE u (x int);\n");
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.migration("20250101000000_init", "CREATE TABLE t (x int, y int);\n");
    let r = s.run(&["migrate", "status"]);
    assert_eq!(r.code, 0, "drift alone warns: {r:?}");
    let r = s.run(&["migrate", "status", "--strict"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("20250101000000_init (edited)"), "{r:?}");
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    std::fs::remove_dir_all(s.dir.path().join("migrations/20250102000000_two")).unwrap();
    let r = s.run(&["migrate", "status", "--strict"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("20250102000000_two (not-on-disk)"),
        "{r:?}"
    );
}

/// Issue: `review --all` reviews each migration as if it were the only new
/// one; a folder without migration.sql is a finding.
#[test]
fn review_all_reviews_each_migration_alone() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    s.migration("20250102000000_drop", "ALTER TABLE t DROP COLUMN x;\n");
    let r = s.run(&["migrate", "review", "--all"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("ban-drop-column"),
        "the later migration's finding shows: {r:?}"
    );
    std::fs::remove_dir_all(s.dir.path().join("migrations/20250102000000_drop")).unwrap();
    assert_eq!(s.run(&["migrate", "review", "--all"]).code, 0);
    std::fs::create_dir_all(s.dir.path().join("migrations/20250103000000_empty")).unwrap();
    let r = s.run(&["migrate", "review", "--all"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("20250103000000_empty/migration.sql is missing"),
        "{r:?}"
    );
}

/// Issue: an environment that only runs migrations needs no [compose].
#[test]
fn migrations_need_no_compose_section() {
    let s = Setup::new("");
    let text = format!(
        "[environments.db]\n[environments.db.database]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"pacetracer\"\nname = \"pacetracer\"\n\
         password_env = \"{PW_VAR}\"\n[environments.db.migrations]\ndir = \"migrations\"\n",
        s.pg.port
    );
    std::fs::write(&s.config, text).unwrap();
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    let r = s.run(&["migrate", "deploy", "db"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = s.run(&["status", "db"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("has no [environments.db.compose]"),
        "{r:?}"
    );
}

/// "Monitor migration progress": a migration kept waiting by another
/// session's lock says, while it waits, how long and who holds it (pid,
/// application, since when, its query); with `--json`, as events.
#[test]
fn a_waiting_migration_names_the_session_blocking_it() {
    let s = Setup::new("");
    s.migration("20250101000000_events", "CREATE TABLE events (x int);\n");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Another session holds the table for 7 s; the next migration waits.
    let _holder = common::migrate::psql_background(
        &s.pg,
        "SET application_name = 'report-job'; BEGIN; LOCK TABLE events IN ACCESS SHARE MODE; SELECT pg_sleep(7); COMMIT;",
    );
    common::migrate::wait_for_value(
        &s.pg,
        "the other session to hold its lock",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'report-job' AND query LIKE '%pg_sleep%'",
        "t",
        10,
    );
    s.migration(
        "20250102000000_events_notes",
        "ALTER TABLE events ADD COLUMN notes text;\n",
    );
    let r = s.run(&["--json", "migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    let event = r
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["event"] == "migration_progress" && !e["blocked_by"].as_array().unwrap().is_empty()
        })
        .unwrap_or_else(|| panic!("no progress event naming the blocker: {r:?}"));
    assert_eq!(event["migration"], "20250102000000_events_notes", "{event}");
    assert_eq!(
        event["blocked_by"][0]["application"], "report-job",
        "{event}"
    );
    assert!(
        event["blocked_by"][0]["query"]
            .as_str()
            .unwrap()
            .contains("LOCK TABLE events"),
        "{event}"
    );
}
