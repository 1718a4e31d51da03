//! A `tcp://` Docker engine off loopback with TLS client certificates
//! (`docker_cert_path`, Docker's DOCKER_CERT_PATH folder: ca.pem, cert.pem,
//! key.pem): a second dockerd in a network namespace of its own
//! (tests/common/netns.rs) listening on its namespace address with
//! `--tlsverify`, certificates from CAs made for the test. The right folder
//! reaches it; a client certificate from another CA, and a ca.pem that did
//! not sign the engine's certificate, are refused saying which file.
mod common;

use std::path::Path;

use common::certs::TestCa;
use common::netns::NsEngine;
use common::ops::OpsToml;
use common::{xtask, TempDir};

/// A DOCKER_CERT_PATH folder `name` in `dir`.
fn cert_folder(dir: &Path, name: &str, ca: &Path, cert: &Path, key: &Path) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (from, to) in [(ca, "ca.pem"), (cert, "cert.pem"), (key, "key.pem")] {
        std::fs::copy(from, d.join(to)).unwrap();
    }
}

#[test]
fn an_engine_reached_with_tls_client_certificates() {
    let dir = TempDir::new("docker-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let engine = NsEngine::start_with("dtls", &|ns| {
        let (cert, key) = ca.server(&[&format!("IP:{ns}")]);
        let s = |p: &Path| p.display().to_string();
        vec![
            "--tlsverify".into(),
            "--tlscacert".into(),
            s(&ca.cert),
            "--tlscert".into(),
            s(&cert),
            "--tlskey".into(),
            s(&key),
            "-H".into(),
            format!("tcp://{ns}:2376"),
        ]
    });
    // A container of the environment's Compose project, never started: an
    // image imported from a one-file tarball (no registry needed).
    let tar = dir.path().join("one.tar");
    let made = std::process::Command::new("tar")
        .args([
            "-cf",
            &tar.display().to_string(),
            "-C",
            &dir.path().display().to_string(),
            "ca.pem",
        ])
        .status()
        .unwrap();
    assert!(made.success());
    engine.docker(&["import", &tar.display().to_string(), "mre-tls-probe:1"]);
    engine.docker(&[
        "create",
        "--name",
        "mre-tls-probe",
        "--label",
        "com.docker.compose.project=tlsprobe",
        "--label",
        "com.docker.compose.service=probe",
        "mre-tls-probe:1",
        "/none",
    ]);

    let (cert, key) = ca.client();
    let (stranger, stranger_key) = other.client();
    cert_folder(dir.path(), "good", &ca.cert, &cert, &key);
    cert_folder(dir.path(), "stranger", &ca.cert, &stranger, &stranger_key);
    cert_folder(dir.path(), "wrong-ca", &other.cert, &cert, &key);
    let host = format!("tcp://{}:2376", engine.ns_addr());
    let config = |certs: &str| {
        let toml = OpsToml::new()
            .env(
                "t",
                &[
                    &format!("docker_host = \"{host}\""),
                    &format!("docker_cert_path = \"{certs}\""),
                ],
            )
            .section(
                "t",
                "compose",
                &["files = [\"none.yml\"]", "project = \"tlsprobe\""],
            )
            .build();
        dir.write("ops.toml", &toml)
    };

    let r = xtask(&config("good"), &["status", "t"]);
    assert!(r.stdout.contains("mre-tls-probe"), "{r:?}");

    let r = xtask(&config("stranger"), &["status", "t"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("refused this machine's client certificate")
            && r.stderr
                .contains(&dir.path().join("stranger/cert.pem").display().to_string()),
        "{r:?}"
    );

    let r = xtask(&config("wrong-ca"), &["status", "t"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("not signed by")
            && r.stderr
                .contains(&dir.path().join("wrong-ca/ca.pem").display().to_string()),
        "{r:?}"
    );

    // Without client certificates the address is refused before anything runs.
    let toml = OpsToml::new()
        .env("t", &[&format!("docker_host = \"{host}\"")])
        .build();
    let r = xtask(&dir.write("ops.toml", &toml), &["status", "t"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("docker_cert_path"), "{r:?}");
}
