//! `cargo xtask migrate` on what five real-world Prisma histories found
//! (issue 17), each against a real PostgreSQL 15 (tests/common/pg.rs): the
//! row exists whenever a message says it does, an interrupted file is told
//! and finished as the database has it, every statement psql runs outside a
//! transaction runs, and the lint counts what the batch and the database
//! hold, inside DO blocks too.
mod common;

use common::migrate::{kill_when, psql_background, wait_for_value, Setup};

fn row_of(s: &Setup, name: &str) -> String {
    s.pg.psql(&format!(
        "SELECT finished_at IS NOT NULL, rolled_back_at IS NOT NULL, applied_steps_count, coalesce(logs, '<null>') \
         FROM _prisma_migrations WHERE migration_name = '{name}' ORDER BY started_at DESC LIMIT 1"
    ))
}

/// Defect 1: a syntax error (PostgreSQL parses the whole query before it
/// runs any of it) is recorded as the message says, and `resolve
/// --rolled-back` then works. A byte order mark is skipped, as psql does.
#[test]
fn a_syntax_error_is_recorded_and_a_byte_order_mark_is_skipped() {
    let s = Setup::new("");
    // A migration before it in the same deploy, then the failing one: its
    // row is there all the same.
    s.migration("20250100000000_first", "CREATE TABLE first (x int);\n");
    s.migration(
        "20250101000000_typo",
        "CREATE TABLE a (x int);\nALTER TABLE a ADD COLUMNN y int;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("It is recorded as failed"), "{r:?}");
    let row = row_of(&s, "20250101000000_typo");
    assert!(
        row.starts_with("f|f|0|") && row.contains("syntax error"),
        "the row the message speaks of: {row:?}"
    );
    assert_eq!(s.pg.psql("SELECT to_regclass('a') IS NULL"), "t");
    let st = s.run(&["migrate", "status"]);
    assert!(
        st.stdout
            .contains("apply the whole file by hand (nothing of it is in the database now)"),
        "resolve --applied says what is in the database: {st:?}"
    );
    let r = s.run(&["migrate", "resolve", "--rolled-back", "20250101000000_typo"]);
    assert_eq!(r.code, 0, "{r:?}");
    s.migration(
        "20250101000000_typo",
        "CREATE TABLE a (x int);\nALTER TABLE a ADD COLUMN y int;\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);

    let bom = s.dir.path().join("migrations/20250102000000_bom");
    std::fs::create_dir_all(&bom).unwrap();
    std::fs::write(
        bom.join("migration.sql"),
        b"\xef\xbb\xbfCREATE TABLE b (x int);\n",
    )
    .unwrap();
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.pg.psql("SELECT to_regclass('b') IS NOT NULL"), "t");
}

/// Defect 7: `finished_at` is when the migration finished.
#[test]
fn finished_at_is_the_finish_time() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_slow",
        "CREATE TABLE t (id int);\nSELECT pg_sleep(1.5);\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    let secs: f64 =
        s.pg.psql("SELECT extract(epoch FROM finished_at - started_at) FROM _prisma_migrations")
            .parse()
            .unwrap();
    assert!(secs >= 1.4, "finished_at - started_at = {secs} s");
}

