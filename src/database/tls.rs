//! TLS for every PostgreSQL session walhook opens, on rustls (ring provider).
//!
//! One [`Tls`] is built per [`Database`](super::Database) from the `ssl*` parameters of
//! `database_url`, with libpq's meanings:
//!
//! | `sslmode` | encrypts | verifies |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (default) | if the server accepts | chain when `sslrootcert` is given |
//! | `require` | yes | chain when `sslrootcert` is given (libpq: then like `verify-ca`) |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain to `sslrootcert` and the host name |
//!
//! The same rustls `ClientConfig` serves our own protocol connection
//! ([`crate::capture::connection`], via [`wrap`]) and tokio-postgres (via [`MakeRustls`]), so
//! the replication session, the catalog session, the diesel pool, every LISTEN session and
//! the outbox reader negotiate and verify alike. Host names are checked against the
//! certificate's subjectAltName entries (DNS names and IP addresses), as rustls does; a
//! certificate that names its host only in the subject CN is not accepted under
//! `verify-full`. TLS is not used on Unix-domain sockets (as libpq).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::DatabaseError;

/// `sslmode`, with libpq's meanings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server accepts `SSLRequest`, cleartext when it refuses.
    Prefer,
    /// TLS or fail; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS, certificate chained to `sslrootcert`.
    VerifyCa,
    /// TLS, certificate chained to `sslrootcert` and valid for the host name.
    VerifyFull,
}

impl SslMode {
    /// Parses a libpq `sslmode` value.
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a server refusing TLS is an error.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The `ssl*` parameters of `database_url` (tokio-postgres's parser knows only `sslmode`
/// `disable`/`prefer`/`require`; these are taken out before it sees the string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`; `None` = `prefer`.
    pub mode: Option<SslMode>,
    /// `sslrootcert`: PEM file of trusted CA certificates.
    pub root_cert: Option<String>,
    /// `sslcert`: PEM client certificate chain.
    pub cert: Option<String>,
    /// `sslkey`: PEM private key of `sslcert`.
    pub key: Option<String>,
}

/// The TLS policy of one database: mode, and the rustls configuration when TLS may be used.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    config: Option<Arc<ClientConfig>>,
    root_cert: Option<String>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

fn parameter(parameter: &'static str, message: impl Into<String>) -> DatabaseError {
    DatabaseError::Parameter {
        parameter,
        message: message.into(),
    }
}

impl Tls {
    /// Builds the policy, reading the PEM files now (so a bad file fails at start).
    pub fn new(params: &TlsParams) -> Result<Tls, DatabaseError> {
        let mode = params.mode.unwrap_or(SslMode::Prefer);
        if mode == SslMode::Disable {
            return Ok(Tls {
                mode,
                config: None,
                root_cert: None,
            });
        }
        if params.root_cert.as_deref() == Some("system") {
            return Err(parameter(
                "sslrootcert",
                "\"system\" is not supported; name a PEM file of the CA certificates to trust",
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (&params.root_cert, mode) {
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
                return Err(parameter(
                    "sslrootcert",
                    format!("sslmode={mode} needs sslrootcert=FILE (PEM CA certificates)"),
                ));
            }
            (None, _) => Arc::new(NameUnchecked {
                chain: None,
                provider: provider.clone(),
            }),
            (Some(file), mode) => {
                let roots = Arc::new(read_roots(file)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| parameter("sslrootcert", format!("{file}: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(NameUnchecked {
                        chain: Some(webpki),
                        provider: provider.clone(),
                    })
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| DatabaseError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&params.cert, &params.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(parameter("sslkey", "sslcert is given but sslkey is not"));
            }
            (None, Some(_)) => {
                return Err(parameter("sslcert", "sslkey is given but sslcert is not"));
            }
            (Some(cert), Some(key)) => {
                let chain = read_certs("sslcert", cert)?;
                let bytes = read("sslkey", key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&bytes)
                    .map_err(|e| parameter("sslkey", format!("{key}: no PEM private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| parameter("sslkey", format!("{key} does not fit {cert}: {e}")))?
            }
        };
        Ok(Tls {
            mode,
            config: Some(Arc::new(config)),
            root_cert: params.root_cert.clone(),
        })
    }

    /// The effective `sslmode`.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Runs the TLS handshake on `io` (after the server accepted `SSLRequest`).
    pub async fn handshake<S>(&self, io: S, host: &str) -> Result<TlsStream<S>, DatabaseError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self
            .config
            .clone()
            .ok_or_else(|| DatabaseError::Tls("sslmode=disable".into()))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| DatabaseError::Tls(format!("invalid server name {host:?}: {e}")))?;
        TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|e| DatabaseError::Tls(self.explain(&e, host)))
    }

    /// A clear sentence for a failed handshake.
    fn explain(&self, e: &io::Error, host: &str) -> String {
        let rustls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let roots = self.root_cert.as_deref().unwrap_or("-");
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            })) => format!(
                "certificate for host {host} does not match (sslmode={}): it is for {}",
                self.mode,
                if presented.is_empty() {
                    "no subjectAltName".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|name| presented_name(name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
                format!(
                    "certificate for host {host} does not match (sslmode={})",
                    self.mode
                )
            }
            Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
                "the certificate of {host} is not signed by a CA in sslrootcert {roots} \
                 (sslmode={})",
                self.mode
            ),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => format!("the certificate of {host} has expired"),
            Some(rustls::Error::InvalidCertificate(other)) => {
                format!("the certificate of {host} is not acceptable: {other:?}")
            }
            Some(rustls::Error::AlertReceived(alert)) => format!(
                "{host} refused the TLS handshake ({alert:?}); check sslcert/sslkey if the server \
                 asks for a client certificate"
            ),
            _ => format!("handshake with {host} failed: {e}"),
        }
    }
}

/// rustls renders presented names as `DnsName("db.internal")`; show the name itself.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .unwrap_or(name)
}

