//! Connecting to PostgreSQL: the URL, the password, and TLS as libpq's `sslmode` means it.
//!
//! `sslmode` is `disable`, `prefer` (the default: TLS when the server offers it), `require`
//! (TLS, certificate not checked, as libpq does without a root certificate) or `verify-full`
//! (TLS, certificate chain checked against `sslrootcert=PATH` or the system's roots, and the
//! host name checked). `verify-ca` is refused rather than silently weakened or strengthened.
//! TLS is rustls with the ring provider. A password missing from the URL comes from
//! `PGPASSWORD`; URLs in logs and errors never show one.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::migrate::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url}: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("{url}: cannot read sslrootcert {path}: {detail}")]
    RootCert { url: String, path: String, detail: String },
}

/// Everything needed to open a connection, parsed once.
#[derive(Clone)]
pub struct ConnectOptions {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    shown_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl ConnectOptions {
    pub fn from_url(url: &str) -> Result<Self, ConnectError> {
        Self::from_url_with_password(url, None)
    }

    /// As [`ConnectOptions::from_url`]; `password` is used when the URL has none, before
    /// `PGPASSWORD`.
    pub fn from_url_with_password(url: &str, password: Option<&str>) -> Result<Self, ConnectError> {
        let shown_url = redact_url(url);
        let invalid = |detail: String| ConnectError::InvalidUrl { url: shown_url.clone(), detail };
        // tokio-postgres knows only disable/prefer/require: take the TLS parameters out first.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = TlsMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("sslmode", value)) => {
                    mode = match value {
                        "disable" => TlsMode::Disable,
                        "prefer" | "allow" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-full" => TlsMode::VerifyFull,
                        "verify-ca" => {
                            return Err(invalid("sslmode=verify-ca is not supported; use verify-full".into()))
                        }
                        other => return Err(invalid(format!("unknown sslmode `{other}`"))),
                    }
                }
                Some(("sslrootcert", path)) => root_cert = Some(path.to_owned()),
                _ => kept.push(param),
            }
        }
        let plain = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: tokio_postgres::Config =
            plain.parse().map_err(|e: tokio_postgres::Error| invalid(e.to_string()))?;
        if config.get_password().is_none() {
            if let Some(password) = password {
                config.password(password);
            } else if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("millstream");
        let tls = match mode {
            TlsMode::Disable => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            TlsMode::Prefer | TlsMode::Require => {
                config.ssl_mode(if mode == TlsMode::Prefer { SslMode::Prefer } else { SslMode::Require });
                Some(MakeRustlsConnect::new(unverified_config()))
            }
            TlsMode::VerifyFull => {
                config.ssl_mode(SslMode::Require);
                let roots = root_store(root_cert.as_deref()).map_err(|(path, detail)| {
                    ConnectError::RootCert { url: shown_url.clone(), path, detail }
                })?;
                let client = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(MakeRustlsConnect::new(client))
            }
        };
        Ok(ConnectOptions { config, tls, shown_url })
    }

    /// The URL without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Opens a connection and drives it on the current tokio runtime.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres connection ended");
                    }
                });
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "postgres connection ended");
                    }
                });
                Ok(client)
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(path: Option<&str>) -> Result<RootCertStore, (String, String)> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| (path.to_owned(), e.to_string()))? {
                let cert = cert.map_err(|e| (path.to_owned(), e.to_string()))?;
                roots.add(cert).map_err(|e| (path.to_owned(), e.to_string()))?;
            }
            if roots.is_empty() {
                return Err((path.to_owned(), "no certificate in the file".to_owned()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(("(system roots)".to_owned(), "none found; give sslrootcert=PATH".to_owned()));
            }
        }
    }
    Ok(roots)
}

/// `sslmode=require`: encrypted, certificate not checked (libpq's meaning without a root
/// certificate). Signatures are still verified, so the handshake is sound.
fn unverified_config() -> ClientConfig {
    let provider = provider();
    ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_are_understood_and_stripped() {
        for mode in ["disable", "prefer", "require"] {
            let o = ConnectOptions::from_url(&format!("postgres://u@h/db?sslmode={mode}")).unwrap();
            assert_eq!(o.tls.is_some(), mode != "disable");
        }
        let err =
            ConnectOptions::from_url("postgres://u:pw@h/db?sslmode=verify-ca").err().unwrap().to_string();
        assert!(err.contains("verify-full") && !err.contains("pw@"), "{err}");
        assert!(ConnectOptions::from_url("postgres://u@h/db?sslmode=sometimes").is_err());
        let err =
            ConnectOptions::from_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("/nonexistent.pem"), "{err}");
        let o = ConnectOptions::from_url("postgres://u@h/db?application_name=x&sslmode=disable").unwrap();
        assert!(o.tls.is_none());
    }
}