/// Defect 2: kill -9 while a statement of a file run statement by statement
/// waits; the server is left to end it. `status` says what is true of the
/// database, and `deploy` finishes the file with no manual step; the lock's
/// warning points to that, not to `recover`.
#[test]
fn a_statement_the_server_ends_after_a_kill_is_counted_as_it_ended() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_init",
        "CREATE TABLE t (x int);\nCREATE TABLE u (x int);\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.migration(
        "20250102000000_mixed",
        "VACUUM u;\nALTER TABLE t ADD COLUMN y int;\n",
    );
    // A session holding t: the ALTER waits behind it (VACUUM, unlike a
    // concurrent index build, waits for nobody).
    let holder = psql_background(
        &s.pg,
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;",
    );
    wait_for_value(
        &s.pg,
        "the lock holder",
        "SELECT count(*) > 0 FROM pg_locks WHERE relation = 't'::regclass AND mode = 'AccessExclusiveLock' AND granted",
        "t",
        10,
    );
    kill_when(
        &s,
        "the ALTER to wait for its lock",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%ADD COLUMN y%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    );
    drop(holder);
    wait_for_value(
        &s.pg,
        "the killed run's session to end",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%ADD COLUMN y%' AND pid <> pg_backend_pid()",
        "0",
        30,
    );
    let column = s.pg.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = 'y'");
    let st = s.run(&["migrate", "status"]);
    assert_eq!(st.code, 1, "{st:?}");
    let said = if column == "1" { "2 of 2" } else { "1 of 2" };
    assert!(
        st.stdout.contains(said)
            && st
                .stdout
                .contains("`cargo xtask migrate deploy development` finishes it"),
        "the column is {}there, so `{said}`: {st:?}",
        if column == "1" { "" } else { "not " }
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stderr.contains("xtask recover") && r.stderr.contains("migrate status development"),
        "the killed holder's warning points to the command that helps: {r:?}"
    );
    assert_eq!(s.pg.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 't' AND column_name = 'y'"), "1");
    assert!(row_of(&s, "20250102000000_mixed").starts_with("t|f|1|<null>"));
    assert_eq!(s.pg.psql("SELECT count(*) FROM _prisma_migrations"), "2");
    let r = s.run(&["recover", "development"]);
    assert!(
        r.stdout.contains("migrate status development"),
        "recover points to the migration's story: {r:?}"
    );
}

/// Defect 2: a `CREATE INDEX CONCURRENTLY` interrupted by a kill: `status`
/// names the INVALID index it left with the statement that drops it, and
/// `deploy` drops it and builds it again.
#[test]
fn an_interrupted_concurrent_index_is_named_and_rebuilt() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (x int);\n");
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.migration(
        "20250102000000_idx",
        "CREATE INDEX CONCURRENTLY \"t_x\" ON t (x);\n",
    );
    // An open writer: the build waits for it after its index is in the catalog.
    let writer = psql_background(
        &s.pg,
        "BEGIN; INSERT INTO t VALUES (1); SELECT pg_sleep(4); COMMIT;",
    );
    wait_for_value(
        &s.pg,
        "the writer",
        "SELECT count(*) > 0 FROM pg_locks WHERE relation = 't'::regclass AND mode = 'RowExclusiveLock'",
        "t",
        10,
    );
    kill_when(
        &s,
        "the index build to wait",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
    );
    drop(writer);
    wait_for_value(
        &s.pg,
        "the killed run's session to end",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%'",
        "0",
        30,
    );
    let valid = s
        .pg
        .psql("SELECT coalesce((SELECT indisvalid::text FROM pg_index WHERE indexrelid = to_regclass('t_x')), 'none')");
    let st = s.run(&["migrate", "status"]);
    assert_eq!(st.code, 1, "{st:?}");
    match valid.as_str() {
        "false" => assert!(
            st.stdout.contains("left index \"t_x\" INVALID")
                && st
                    .stdout
                    .contains("DROP INDEX CONCURRENTLY IF EXISTS \"t_x\";"),
            "{st:?}"
        ),
        "true" => assert!(st.stdout.contains("index \"t_x\" was built"), "{st:?}"),
        _ => assert!(st.stdout.contains("0 of 1"), "{st:?}"),
    }
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('t_x')"),
        "t"
    );
    assert!(row_of(&s, "20250102000000_idx").starts_with("t|f|1|<null>"));
}

/// Defect 3: `ALTER TABLE … DETACH PARTITION … CONCURRENTLY` runs, as psql
/// runs it.
#[test]
fn detach_partition_concurrently_runs() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_parts",
        "CREATE TABLE p (x int) PARTITION BY RANGE (x);\nCREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);\n",
    );
    s.migration(
        "20250102000000_detach",
        "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_inherits WHERE inhrelid = 'p1'::regclass"),
        "0",
        "detached"
    );
}

