//! TLS for a database reached over a network directly (`sslmode`,
//! `sslrootcert`): a connector for the `postgres` client over rustls with
//! the ring provider. `require` and `prefer` encrypt without checking the
//! certificate, as libpq does; `verify-full` checks that it chains to the
//! CA file and is valid for the host name. Refusals say which file and
//! which setting to look at.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How a connection is encrypted, from its URL's `sslmode` and
/// `sslrootcert` (libpq's names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    /// No `sslmode`: plain text for this client (what mre-ops always did);
    /// the client tools keep libpq's default.
    #[default]
    Unset,
    Disable,
    Prefer,
    Require,
    VerifyFull {
        ca: PathBuf,
    },
}

impl Tls {
    /// From the values of `sslmode` and `sslrootcert`.
    pub(super) fn from_params(mode: Option<&str>, ca: Option<&str>) -> Result<Tls> {
        Ok(match mode {
            None => Tls::Unset,
            Some("disable") => Tls::Disable,
            Some("prefer") => Tls::Prefer,
            Some("require") => Tls::Require,
            Some("verify-full") => Tls::VerifyFull {
                ca: PathBuf::from(ca.context(
                    "sslmode=verify-full needs sslrootcert (the CA file the server's certificate chains to)",
                )?),
            },
            Some(other) => anyhow::bail!(
                "sslmode={other} is not supported: use disable, prefer, require or verify-full"
            ),
        })
    }

    /// `PGSSLMODE` and `PGSSLROOTCERT` for libpq's tools (pg_dump, psql).
    pub fn libpq_env(&self) -> Vec<(String, String)> {
        let mode = match self {
            Tls::Unset => return Vec::new(),
            Tls::Disable => "disable",
            Tls::Prefer => "prefer",
            Tls::Require => "require",
            Tls::VerifyFull { .. } => "verify-full",
        };
        let mut env = vec![("PGSSLMODE".to_string(), mode.to_string())];
        if let Tls::VerifyFull { ca } = self {
            env.push(("PGSSLROOTCERT".into(), ca.display().to_string()));
        }
        env
    }

    /// The client's own setting (`Unset` is plain text, as before).
    pub(super) fn ssl_mode(&self) -> postgres::config::SslMode {
        use postgres::config::SslMode;
        match self {
            Tls::Unset | Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require | Tls::VerifyFull { .. } => SslMode::Require,
        }
    }

    /// The connector for this mode to `port`, None for plain text. Reads the
    /// CA file; a missing or empty one is an error naming the setting.
    pub(super) fn connector(&self, port: u16) -> Result<Option<Connector>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("setting up TLS (rustls with ring)")?;
        let (config, ca) = match self {
            Tls::Unset | Tls::Disable => return Ok(None),
            Tls::Prefer | Tls::Require => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                    .with_no_client_auth(),
                None,
            ),
            Tls::VerifyFull { ca } => (
                builder
                    .with_root_certificates(read_roots(ca)?)
                    .with_no_client_auth(),
                Some(ca.clone()),
            ),
        };
        let mut config = config;
        // What libpq 17 sends; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Connector {
            config: Arc::new(config),
            ca,
            port,
        }))
    }
}

/// Which setting named each CA file (`environments.ENV.database.sslrootcert`),
/// told by `core::session` when it resolves an environment: a refusal names it.
static CA_SETTINGS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// Say that `ca` comes from `setting`, for messages.
pub fn name_ca(ca: &Path, setting: &str) {
    let mut known = CA_SETTINGS.lock().unwrap();
    if !known.iter().any(|(p, _)| p == ca) {
        known.push((ca.to_path_buf(), setting.to_string()));
    }
}

fn setting_of(ca: &Path) -> String {
    CA_SETTINGS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p == ca)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| "sslrootcert of the connection URL".into())
}

fn read_roots(ca: &Path) -> Result<RootCertStore> {
    let setting = setting_of(ca);
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "cannot read the CA file {} ({setting}): it must be a PEM file of CA certificates \
                 (paths in ops.toml are relative to its folder)",
                ca.display()
            )
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    anyhow::ensure!(
        added > 0,
        "the CA file {} ({setting}) holds no usable certificate: it must be a PEM file with \
         `-----BEGIN CERTIFICATE-----` blocks",
        ca.display()
    );
    Ok(roots)
}

/// `require`: the channel is encrypted and the handshake's signatures are
/// checked, but not who the certificate names or who signed it (libpq's
/// `require` without a root certificate).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS refusal explained (which setting, what to try), found in an error's
/// chain by `is_refusal`.
#[derive(Debug)]
pub(super) struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Whether the TLS handshake refused the server (its certificate).
pub(super) fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // io::Error's source() skips the error it wraps: look inside.
        let inner = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|i| i.is::<Refused>());
        if inner || err.is::<Refused>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    ca: Option<PathBuf>,
    port: u16,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Handshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Handshake {
            connector: self.clone(),
            name,
        })
    }
}

pub struct Handshake {
    connector: Connector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Handshake { connector, name } = self;
        Box::pin(async move {
            let host = name.to_str().into_owned();
            tokio_rustls::TlsConnector::from(connector.config.clone())
                .connect(name, stream)
                .await
                .map(Stream)
                .map_err(|e| explain(e, &host, &connector))
        })
    }
}

/// A certificate refusal as the operator can act on it; other errors as they are.
fn explain(e: io::Error, host: &str, c: &Connector) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(cert)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let ca = c.ca.as_deref().unwrap_or(Path::new("?"));
    let show = format!(
        "`openssl s_client -starttls postgres -connect {host}:{} -showcerts` shows the certificates the server sends",
        c.port
    );
    let text = match cert {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the server's certificate is not signed by the CA in {} ({}): set it to the CA that signed \
             the server's certificate (a managed database's provider publishes its CA bundle); {show}",
            ca.display(),
            setting_of(ca)
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate is not valid for the host name `{host}` (sslmode = \"verify-full\" \
                 checks it): connect with a name the certificate lists (database.host); {show}"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
            "the server's certificate has expired (or this machine's clock is wrong); {show}"
        ),
        other => format!(
            "the server's certificate was refused ({other:?}), checked against the CA in {} ({}); {show}",
            ca.display(),
            setting_of(ca)
        ),
    };
    io::Error::new(io::ErrorKind::InvalidData, Refused(text))
}

/// An encrypted connection to PostgreSQL.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    /// No channel binding (SCRAM without it, as with `channel_binding=prefer`
    /// when the client cannot): it would need the certificate's signature
    /// algorithm parsed from DER, and `verify-full` already pins the server.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
