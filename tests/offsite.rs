//! Disaster Recovery, "secure, off-site location", on another host reached
//! over SSH (issue 21): each backup encrypted with age before it leaves
//! (the host holds ciphertext and no key), a drill from that copy alone
//! after the local folder is gone, a wrong key refused naming the setting,
//! `backup fetch`, and retention there. The host is an sshd in a network
//! namespace (`tests/common/ssh.rs`); PostgreSQL a throwaway server.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::netns::NsEngine;
use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD};
use common::ssh::SshHost;
use common::*;

/// A new age identity in `dir`: (its recipient, its file, the key itself).
fn keygen(dir: &TempDir, name: &str) -> (String, PathBuf, String) {
    let path = dir.path().join(name);
    let o = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen: install age (`apt-get install age`; `cargo xtask test --yes` does)");
    assert!(o.status.success(), "{o:?}");
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    let key = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    (
        String::from_utf8_lossy(&public.stdout).trim().to_string(),
        path,
        key,
    )
}

fn run(config: &Path, args: &[&str], identity: &str) -> Run {
    let r = xtask_env(
        config,
        args,
        &[("TEST_PG_PASSWORD", PASSWORD), ("TEST_AGE", identity)],
    );
    assert!(
        !identity.starts_with("AGE-SECRET-KEY-") || !r.all().contains(identity),
        "the age key was printed: {r:?}"
    );
    r
}

fn files(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(ext) && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn offsite_copies_are_encrypted_drilled_fetched_and_pruned_over_ssh() {
    common::netns::require();
    let pg = Pg::start();
    pg.psql("CREATE TABLE laps (id int PRIMARY KEY, ms int); INSERT INTO laps SELECT g, g * 7 FROM generate_series(1, 500) g");
    let engine = NsEngine::start("os");
    let host = SshHost::start(&engine);
    let dir = TempDir::new("offsite");
    let vault = dir.path().join("vault");
    let (recipient, identity, key) = keygen(&dir, "age.key");
    let (_, other, _) = keygen(&dir, "other.key");
    let ops = OpsToml::new()
        .env("t", &[])
        .section(
            "t",
            "compose",
            &["files = [\"unused.yml\"]", "project = \"unused-os\""],
        )
        .database("t", pg.port, "TEST_PG_PASSWORD")
        .section(
            "t",
            "backups",
            &[
                "method = \"host\"",
                "keep_min = 1",
                &format!("offsite = \"ssh://{}{}\"", host.target(), vault.display()),
                &format!("offsite_ssh_config = \"{}\"", host.config_path().display()),
                &format!("offsite_recipients = [\"{recipient}\"]"),
                "offsite_identity_env = \"TEST_AGE\"",
                "offsite_keep_days = 30",
            ],
        );
    let config = dir.write("ops.toml", &ops.build());
    let id = identity.to_str().unwrap();

    // A backup: encrypted here, ciphertext only on the host, with its manifest.
    let r = run(&config, &["backup", "create", "t"], id);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("copied to ssh://"), "{r:?}");
    let there = vault.join("t");
    let copies = files(&there, ".dump.age");
    assert_eq!(copies.len(), 1, "{r:?}");
    assert_eq!(files(&there, ".json").len(), 1);
    let head = std::fs::read(there.join(&copies[0])).unwrap();
    assert!(
        head.starts_with(b"age-encryption.org/v1"),
        "not age's format"
    );
    assert!(
        !head.windows(5).any(|w| w == b"PGDMP"),
        "the dump is readable off-site"
    );

    // The server and this machine's backups are lost: the drill restores
    // from the off-site copy alone (the key given as the key itself).
    let local = dir.path().join("backups/t");
    std::fs::remove_dir_all(&local).unwrap();
    let r = run(&config, &["drill", "t", "--from-offsite"], &key);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(files(&local, ".dump").is_empty(), "the drill keeps no copy");

    // Another key is refused, naming the setting; nothing is kept.
    let r = run(&config, &["backup", "fetch", "t"], other.to_str().unwrap());
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("could not decrypt") && r.stderr.contains("TEST_AGE"),
        "{r:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&local)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".fetch-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // `backup fetch` brings it back, checked; then it verifies as any backup.
    let r = run(&config, &["backup", "fetch", "t", "--dry-run"], id);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("would fetch latest from ssh://"), "{r:?}");
    assert!(
        files(&local, ".dump").is_empty(),
        "the dry run fetched: {r:?}"
    );
    let r = run(&config, &["backup", "fetch", "t", "latest"], id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(files(&local, ".dump").len(), 1, "{r:?}");
    let r = run(&config, &["backup", "verify", "t", "latest"], id);
    assert_eq!(r.code, 0, "{r:?}");

    // Retention there: a copy older than offsite_keep_days goes, the
    // newest stays.
    let r = run(&config, &["backup", "create", "t"], id);
    assert_eq!(r.code, 0, "{r:?}");
    let manifest = there.join(copies[0].replace(".dump.age", ".json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["started_unix"] = (m["started_unix"].as_i64().unwrap() - 40 * 86400).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    let r = run(&config, &["backup", "prune", "t", "--dry-run"], id);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("would delete ssh://"), "{r:?}");
    assert_eq!(files(&there, ".dump.age").len(), 2);
    let r = run(&config, &["backup", "prune", "t"], id);
    assert_eq!(r.code, 0, "{r:?}");
    let left = files(&there, ".dump.age");
    assert_eq!(left.len(), 1, "{r:?}");
    assert_ne!(left[0], copies[0], "the old copy went: {r:?}");
    assert!(!manifest.exists());
}
