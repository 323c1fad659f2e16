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
) -> Result<PathBuf, String> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
) -> Result<PathBuf, String> {
    let mut response = tls.client(IDLE).get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let total = response.headers().get(awc::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut file = tokio::fs::File::create(path).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let (mut hasher, mut bytes, mut reported) = (Sha256::new(), 0u64, Instant::now());
    loop {
        let chunk = match tokio::time::timeout(IDLE, response.next()).await {
            Err(_) => return Err(format!("no data for {} s after {bytes} bytes", IDLE.as_secs())),
            Ok(None) => break,
            Ok(Some(chunk)) => chunk.map_err(|e| format!("after {bytes} bytes: {e}"))?,
        };
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        bytes += chunk.len() as u64;
        if reported.elapsed() >= Duration::from_secs(1) {
            progress(bytes, total);
            reported = Instant::now();
        }
    }
    file.flush().await.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some(total) = total.filter(|t| *t != bytes) {
        return Err(format!("the server announced {total} bytes and sent {bytes}"));
    }
    progress(bytes, total);
    let sha256: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(&sha256)) {
        return Err(format!("its SHA-256 is {sha256}, not the container_sha256 {expected}"));
    }
    Ok(path.to_path_buf())
}

/// Refuses an http(s) URL whose host resolves to a loopback or unspecified
/// address: the broker's own services are not image sources unless allowed.
pub async fn refuse_loopback_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else { return Ok(()) };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let target = if authority.starts_with('[') || authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addresses = tokio::net::lookup_host(target.as_str()).await.map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    for address in addresses {
        if address.ip().is_loopback() || address.ip().is_unspecified() {
            return Err(format!(
                "{authority} resolves to {}, a loopback address; allowed only with docker.allow_loopback_image_urls",
                address.ip()
            ));
        }
    }
    Ok(())
}