/// Defect 3, the whole list: what PostgreSQL refuses in a transaction block
/// runs statement by statement, also a REINDEX it refuses only because the
/// table is partitioned (the catalog's business: the refused transaction is
/// run again statement by statement).
#[test]
fn statements_psql_runs_outside_a_transaction_run() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_tables",
        "CREATE TABLE p (x int) PARTITION BY RANGE (x);\nCREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);\n\
         CREATE TABLE t (x int);\nCREATE INDEX t_x ON t (x);\n",
    );
    s.migration(
        "20250102000000_others",
        "VACUUM t;\nREINDEX SCHEMA public;\nCLUSTER;\nREINDEX INDEX CONCURRENTLY t_x;\nDROP INDEX CONCURRENTLY t_x;\n\
         CREATE DATABASE mig_scratch;\nDROP DATABASE mig_scratch;\nDISCARD ALL;\nCREATE TABLE after_discard (x int);\n",
    );
    s.migration("20250103000000_partitioned", "REINDEX TABLE p;\n");
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("20250103000000_partitioned: PostgreSQL refused it in a transaction"),
        "{r:?}"
    );
    assert_eq!(
        s.pg.psql("SELECT to_regclass('public.after_discard') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL AND logs IS NULL AND applied_steps_count = 1"),
        "3"
    );
}

/// Defect 5: a file with its own `BEGIN; … COMMIT;` and a `CREATE INDEX
/// CONCURRENTLY` runs; a `BEGIN ATOMIC` body is not the file's own
/// transaction (the file keeps ours).
#[test]
fn own_transactions_and_begin_atomic_bodies() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_own_tx",
        "BEGIN;\nCREATE TABLE a (x int);\nCOMMIT;\nCREATE INDEX CONCURRENTLY a_x ON a (x);\n",
    );
    s.migration(
        "20250102000000_atomic",
        "CREATE FUNCTION one() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\nEND;\nCREATE TABLE after_atomic (x int);\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_x'::regclass"),
        "t"
    );
    assert!(
        r.stdout
            .contains("applied 20250102000000_atomic in a transaction"),
        "{r:?}"
    );
    assert_eq!(s.pg.psql("SELECT one()"), "1");
}

/// Defect 4: an enum value used inside a DO block runs, as psql runs it.
#[test]
fn an_enum_value_used_in_a_do_block_runs() {
    let s = Setup::new("");
    s.migration("20250101000000_types", "CREATE TYPE \"T\" AS ENUM ('a');\n");
    s.migration(
        "20250102000000_do",
        "ALTER TYPE \"T\" ADD VALUE 'x';\nDO $$BEGIN PERFORM 'x'::\"T\"; END$$;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// Defect 8: the same label added to two enums is no use, so the file keeps
/// its transaction: a failure adds neither.
#[test]
fn one_label_added_to_two_enums_keeps_the_transaction() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_types",
        "CREATE TYPE a AS ENUM ('X');\nCREATE TYPE b AS ENUM ('X');\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.migration(
        "20250102000000_two",
        "ALTER TYPE a ADD VALUE 'Z';\nALTER TYPE b ADD VALUE 'Z';\nSELECT 1/0;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("failed in a transaction"), "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_enum WHERE enumlabel = 'Z'"),
        "0",
        "atomic"
    );
}

/// A database that already has a table (so the lint has something to
/// guard) and Prisma's table, as a baselined one has.
fn with_existing_table(s: &Setup) {
    s.pg.psql("CREATE TABLE \"Existing\" (id int)");
    s.pg.psql(common::migrate::PRISMA_DDL);
    s.migration(
        "20240101000000_base",
        "CREATE TABLE \"Existing\" (id int);\n",
    );
    assert_eq!(
        s.run(&["migrate", "resolve", "--applied", "20240101000000_base"])
            .code,
        0
    );
}

