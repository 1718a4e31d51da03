//! Certificate authorities made for one test with `openssl` (no network):
//! a CA in a folder of the test's, and certificates it signs for servers
//! (names and addresses in subjectAltName) or clients.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    dir: PathBuf,
    name: String,
    /// The CA's certificate (PEM): what a client trusts.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e} (apt-get install openssl)"));
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl TestCa {
    /// A new CA (P-256 key, valid two days) as `DIR/NAME.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=mre-ops test CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &key.display().to_string(),
                "-out",
                &cert.display().to_string(),
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        }
    }

    /// A server certificate and its key (`DIR/NAME-server.pem`, `.key`),
    /// valid for `sans` (`DNS:localhost`, `IP:127.0.0.1`).
    pub fn server(&self, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.issue(
            "server",
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
    }

    /// A client certificate and its key (`DIR/NAME-client.pem`, `.key`).
    pub fn client(&self) -> (PathBuf, PathBuf) {
        self.issue("client", "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, role: &str, ext: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join(format!("{}-{role}", self.name));
        let (cert, key, csr, extfile) = (
            base.with_extension("pem"),
            base.with_extension("key"),
            base.with_extension("csr"),
            base.with_extension("ext"),
        );
        std::fs::write(
            &extfile,
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .unwrap();
        let s = |p: &Path| p.display().to_string();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN=mre-ops test {role}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&self.cert),
                "-CAkey",
                &s(&self.key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&extfile),
                "-out",
                &s(&cert),
            ],
        );
        (cert, key)
    }
}
