//! Every release with migrations rehearsed on a copy of the data, every
//! rollback proven before it is needed (issue 20), on the real engine, the
//! nginx proxy, the registry and the demo's PostgreSQL: a migration whose
//! CHECK the live release's code violates (it passes the lint) stops the
//! deploy before production changes; with `--no-rollback-path` it goes on,
//! and `rollback` then refuses, naming its options; a compatible release
//! proves the rollback and `rollback` goes; a migration that deletes rows
//! is caught by the integrity check; Ctrl-C during a rehearsal leaves no
//! container and no copy behind.
mod common;

use std::time::Duration;

use common::release::ReleaseStack;

fn tag(s: &ReleaseStack, v: &str) -> String {
    format!("{}-{v}", s.project)
}

const BACKUPS: &str = "[environments.rel.backups]\nmethod = \"container\"\ndir = \"backups\"\n";

/// ops.toml with backups (the rehearsal's copy), the app built from `context`.
fn configure(s: &ReleaseStack, context: &str) {
    s.write_config(context, None, BACKUPS);
}

/// The demo's app image of `base` with the sessions limited to 12 hours:
/// the code a new CHECK on `sessions` needs.
fn short_sessions(s: &ReleaseStack, base: &str) -> String {
    let dir = s.dir.path().join("short-sessions");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}/mre-demo-app:{base}\nENV MRE_DEMO_SESSION_HOURS=12\n",
            s.registry
        ),
    )
    .unwrap();
    dir.display().to_string()
}

fn add_migration(s: &ReleaseStack, name: &str, sql: &str) {
    let m = s.dir.path().join("migrations").join(name);
    std::fs::create_dir_all(&m).unwrap();
    // The lint wants a lock timeout before a statement that locks a table.
    std::fs::write(
        m.join("migration.sql"),
        format!("SET lock_timeout = '5s';\n{sql}"),
    )
    .unwrap();
}

fn remove_migration(s: &ReleaseStack, name: &str) {
    std::fs::remove_dir_all(s.dir.path().join("migrations").join(name)).unwrap();
}

/// Nothing a rehearsal made is left: no container, no copy of the data.
fn assert_nothing_left(s: &ReleaseStack) {
    let containers = common::docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=mre-ops.rehearsal=rel/{}", s.project),
    ]);
    assert!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
    let copies = s.psql(
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'mre_ops_verify%'",
    );
    assert!(copies.trim().is_empty(), "copies left: {copies}");
}

fn live_image(s: &ReleaseStack) -> String {
    let conf = common::docker(&[
        "exec",
        &s.container("proxy"),
        "cat",
        "/etc/nginx/mre/upstreams.conf",
    ]);
    let colour = conf
        .lines()
        .find_map(|l| l.strip_prefix("# live mre-app "))
        .unwrap()
        .trim()
        .to_string();
    common::docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &s.container(&format!("app-{colour}")),
    ])
    .trim()
    .to_string()
}

