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
    /// The private CA file could not be used.
    #[error("tls.ca_file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Config(String),
}

/// The trust the broker's clients share.
#[derive(Clone, Debug)]
pub struct Tls(Arc<ClientConfig>);

impl Tls {
    /// The system's roots, and the PEM certificates of `ca_file` when given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = system_roots();
        if let Some(path) = ca_file {
            let fail = |message: String| TlsError::CaFile { path: path.display().to_string(), message };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            add_pem(&mut roots, &pem).map_err(fail)?;
        }
        Self::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
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

/// Adds every PEM certificate of `pem`; none at all is an error.
fn add_pem(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), String> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    for cert in certs {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(())
}