/// Defect 6: tables created or renamed earlier in the pending batch are new.
#[test]
fn the_lint_counts_tables_the_batch_created_or_renamed() {
    let s = Setup::new("");
    with_existing_table(&s);
    s.migration(
        "20250101000000_a",
        "CREATE TABLE \"A\"(id int);\nALTER TABLE \"A\" RENAME TO \"B\";\n",
    );
    s.migration("20250102000000_b", "CREATE INDEX \"B_id\" ON \"B\"(id);\n");
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.all().contains("Lint findings"), "{r:?}");
}

/// Defect 9: a statement on a table the database does not have (nor the
/// batch) is no risk: a history deploys into a new staging database; a table
/// it has still counts.
#[test]
fn the_lint_knows_the_database_tables() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_first",
        "DROP TABLE IF EXISTS \"Never\";\nALTER TABLE IF EXISTS \"Gone\" DROP COLUMN x;\nCREATE TABLE \"New\" (id int);\n",
    );
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.all().contains("Lint findings"), "{r:?}");
    s.migration("20250102000000_drop", "DROP TABLE IF EXISTS \"New\";\n");
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("ban-drop-table"), "{r:?}");
}

/// Defect 10 and the --allow-risky heading: the SQL inside a DO block is
/// linted, on the file's lines.
#[test]
fn the_lint_reads_do_blocks() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_init",
        "CREATE TABLE users (id int PRIMARY KEY, email text, name text);\nCREATE TABLE posts (id int, user_id int);\n",
    );
    assert_eq!(s.run(&["migrate", "deploy", "staging"]).code, 0);
    s.migration(
        "20250102000000_do",
        "SET lock_timeout = '5s';\nDO $$\nBEGIN\n  ALTER TABLE posts ADD CONSTRAINT posts_user FOREIGN KEY (user_id) REFERENCES users(id);\n  \
         ALTER TABLE users DROP COLUMN name;\n  CREATE UNIQUE INDEX users_email ON users (email);\nEXCEPTION WHEN duplicate_object THEN null;\nEND $$;\n",
    );
    let r = s.run(&["migrate", "review", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    for (line, rule) in [
        (4, "adding-foreign-key-constraint"),
        (5, "ban-drop-column"),
        (6, "require-concurrent-index-creation"),
    ] {
        assert!(
            r.stdout.contains(&format!("line {line}: {rule}")),
            "{rule} on line {line}: {r:?}"
        );
    }
    let r = s.run(&["migrate", "deploy", "staging"]);
    assert_eq!(r.code, 1, "{r:?}");
    let r = s.run(&["migrate", "deploy", "staging", "--allow-risky"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("Lint findings (they block on `staging`; --allow-risky overrode them)"),
        "{r:?}"
    );
}

/// Messages: a failed concurrent build names this migration's INVALID index,
/// not another one the database holds.
#[test]
fn a_failure_names_only_its_own_invalid_indexes() {
    let s = Setup::new("");
    s.migration("20250101000000_init", "CREATE TABLE t (r int, q int);\n");
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    s.pg.psql("INSERT INTO t VALUES (1, 1), (1, 1)");
    // Someone else's failed build, by hand.
    let _ = std::process::Command::new(format!("{}/psql", common::pg::PG_BIN))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &s.pg.port.to_string()])
        .args(["-U", "pacetracer", "-d", "pacetracer"])
        .args(["-c", "CREATE UNIQUE INDEX CONCURRENTLY other_key ON t (q)"])
        .env("PGPASSWORD", common::pg::PASSWORD)
        .output();
    assert_eq!(
        s.pg.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'other_key'::regclass"),
        "f"
    );
    s.migration(
        "20250102000000_unique",
        "CREATE UNIQUE INDEX CONCURRENTLY t_r_key ON t (r);\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("DROP INDEX CONCURRENTLY public.t_r_key;")
            && !r.stderr.contains("other_key"),
        "{r:?}"
    );
}

