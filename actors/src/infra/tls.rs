//! TLS for the broker's outgoing connections (InfluxDB, Grafana, image
//! downloads): rustls, trusting the system's roots (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured, as curl honours them) and, for a private CA,
//! the certificates of `tls.ca_file`. Every HTTP client of the broker is made
//! here, so `https://` works the same everywhere.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The private CA file could not be read.
    #[error("tls.ca_file {path}: {source}")]
    ReadCaFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The private CA file is not PEM.
    #[error("tls.ca_file {path}: {source}")]
    ParseCaFile {
        /// The file.
        path: String,
        /// Why.
        source: rustls_pki_types::pem::Error,
    },
    /// The private CA file holds no certificate.
    #[error("tls.ca_file {path}: holds no PEM certificate")]
    EmptyCaFile {
        /// The file.
        path: String,
    },
    /// rustls refused a certificate of the private CA file.
    #[error("tls.ca_file {path}: {source}")]
    CaCertificate {
        /// The file.
        path: String,
        /// Why.
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// The trust the broker's clients share.
#[derive(Clone, Debug)]
pub struct Tls(Arc<ClientConfig>);

impl Tls {
    /// The system's roots, and the PEM certificates of `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = system_roots();
        if let Some(path) = ca_file {
            let shown = || path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsError::ReadCaFile { path: shown(), source })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::ParseCaFile { path: shown(), source })?;
            if certs.is_empty() {
                return Err(TlsError::EmptyCaFile { path: shown() });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::CaCertificate { path: shown(), source })?;
            }
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }

    /// An HTTP client (http and https), each request limited to `timeout`. It follows no
    /// redirect: the address that was configured or checked is the one talked to.
    pub fn client(&self, timeout: Duration) -> awc::Client {
        awc::Client::builder().connector(awc::Connector::new().rustls_0_23(self.0.clone())).timeout(timeout).disable_redirects().finish()
    }
}

/// The system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` honoured); one rustls cannot use is passed over, as curl does.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots
}
