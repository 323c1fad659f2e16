//! Image tarballs from a step's `container_url`: fetched once per step (not
//! once per node) onto the broker's disk, streamed chunk by chunk (a 1 GiB
//! tarball costs the broker a file, not 1 GiB of memory), checked against
//! `container_sha256` when given, with progress reported as it goes. Nodes
//! then load the file, streamed too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::tls::Tls;

/// Longest a download may go without receiving a byte.
const IDLE: Duration = Duration::from_secs(60);

/// Why an image tarball could not be downloaded, by the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The download directory could not be made.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be sent, or no answer came.
    #[error("{0}")]
    Request(#[source] awc::error::SendRequestError),
    /// The server answered with an error status.
    #[error("HTTP {0}")]
    Status(awc::http::StatusCode),
    /// The body stopped coming.
    #[error("no data for {seconds} s after {bytes} bytes")]
    Stalled {
        /// How long nothing came.
        seconds: u64,
        /// Bytes received until then.
        bytes: u64,
    },
    /// The body broke off.
    #[error("after {bytes} bytes: {source}")]
    Read {
        /// Bytes received until then.
        bytes: u64,
        /// Why.
        source: awc::error::PayloadError,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Fewer or more bytes came than the server announced.
    #[error("the server announced {announced} bytes and sent {bytes}")]
    Length {
        /// `Content-Length`.
        announced: u64,
        /// Bytes received.
        bytes: u64,
    },
    /// The file is not the one the plan names.
    #[error("its SHA-256 is {sha256}, not the container_sha256 {expected}")]
    Digest {
        /// What came.
        sha256: String,
        /// What the plan names.
        expected: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        /// The URL's host (and port).
        authority: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host is one of the broker's own addresses.
    #[error("{authority} resolves to {ip}, a loopback address; allowed only with docker.allow_loopback_image_urls")]
    Loopback {
        /// The URL's host (and port).
        authority: String,
        /// What it resolves to.
        ip: std::net::IpAddr,
    },
    /// The whole download took too long.
    #[error("not downloaded within {0} s (docker.prepare_timeout_seconds)")]
    TooSlow(u64),
}

/// A URL as it may be shown: without its query string (a presigned URL's signature is a credential).
pub fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Fetches `url` into a new file in `dir` and answers its path; `progress(bytes so far,
/// total if known)` is called at most once a second and at the end. A digest other than
/// `expected` is an error.
pub async fn to_file(
    url: &str,
    dir: &Path,
    tls: &Tls,
    expected: Option<&str>,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<PathBuf, DownloadError> {
    tokio::fs::create_dir_all(dir).await.map_err(|source| DownloadError::CreateDir { dir: dir.to_path_buf(), source })?;
    let path = dir.join(format!("{}.tar", uuid::Uuid::new_v4().simple()));
    let result = fetch(url, &path, tls, expected, &mut progress).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    result
}

async fn fetch(
    url: &str,
    path: &Path,
    tls: &Tls,
    expected: Option<&str>,
    progress: &mut impl FnMut(u64, Option<u64>),
) -> Result<PathBuf, DownloadError> {
    let mut response = tls.client(IDLE).get(url).send().await.map_err(DownloadError::Request)?;
    if !response.status().is_success() {
        return Err(DownloadError::Status(response.status()));
    }
    let total = response.headers().get(awc::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let write_failed = |source| DownloadError::Write { path: path.to_path_buf(), source };
    let mut file = tokio::fs::File::create(path).await.map_err(write_failed)?;
    let (mut hasher, mut bytes, mut reported) = (Sha256::new(), 0u64, Instant::now());
    loop {
        let chunk = match tokio::time::timeout(IDLE, response.next()).await {
            Err(_) => return Err(DownloadError::Stalled { seconds: IDLE.as_secs(), bytes }),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk.map_err(|source| DownloadError::Read { bytes, source })?,
        };
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_failed)?;
        bytes += chunk.len() as u64;
        if reported.elapsed() >= Duration::from_secs(1) {
            progress(bytes, total);
            reported = Instant::now();
        }
    }
    file.flush().await.map_err(write_failed)?;
    if let Some(announced) = total.filter(|t| *t != bytes) {
        return Err(DownloadError::Length { announced, bytes });
    }
    progress(bytes, total);
    let sha256: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
        return Err(DownloadError::Digest { sha256, expected: expected.to_string() });
    }
    Ok(path.to_path_buf())
}

/// Refuses an http(s) URL whose host resolves to a loopback or unspecified
/// address: the broker's own services are not image sources unless allowed.
pub async fn refuse_loopback_url(url: &str) -> Result<(), DownloadError> {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else { return Ok(()) };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let target = if authority.starts_with('[') || authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addresses = tokio::net::lookup_host(target.as_str())
        .await
        .map_err(|source| DownloadError::Resolve { authority: authority.to_string(), source })?;
    for address in addresses {
        if address.ip().is_loopback() || address.ip().is_unspecified() {
            return Err(DownloadError::Loopback { authority: authority.to_string(), ip: address.ip() });
        }
    }
    Ok(())
}