/// Ctrl-C and SIGTERM stop a running migration at once (PostgreSQL's cancel
/// request): a transaction is rolled back and marked so, statement by
/// statement the count stays, and the next deploy finishes either.
#[test]
fn ctrl_c_and_sigterm_stop_a_migration_at_once() {
    let s = Setup::new("");
    // How long the migrations sleep: long while the signal comes, then none.
    s.migration(
        "20250100000000_sleep",
        "CREATE TABLE sleep_for (secs float);\nINSERT INTO sleep_for VALUES (30);\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
    let nap = "SELECT pg_sleep((SELECT secs FROM sleep_for)) AS sig_marker;\n";
    for (signal, code, sql) in [
        ("-INT", 130, format!("CREATE TABLE a (x int);\n{nap}")),
        (
            "-TERM",
            143,
            format!("VACUUM;\n{nap}CREATE TABLE b (x int);\n"),
        ),
    ] {
        s.pg.psql("UPDATE sleep_for SET secs = 30");
        let name = format!("2025010{}000000_slow", code - 128);
        s.migration(&name, &sql);
        let mut child = common::migrate::spawn_deploy(&s);
        wait_for_value(
            &s.pg,
            "the migration to run",
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%sig_marker%' AND pid <> pg_backend_pid()",
            "t",
            30,
        );
        let start = std::time::Instant::now();
        std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{signal} took {:?}",
            start.elapsed()
        );
        let row = row_of(&s, &name);
        if code == 130 {
            assert!(
                row.starts_with("f|t|0|mre-ops: interrupted"),
                "rolled back: {row}"
            );
            assert_eq!(s.pg.psql("SELECT to_regclass('a') IS NULL"), "t");
        } else {
            assert!(row.starts_with("f|f|1|"), "one statement counted: {row}");
        }
        s.pg.psql("UPDATE sleep_for SET secs = 0");
        let r = s.run(&["migrate", "deploy"]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert_eq!(
        s.pg.psql("SELECT to_regclass('a') IS NOT NULL AND to_regclass('b') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL"),
        "3",
        "the statement-by-statement one finished in its own row"
    );
}

/// A script that opens its own transaction and never commits it: psql rolls
/// it back at the end of the file; so does mre-ops, and says so (it used to
/// record the migration as applied inside that transaction, which the end of
/// the session then rolled back).
#[test]
fn a_script_that_never_commits_is_rolled_back_and_said() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_open",
        "BEGIN;\nCREATE TABLE never (x int);\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("BEGIN without COMMIT"), "{r:?}");
    assert_eq!(s.pg.psql("SELECT to_regclass('never') IS NULL"), "t");
    let row = row_of(&s, "20250101000000_open");
    assert!(
        row.starts_with("f|f|0|") && row.contains("BEGIN without"),
        "{row}"
    );
}

/// A deploy whose migration sleeps `sleep_for.secs` (a table of its own):
/// long while a test kills it, none when the next deploy finishes it.
fn with_sleep_table(s: &Setup) {
    s.migration(
        "20250100000000_sleep",
        "CREATE TABLE public.sleep_for (secs float);\nINSERT INTO public.sleep_for VALUES (30);\n",
    );
    assert_eq!(s.run(&["migrate", "deploy"]).code, 0);
}

const NAP: &str = "SELECT pg_sleep((SELECT secs FROM public.sleep_for)) AS nap_marker;\n";

/// Finishing an interrupted file replays its session settings first: a
/// `SET search_path` before the kill still decides where the rest goes.
#[test]
fn finishing_a_file_replays_its_settings() {
    let s = Setup::new("");
    with_sleep_table(&s);
    s.migration(
        "20250101000000_app",
        &format!(
            "CREATE SCHEMA app;\nSET search_path TO app;\nCREATE TABLE t1 (a int);\n{NAP}CREATE INDEX CONCURRENTLY i1 ON t1 (a);\nCREATE TABLE t2 (a int);\n"
        ),
    );
    kill_when(
        &s,
        "the nap",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%nap_marker%' AND pid <> pg_backend_pid()",
    );
    s.pg.psql("UPDATE sleep_for SET secs = 0");
    wait_for_value(
        &s.pg,
        "the killed run's session to end",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%nap_marker%' AND pid <> pg_backend_pid()",
        "0",
        30,
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT to_regclass('app.t2') IS NOT NULL AND to_regclass('public.t2') IS NULL AND to_regclass('app.i1') IS NOT NULL"),
        "t",
        "the rest went into schema app"
    );
}

/// A procedure that commits runs on its own; killed inside it, the next
/// deploy does not run it again on a guess: it says the catalog cannot tell.
#[test]
fn a_committing_call_interrupted_is_not_run_twice() {
    let s = Setup::new("");
    with_sleep_table(&s);
    s.migration(
        "20250101000000_call",
        "CREATE TABLE log (x int);\nCREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO log VALUES (1); COMMIT; \
         PERFORM pg_sleep((SELECT secs FROM public.sleep_for)); END $$;\nCALL p();\nCREATE INDEX CONCURRENTLY li ON log (x);\n",
    );
    kill_when(
        &s,
        "the procedure's nap",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'CALL p()%' AND wait_event = 'PgSleep'",
    );
    s.pg.psql("UPDATE sleep_for SET secs = 0");
    wait_for_value(
        &s.pg,
        "the killed run's session to end",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL p()%'",
        "0",
        30,
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cannot be read from the catalog")
            && r.stderr
                .contains("`migrate deploy` cannot finish it on its own")
            && !r.stderr.contains("finishes the file where it stopped"),
        "offers only what works: {r:?}"
    );
    assert_eq!(s.pg.psql("SELECT count(*) FROM log"), "1", "not run twice");
}

/// COMMIT AND CHAIN keeps the script's next statements in one transaction,
/// as psql does; a ROLLBACK ending in a comment, without `;`, runs.
#[test]
fn chained_transactions_and_a_final_comment() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_chain",
        "CREATE TABLE log (x int);\nBEGIN;\nINSERT INTO log VALUES (1);\nCOMMIT AND CHAIN;\nINSERT INTO log VALUES (2);\nSELECT 1/0;\nCOMMIT;\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        s.pg.psql("SELECT string_agg(x::text, ',') FROM log"),
        "1",
        "as psql leaves it"
    );
    std::fs::remove_dir_all(s.dir.path().join("migrations/20250101000000_chain")).unwrap();
    s.pg.psql("DELETE FROM _prisma_migrations; DROP TABLE log");
    s.migration(
        "20250102000000_never_mind",
        "CREATE TABLE r (x int);\nBEGIN;\nINSERT INTO r VALUES (1);\nROLLBACK -- never mind",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.pg.psql("SELECT count(*) FROM r"), "0");
}

/// A file PostgreSQL refused in a transaction ran statement by statement
/// and then failed: `status` says which statements stay applied, not that
/// nothing of it is in the database.
#[test]
fn a_refused_transaction_that_fails_later_says_what_stayed() {
    let s = Setup::new("");
    s.migration(
        "20250101000000_b",
        "CREATE TABLE p (id int) PARTITION BY RANGE (id);\nCREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (10);\n\
         REINDEX TABLE p;\nSELECT 1/0;\nCREATE TABLE z (id int);\n",
    );
    let r = s.run(&["migrate", "deploy"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("3 of 5 statement(s)"), "{r:?}");
    let st = s.run(&["migrate", "status"]);
    assert!(
        st.stdout
            .contains("3 statement(s) before the failing one stay applied")
            && !st.stdout.contains("nothing of it is in the database"),
        "{st:?}"
    );
}