fn last_entry(s: &ReleaseStack) -> serde_json::Value {
    let l = s.run(&["--json", "releases", "rel"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    v["entries"].as_array().unwrap().last().unwrap().clone()
}

#[test]
fn rehearsal_proves_rollback_before_production_changes() {
    let s = ReleaseStack::new("rhr");
    let app = common::workspace_root()
        .join("demo/docker/app")
        .display()
        .to_string();
    configure(&s, &app);
    let v1 = tag(&s, "v1");
    let r = s.run(&["deploy", "rel", "--tag", &v1]);
    assert_eq!(r.code, 0, "{r:?}");

    // A migration the lint refuses (a table locked with no lock timeout)
    // stops the deploy before any backup is taken for its rehearsal.
    let dumps = || {
        std::fs::read_dir(s.dir.path().join("backups/rel"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "dump"))
                    .count()
            })
            .unwrap_or(0)
    };
    let before = dumps();
    let risky = s.dir.path().join("migrations/20991230000000_risky");
    std::fs::create_dir_all(&risky).unwrap();
    std::fs::write(risky.join("migration.sql"), "ALTER TABLE \"sessions\" ADD COLUMN \"risky\" int NOT NULL DEFAULT 0;\nCREATE INDEX \"sessions_risky\" ON \"sessions\" (\"risky\");\n").unwrap();
    let r = s.run(&["deploy", "rel", "--tag", &tag(&s, "v1-risky")]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("the lint found"), "{r:?}");
    assert_eq!(
        dumps(),
        before,
        "no backup for a deploy the lint refuses: {r:?}"
    );
    remove_migration(&s, "20991230000000_risky");

    // A release whose migration adds a CHECK the live code violates on
    // every login (sessions of 24 h; the new code makes 12 h ones). The
    // lint passes it (NOT VALID); the rehearsal starts the live release on
    // the migrated copy, its login fails, and production is not touched.
    const CHECK: &str = "20991231000000_short_sessions";
    add_migration(
        &s,
        CHECK,
        "ALTER TABLE \"sessions\" ADD CONSTRAINT \"sessions_short\" CHECK (\"expires_at\" <= \"created_at\" + interval '13 hours') NOT VALID;\n",
    );
    configure(&s, &short_sessions(&s, &v1));
    let v2 = tag(&s, "v2");
    let r = s.run(&["deploy", "rel", "--tag", &v2]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("rollback would break") && r.stderr.contains(&v1),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("Rehearsal: migration 20991231000000_short_sessions")
            && r.stdout.contains(&format!(
                "the new release {v2} on the migrated copy: passes"
            )),
        "{r:?}"
    );
    assert!(live_image(&s).ends_with(&v1), "production still serves v1");
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_constraint WHERE conname = 'sessions_short'")
            .trim(),
        "0",
        "production's schema is untouched"
    );
    assert_nothing_left(&s);
    let last = last_entry(&s);
    assert_eq!(last["result"], "failed", "{last}");
    assert_eq!(last["rehearsal"]["ok"], false, "{last}");

    // With --no-rollback-path it goes on, and the journal says so; then
    // `rollback` to v1 is refused with its options.
    let r = s.run(&[
        "deploy",
        "rel",
        "--tag",
        &v2,
        "--no-rollback-path",
        "v1 sessions are being retired",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(live_image(&s).ends_with(&v2));
    let l = s.run(&["--json", "releases", "rel"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    let first = v["entries"][0]["id"].to_string();
    assert_eq!(v["rollback_safe"][&first], "NO", "{v}");
    let r = s.run(&["rollback", "rel"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("not proven to run on the current schema")
            && r.stderr.contains("--with-db pre-deploy")
            && r.stderr.contains("--force"),
        "{r:?}"
    );
    // The data `--with-db pre-deploy` would lose: the laps ingested since
    // the backup the rehearsal took before v2's migrations.
    assert!(
        r.stderr
            .contains("restoring it loses what was written since")
            && r.stderr.contains("public.laps +"),
        "{r:?}"
    );
    assert!(live_image(&s).ends_with(&v2), "nothing changed");

    // A compatible release (a nullable column), whose migration holds
    // `events` exclusively for over a second: outside the migration window
    // it is refused after the rehearsal, before production changes; with
    // --now it goes, the rollback to v2 proven, and `rollback` goes.
    add_migration(
        &s,
        "20991231000001_event_notes",
        "ALTER TABLE \"events\" ADD COLUMN \"notes\" TEXT;\nSELECT pg_sleep(1.5);\n",
    );
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24;
    let window = format!("{:02}:00-{:02}:00 UTC", (hour + 2) % 24, (hour + 3) % 24);
    let toml = std::fs::read_to_string(&s.config).unwrap().replace(
        "dir = \"migrations\"\n",
        &format!("dir = \"migrations\"\nwindow = \"{window}\"\nmax_lock_secs = 0.5\n"),
    );
    std::fs::write(&s.config, toml).unwrap();
    let v3 = tag(&s, "v3");
    let r = s.run(&["deploy", "rel", "--tag", &v3]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("outside the migration window")
            && r.stderr.contains("ACCESS EXCLUSIVE on events")
            && r.stderr.contains("--now"),
        "{r:?}"
    );
    assert!(live_image(&s).ends_with(&v2), "nothing changed");
    let r = s.run(&["deploy", "rel", "--tag", &v3, "--now"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("rollback proven on the new schema"),
        "{r:?}"
    );
    let r = s.run(&["releases", "rel"]);
    assert!(r.stdout.contains("rollback-safe: yes"), "{r:?}");
    let r = s.run(&["rollback", "rel"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("is proven on the current schema"),
        "{r:?}"
    );
    assert!(live_image(&s).ends_with(&v2));

    // A migration that deletes rows: the integrity check stops it.
    add_migration(
        &s,
        "20991231000002_prune_laps",
        "DELETE FROM \"laps\" WHERE \"seq\" % 2 = 0;\n",
    );
    let v4 = tag(&s, "v4");
    let r = s.run(&["deploy", "rel", "--tag", &v4]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("lose data") && r.stderr.contains("laps"),
        "{r:?}"
    );
    assert_eq!(
        s.psql("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '20991231000002_prune_laps'")
            .trim(),
        "0"
    );
    assert_nothing_left(&s);
    remove_migration(&s, "20991231000002_prune_laps");

    // Ctrl-C while the rehearsal runs a release on the copy: the undos
    // remove the container and the copy; production is as it was.
    add_migration(
        &s,
        "20991231000003_event_venue",
        "ALTER TABLE \"events\" ADD COLUMN \"venue\" TEXT;\n",
    );
    let v5 = tag(&s, "v5");
    let child = s.spawn(&["deploy", "rel", "--tag", &v5]);
    let start = std::time::Instant::now();
    loop {
        let running = common::docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=mre-ops.rehearsal=rel/{}", s.project),
        ]);
        if !running.trim().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the rehearsal never started a release on the copy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_nothing_left(&s);
    assert!(live_image(&s).ends_with(&v2), "production untouched");
    assert_eq!(
        s.psql("SELECT count(*) FROM _prisma_migrations WHERE migration_name = '20991231000003_event_venue'")
            .trim(),
        "0"
    );
    let r = s.run(&["lock", "status", "rel"]);
    assert!(r.stdout.contains("is not locked"), "{r:?}");
}