fn read(key: &'static str, file: &str) -> Result<Vec<u8>, DatabaseError> {
    std::fs::read(file).map_err(|e| parameter(key, format!("cannot read {file}: {e}")))
}

fn read_certs(
    key: &'static str,
    file: &str,
) -> Result<Vec<CertificateDer<'static>>, DatabaseError> {
    let bytes = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parameter(key, format!("{file}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(parameter(key, format!("{file} holds no PEM certificate")));
    }
    Ok(certs)
}

fn read_roots(file: &str) -> Result<RootCertStore, DatabaseError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs("sslrootcert", file)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            parameter(
                "sslrootcert",
                format!("{file}: certificate {} is not usable: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// A boxable duplex byte stream.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// Wraps an open socket (after the server accepted `SSLRequest`) in a TLS session: our own
/// protocol connection's side.
pub(crate) async fn wrap<S>(
    tls: &Tls,
    io: S,
    host: &str,
) -> Result<Box<dyn AsyncReadWrite>, DatabaseError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Ok(Box::new(tls.handshake(io, host).await?))
}

/// tokio-postgres's side: makes a [`RustlsConnect`] per host.
#[derive(Clone)]
pub struct MakeRustls(pub(crate) Tls);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = DatabaseError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, DatabaseError> {
        Ok(RustlsConnect {
            tls: self.0.clone(),
            host: domain.to_owned(),
        })
    }
}

/// One handshake for tokio-postgres.
pub struct RustlsConnect {
    tls: Tls,
    host: String,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = DatabaseError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, DatabaseError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.tls.handshake(stream, &self.host).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS stream tokio-postgres drives.
pub struct RustlsStream<S>(TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        // SCRAM channel binding is not offered; SCRAM-SHA-256 without it still works.
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
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

/// Every mode but `verify-full`: the host name is not checked; the chain must lead to a
/// trusted CA when a root certificate was named (`verify-ca`, and `require`/`prefer` with
/// `sslrootcert`), else any certificate is accepted (libpq `require`). The handshake
/// signatures are always checked. webpki checks the chain before the name, so a name error
/// means the chain was good.
#[derive(Debug)]
struct NameUnchecked {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
