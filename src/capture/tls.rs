//! TLS for capture connections, with rustls (ring provider).
//!
//! `sslmode` follows libpq: `prefer` and `require` encrypt but do not verify the server's
//! certificate (libpq verifies only under `verify-ca`/`verify-full`, which the connection
//! string parser we use does not offer). Documented in `docs/configuration.md`.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::error::CaptureError;

/// Wraps an open socket (after the server accepted `SSLRequest`) in a TLS session.
pub(super) async fn wrap<S>(io: S, host: &str) -> Result<Box<dyn AsyncReadWrite>, CaptureError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| CaptureError::Tls(format!("invalid server name {host:?}: {e}")))?;
    let stream = TlsConnector::from(client_config())
        .connect(name, io)
        .await
        .map_err(|e| CaptureError::Tls(format!("handshake with {host} failed: {e}")))?;
    Ok(Box::new(stream))
}

/// A boxable duplex byte stream.
pub(super) trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                        .with_no_client_auth()
                });
            // The ring provider supports the default versions; this cannot fail.
            Arc::new(config.expect("ring supports TLS 1.2 and 1.3"))
        })
        .clone()
}

/// Accepts any certificate but still checks the handshake signatures (libpq `require`).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
