//! Delivery of windows to the broker's ingest endpoint, http or https, with a
//! bounded buffer of what could not be delivered yet.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::metrics::Window;

/// Windows sent per request at most.
const BATCH: usize = 50;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(2);

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Windows waiting for delivery, the oldest dropped (and counted) past `capacity`.
pub(crate) struct Outbox {
    pub pending: VecDeque<Window>,
    pub capacity: usize,
    pub dropped: u64,
    pub sent: u64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self { pending: VecDeque::new(), capacity, dropped: 0, sent: 0 }
    }

    pub fn push(&mut self, mut w: Window) {
        if self.pending.len() >= self.capacity {
            self.pending.pop_front();
            self.dropped += 1;
        }
        w.dropped_windows = self.dropped;
        self.pending.push_back(w);
    }
}

/// Why the relay cannot set up delivery, or one delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// `LOADS_INGEST_URL` is not a URL.
    #[error("LOADS_INGEST_URL {url:?}: {source}")]
    Url {
        /// What was given.
        url: String,
        /// Why it is not one.
        source: hyper::http::uri::InvalidUri,
    },
    /// `LOADS_INGEST_CA` is not PEM.
    #[error("LOADS_INGEST_CA: {0}")]
    CaPem(#[source] rustls_pki_types::pem::Error),
    /// `LOADS_INGEST_CA` holds no certificate.
    #[error("LOADS_INGEST_CA holds no PEM certificate")]
    CaEmpty,
    /// rustls refused a certificate of `LOADS_INGEST_CA`, or the configuration.
    #[error("LOADS_INGEST_CA: {0}")]
    Tls(#[source] rustls::Error),
    /// A batch could not be made into a request.
    #[error("encoding a batch: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The broker answered with an error status.
    #[error("refused: HTTP {0}")]
    Refused(hyper::StatusCode),
    /// No answer came in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Posts windows to one ingest URL with one token.
pub(crate) struct IngestClient {
    client: Client<Https, Full<Bytes>>,
    url: hyper::Uri,
    authorization: String,
}

/// The roots an https ingest URL is checked against: the system's, the public web's, and `ca_pem`'s.
fn roots(ca_pem: Option<&str>) -> Result<RootCertStore, DeliverError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem.filter(|p| !p.trim().is_empty()) {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(DeliverError::CaPem)?;
        if certs.is_empty() {
            return Err(DeliverError::CaEmpty);
        }
        for cert in certs {
            roots.add(cert).map_err(DeliverError::Tls)?;
        }
    }
    Ok(roots)
}

impl IngestClient {
    pub fn new(url: &str, token: &str, ca_pem: Option<&str>) -> Result<Self, DeliverError> {
        let url: hyper::Uri = url.parse().map_err(|source| DeliverError::Url { url: url.to_string(), source })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(DeliverError::Tls)?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, url, authorization: format!("Bearer {token}") })
    }

    async fn post(&self, batch: &[Window]) -> Result<(), DeliverError> {
        let body = serde_json::to_vec(batch).map_err(|e| DeliverError::Encode(e.into()))?;
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DeliverError::Encode(e.into()))?;
        let answer = tokio::time::timeout(TIMEOUT, async {
            let response = self.client.request(request).await.map_err(DeliverError::Unreachable)?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliverError::Refused(status))
            }
        });
        answer.await.unwrap_or(Err(DeliverError::Timeout(TIMEOUT)))
    }

    /// Sends what is pending, oldest first, in batches; stops at the first failure.
    pub async fn deliver(&self, outbox: &mut Outbox) {
        while !outbox.pending.is_empty() {
            let batch: Vec<Window> = outbox.pending.iter().take(BATCH).cloned().collect();
            match self.post(&batch).await {
                Ok(()) => {
                    outbox.pending.drain(..batch.len());
                    outbox.sent += batch.len() as u64;
                }
                Err(e) => {
                    eprintln!("ingest {e}; keeping {} window(s)", outbox.pending.len());
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it_on_later_windows() {
        let mut outbox = Outbox::new(3);
        for seq in 1..=5 {
            outbox.push(Window { seq, ..Window::default() });
        }
        assert_eq!(outbox.dropped, 2);
        let kept: Vec<(u64, u64)> = outbox.pending.iter().map(|w| (w.seq, w.dropped_windows)).collect();
        assert_eq!(kept, [(3, 0), (4, 1), (5, 2)], "each window carries the losses so far");
    }

    #[test]
    fn a_ca_without_certificates_is_refused() {
        assert!(roots(Some("not a certificate")).is_err());
        assert!(roots(None).is_ok());
    }
}
