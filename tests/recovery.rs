//! Disaster Recovery, Recovery Procedures against real PostgreSQL: `assess`
//! (pg_amcheck, row counts against the latest backup's manifest, a deleted
//! table found missing), the incident record a restore writes (markdown
//! file, journal row, no password), and `backup schedule install|uninstall`
//! on a temporary root (systemd units enabled with `systemctl --root`, and
//! a cron entry), never this machine's /etc.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD};
use common::*;

/// `t` (plain) and `prod` (protected) on one throwaway server, host backups.
fn config(dir: &TempDir, pg: &Pg) -> PathBuf {
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
            .section(env, "backups", &["method = \"host\""]);
    }
    dir.write("ops.toml", &ops.build())
}

fn run(config: &Path, args: &[&str]) -> Run {
    xtask_env(config, args, &[("TEST_PG_PASSWORD", PASSWORD)])
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name}: {doc}"))
}

#[test]
fn assess_finds_a_dropped_table_and_restore_writes_an_incident() {
    let pg = Pg::start();
    pg.psql(
        "CREATE TABLE laps (id serial PRIMARY KEY, seq int UNIQUE); \
         INSERT INTO laps (seq) SELECT g FROM generate_series(1, 1000) g; \
         CREATE SCHEMA other; CREATE TABLE other.notes (id int PRIMARY KEY, body text); \
         INSERT INTO other.notes SELECT g, md5(g::text) FROM generate_series(1, 50) g;",
    );
    let dir = TempDir::new("recovery");
    let config = config(&dir, &pg);
    let r = run(&config, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");

    // The damage: a table dropped, rows deleted; and a write made since.
    pg.psql(
        "DROP TABLE other.notes; DELETE FROM laps WHERE seq > 900; \
         CREATE TABLE sessions (id int); INSERT INTO sessions SELECT generate_series(1, 7);",
    );

    // Without the extension: reported, with the flag that installs it.
    let a = run(&config, &["--json", "assess", "t"]);
    assert_eq!(a.code, 0, "{a:?}");
    let doc = json(&a);
    let c = check(&doc, "corruption (pg_amcheck)");
    assert_eq!(c["state"], "WARN", "{doc}");
    assert!(
        c["next"].as_str().unwrap().contains("--install-amcheck"),
        "{doc}"
    );
    let rows = check(&doc, "rows against the latest backup");
    assert_eq!(rows["state"], "WARN", "{doc}");
    let detail = rows["detail"].as_str().unwrap();
    assert!(
        detail.contains("MISSING since the backup: other.notes (50 rows then)"),
        "{detail}"
    );
    assert!(detail.contains("public.laps 900 < 1000"), "{detail}");
    assert!(
        detail.contains("new tables: public.sessions (7 rows)"),
        "{detail}"
    );
    let back = &doc["restore_latest"];
    assert_eq!(
        back["brings_back"]["tables"][0],
        "other.notes (50 rows then)"
    );
    assert_eq!(back["loses"]["tables"][0], "public.sessions (7 rows)");
    assert_eq!(doc["rows_now"]["public.laps"], 900, "{doc}");
    assert_eq!(check(&doc, "WAL archive continuity")["state"], "SKIP");

    // With it: pg_amcheck (from this machine, as the backups) finds nothing.
    let a = run(&config, &["--json", "assess", "t", "--install-amcheck"]);
    assert_eq!(a.code, 0, "{a:?}");
    let doc = json(&a);
    assert_eq!(
        check(&doc, "corruption (pg_amcheck)")["state"],
        "PASS",
        "{doc}"
    );
    let human = run(&config, &["assess", "t"]);
    assert!(
        human.stdout.contains("If you restore `latest`"),
        "{human:?}"
    );

    // The restore writes its incident: a markdown file and a journal row.
    let reason = "test: bad DELETE at 14:02";
    let r = run(
        &config,
        &[
            "restore", "t", "latest", "--yes", "--reason", reason, "--wait", "5",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let file = r
        .stdout
        .lines()
        .chain(r.stderr.lines())
        .find_map(|l| l.strip_prefix("Incident record: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no incident record named: {r:?}"));
    assert!(
        file.starts_with(dir.path().join("backups/t/incidents")),
        "{file:?}"
    );
    let md = std::fs::read_to_string(&file).unwrap();
    assert!(md.contains(reason), "{md}");
    assert!(md.contains("| result | success |"), "{md}");
    assert!(md.contains("| public.sessions | 7 | 0 | -7 |"), "{md}");
    assert!(md.contains("| other.notes | 0 | 50 | +50 |"), "{md}");
    assert!(md.contains("Swap it in"), "{md}");
    assert!(
        !md.contains(PASSWORD),
        "password in the incident record: {md}"
    );
    let row = pg.psql_db(
        "postgres",
        "SELECT operation || '|' || result || '|' || reason || '|' || (data_window->'tables'->'public.laps'->>'change') \
         FROM mre_ops_incidents WHERE environment = 't'",
    );
    assert_eq!(row, format!("restore|success|{reason}|100"));
    let everything = pg.psql_db(
        "postgres",
        "SELECT row_to_json(i)::text FROM mre_ops_incidents i",
    );
    assert!(!everything.contains(PASSWORD), "password in the journal");

    // Listed, and pointed to by `backup list`.
    let l = run(&config, &["--json", "incidents", "t"]);
    assert_eq!(l.code, 0, "{l:?}");
    assert_eq!(json(&l)["incidents"][0]["reason"], reason, "{l:?}");
    let b = run(&config, &["backup", "list", "t"]);
    assert!(b.stdout.contains("Latest incident: "), "{b:?}");
}

#[test]
fn schedule_install_and_uninstall_on_a_temporary_root() {
    assert!(
        Command::new("systemctl").arg("--version").output().is_ok(),
        "systemctl is missing: this test enables units under a temporary root with \
         `systemctl --root`. Install it with `apt-get install systemd` (`cargo xtask test --yes` does)"
    );
    let dir = TempDir::new("schedule");
    let config = dir.write(
        "ops.toml",
        &OpsToml::new()
            .env("t", &[])
            .section(
                "t",
                "compose",
                &["files = [\"unused.yml\"]", "project = \"unused-t\""],
            )
            .build(),
    );
    let root = dir.path().join("root");
    for d in ["etc/systemd/system", "etc/cron.d"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let units = root.join("etc/systemd/system");
    let files = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = walk(d)
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    };
    let r = root.to_str().unwrap();

    // systemd: the units written, the timers enabled by systemctl --root.
    let i = xtask(
        &config,
        &[
            "backup", "schedule", "install", "t", "--root", r, "--init", "systemd",
        ],
    );
    assert_eq!(i.code, 0, "{i:?}");
    assert_eq!(
        files(&root),
        [
            "etc/systemd/system/mre-ops-backup-t.service",
            "etc/systemd/system/mre-ops-backup-t.timer",
            "etc/systemd/system/mre-ops-drill-t.service",
            "etc/systemd/system/mre-ops-drill-t.timer",
            "etc/systemd/system/timers.target.wants/mre-ops-backup-t.timer",
            "etc/systemd/system/timers.target.wants/mre-ops-drill-t.timer",
        ]
    );
    let service = std::fs::read_to_string(units.join("mre-ops-backup-t.service")).unwrap();
    let workspace = dir.path().display().to_string();
    assert!(
        service.contains(&format!("WorkingDirectory={workspace}")),
        "{service}"
    );
    assert!(service.contains(" xtask --config "), "{service}");
    assert!(service.contains("backup create t\n"), "{service}");
    assert!(service.contains("backup prune t\n"), "{service}");
    let timer = std::fs::read_to_string(units.join("mre-ops-drill-t.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*-*-01 04:47:00 UTC"), "{timer}");

    // Something else's file is left alone.
    std::fs::write(units.join("other.service"), "[Unit]\n").unwrap();
    let u = xtask(
        &config,
        &[
            "backup",
            "schedule",
            "uninstall",
            "t",
            "--root",
            r,
            "--init",
            "systemd",
        ],
    );
    assert_eq!(u.code, 0, "{u:?}");
    assert_eq!(files(&root), ["etc/systemd/system/other.service"]);

    // cron: one file in cron.d, removed again.
    let i = xtask(
        &config,
        &[
            "backup", "schedule", "install", "t", "--root", r, "--init", "cron",
        ],
    );
    assert_eq!(i.code, 0, "{i:?}");
    let cron = std::fs::read_to_string(root.join("etc/cron.d/mre-ops-backup-t")).unwrap();
    assert!(cron.contains("\n17 3 * * * "), "{cron}");
    assert!(cron.contains("\n47 4 1 * * "), "{cron}");
    let u = xtask(
        &config,
        &[
            "backup",
            "schedule",
            "uninstall",
            "t",
            "--root",
            r,
            "--init",
            "cron",
        ],
    );
    assert_eq!(u.code, 0, "{u:?}");
    assert_eq!(files(&root), ["etc/systemd/system/other.service"]);
}

/// Every file and symlink under `d`.
fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
