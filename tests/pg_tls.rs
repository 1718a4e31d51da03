//! PostgreSQL over TLS (`database.sslmode`, `database.sslrootcert`) against
//! a real PostgreSQL 15 that takes TCP connections over TLS only, with a
//! certificate from a CA made for the test (tests/common/certs.rs): the
//! commands that connect (migrations, backups with pg_dump on this machine,
//! the lock) work with `verify-full` and the right CA, and with `require`;
//! a different CA, and a certificate for another name, are refused with a
//! message naming the setting; plain text (no sslmode, as before) is
//! refused by the server.
mod common;

use std::path::{Path, PathBuf};

use common::certs::TestCa;
use common::ops::OpsToml;
use common::pg::{Pg, PASSWORD};
use common::{xtask_env, Run, TempDir};

const PW_VAR: &str = "TLS_TEST_PG_PASSWORD";

/// ops.toml with environment `t` on the server's `pacetracer` database,
/// `tls` lines added to its [database] section.
fn config(dir: &TempDir, pg: &Pg, tls: &[&str]) -> PathBuf {
    let toml = OpsToml::new()
        .env("t", &[])
        .database("t", pg.port, PW_VAR)
        .raw(&tls.join("\n"))
        .section("t", "migrations", &["dir = \"migrations\""])
        .section("t", "backups", &["method = \"host\""])
        .build();
    dir.write("ops.toml", &toml)
}

fn run(config: &Path, args: &[&str]) -> Run {
    xtask_env(config, args, &[(PW_VAR, PASSWORD)])
}

#[test]
fn a_database_reached_over_tls() {
    let dir = TempDir::new("pg-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let (cert, key) = ca.server(&["DNS:localhost", "IP:127.0.0.1"]);
    let pg = Pg::start_tls(&cert, &key);
    // A migration that records how the tool's own connection is encrypted.
    let m = dir.path().join("migrations/20250101000000_tls");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("migration.sql"),
        "CREATE TABLE tls_seen AS SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n",
    )
    .unwrap();

    // No sslmode: plain text, as before, and this server refuses it.
    let plain = config(&dir, &pg, &[]);
    let r = run(&plain, &["migrate", "status", "t"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no encryption"), "{r:?}");

    // verify-full with the CA that signed the server's certificate.
    let verified = config(
        &dir,
        &pg,
        &["sslmode = \"verify-full\"", "sslrootcert = \"ca.pem\""],
    );
    let r = run(&verified, &["migrate", "deploy", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let seen = pg.psql("SELECT ssl, version FROM tls_seen");
    assert!(seen.starts_with("t|TLSv1."), "{seen}");
    let r = run(&verified, &["migrate", "status", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(&verified, &["lock", "status", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    // pg_dump and pg_restore on this machine get PGSSLMODE and PGSSLROOTCERT.
    let r = run(&verified, &["backup", "create", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(&verified, &["config", "t"]);
    assert!(r.stdout.contains("sslmode: verify-full"), "{r:?}");

    // require: encrypted, the certificate not checked (libpq's meaning).
    let required = config(&dir, &pg, &["sslmode = \"require\""]);
    let r = run(&required, &["migrate", "status", "t"]);
    assert_eq!(r.code, 0, "{r:?}");

    // A CA that did not sign the server's certificate: refused, saying
    // which environment's setting and what to try; no secret printed.
    let wrong = config(
        &dir,
        &pg,
        &["sslmode = \"verify-full\"", "sslrootcert = \"other.pem\""],
    );
    for args in [&["migrate", "status", "t"][..], &["backup", "create", "t"]] {
        let r = run(&wrong, args);
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        let all = r.all();
        assert!(!all.contains(PASSWORD), "{all}");
        if args[0] == "migrate" {
            for part in [
                "over TLS",
                "the server's certificate is not signed by the CA in",
                &other.cert.display().to_string(),
                "environments.t.database.sslrootcert",
                "openssl s_client -starttls postgres -connect 127.0.0.1:",
            ] {
                assert!(r.stderr.contains(part), "{part:?} in {r:?}");
            }
        }
    }

    // A CA file that is not there: named, with the setting.
    let missing = config(
        &dir,
        &pg,
        &["sslmode = \"verify-full\"", "sslrootcert = \"nope.pem\""],
    );
    let r = run(&missing, &["migrate", "status", "t"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("cannot read the CA file")
            && r.stderr.contains("environments.t.database.sslrootcert"),
        "{r:?}"
    );
}

/// verify-full checks the name too: a certificate that does not list the
/// address connected to is refused, naming it; `require` does not check it.
#[test]
fn a_certificate_for_another_name_is_refused_by_verify_full() {
    let dir = TempDir::new("pg-tls-name");
    let ca = TestCa::new(dir.path(), "ca");
    let (cert, key) = ca.server(&["DNS:db.example.invalid"]);
    let pg = Pg::start_tls(&cert, &key);
    let verified = config(
        &dir,
        &pg,
        &["sslmode = \"verify-full\"", "sslrootcert = \"ca.pem\""],
    );
    let r = run(&verified, &["migrate", "status", "t"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("the server's certificate is not valid for the host name `127.0.0.1`"),
        "{r:?}"
    );
    let required = config(&dir, &pg, &["sslmode = \"require\""]);
    let r = run(&required, &["migrate", "status", "t"]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// What cannot work is refused before anything runs, with the line.
#[test]
fn tls_settings_that_cannot_work_are_refused() {
    let dir = TempDir::new("pg-tls-config");
    for (lines, field, says) in [
        (
            &["sslmode = \"verify-full\""][..],
            "environments.t.database.sslmode",
            "set sslrootcert",
        ),
        (
            &["sslmode = \"require\"", "sslrootcert = \"ca.pem\""],
            "environments.t.database.sslrootcert",
            "verify-full",
        ),
        (
            &["sslmode = \"verify-ca\""],
            "environments.t.database.sslmode",
            "verify-full",
        ),
    ] {
        let toml = OpsToml::new()
            .env("t", &[])
            .database("t", 5432, PW_VAR)
            .raw(&lines.join("\n"))
            .build();
        let cfg = dir.write("ops.toml", &toml);
        let r = run(&cfg, &["config", "t"]);
        assert_eq!(r.code, 2, "{lines:?}: {r:?}");
        assert!(
            r.stderr.contains(field) && r.stderr.contains(says),
            "{lines:?}: {r:?}"
        );
        assert!(r.stderr.contains("ops.toml:"), "{r:?}");
    }
    let toml = OpsToml::new()
        .env("t", &["ssh = \"deploy@db.example\""])
        .database("t", 5432, PW_VAR)
        .raw("sslmode = \"require\"")
        .build();
    let cfg = dir.write("ops.toml", &toml);
    let r = run(&cfg, &["config", "t"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("through the SSH connection"), "{r:?}");
}
