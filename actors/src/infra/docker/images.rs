//! Images on an engine: present or not, their command and labels, pulled (with
//! registry credentials), loaded from a tarball, built from a context, and copied
//! from another engine as a gzipped stream.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions, ImportImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{engine_message, is_not_found, DockerError, Engine};

impl Engine {
    /// Whether `image` is on the engine.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(DockerError::Pull { image: image.into(), message: engine_message(&e) }),
        }
    }

    /// The value of label `key` on `image`; `None` when the image or the label is missing.
    pub async fn image_label(&self, image: &str, key: &str) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(inspect.config.and_then(|c| c.labels).and_then(|mut l| l.remove(key))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(DockerError::Pull { image: image.into(), message: engine_message(&e) }),
        }
    }

    /// The image's entrypoint and default command.
    pub async fn image_command(&self, image: &str) -> Result<(Vec<String>, Vec<String>), DockerError> {
        let inspect =
            self.docker.inspect_image(image).await.map_err(|e| DockerError::Pull { image: image.into(), message: engine_message(&e) })?;
        let config = inspect.config.unwrap_or_default();
        Ok((config.entrypoint.unwrap_or_default(), config.cmd.unwrap_or_default()))
    }

    /// Makes sure `image` is present: already there, loaded from `tarball` (a
    /// `docker save` tarball on this machine's disk, gzip/bzip2/xz accepted, read as
    /// the engine takes it), or pulled.
    pub async fn ensure_image(
        &self,
        image: &str,
        tarball: Option<&Path>,
        credentials: Option<DockerCredentials>,
    ) -> Result<(), DockerError> {
        if self.has_image(image).await? {
            return Ok(());
        }
        match tarball {
            Some(path) => self.load_image(image, path).await,
            None => self.pull(image, credentials).await,
        }
    }

    async fn pull(&self, image: &str, credentials: Option<DockerCredentials>) -> Result<(), DockerError> {
        let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(DockerError::Pull { image: image.into(), message: engine_message(&e) });
            }
        }
        Ok(())
    }

    async fn load_image(&self, image: &str, path: &Path) -> Result<(), DockerError> {
        let fail = |message: String| DockerError::Load { image: image.into(), source_url: path.display().to_string(), message };
        let file = tokio::fs::File::open(path).await.map_err(|e| fail(e.to_string()))?;
        let mut stream = self.docker.import_image(ImportImageOptions::default(), bollard::body_try_stream(file_stream(file)), None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| fail(engine_message(&e)))?;
        }
        if !self.has_image(image).await? {
            return Err(fail(format!("the tarball does not contain {image}")));
        }
        Ok(())
    }

    /// Builds `tag` from a tar build context.
    pub async fn build_image(&self, tag: &str, context: Vec<u8>) -> Result<(), DockerError> {
        let options =
            BuildImageOptions { dockerfile: "Dockerfile".into(), t: Some(tag.to_string()), rm: true, forcerm: true, ..Default::default() };
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(Bytes::from(context))));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(DockerError::Build { image: tag.into(), message: detail.message.unwrap_or_default() });
                    }
                }
                Err(e) => return Err(DockerError::Build { image: tag.into(), message: engine_message(&e) }),
            }
        }
        Ok(())
    }

    /// Removes untagged images carrying `label` (`key=value`), left behind when a tag is rebuilt.
    pub async fn prune_untagged(&self, label: &str) -> Result<(), DockerError> {
        let filters = HashMap::from([("dangling".to_string(), vec!["true".to_string()]), ("label".to_string(), vec![label.to_string()])]);
        self.docker
            .prune_images(Some(bollard::query_parameters::PruneImagesOptions { filters: Some(filters) }))
            .await
            .map_err(|source| DockerError::Sweep { operation: "prune untagged images", source })?;
        Ok(())
    }

    /// Streams `image` from the `source` engine into this one (`docker save | gzip |
    /// docker load` without a file): compressed, as nodes are often far away behind
    /// one uplink, and given as long as it keeps moving. It fails only when no byte
    /// has moved for `stall` (a whole image within one request's fixed timeout is
    /// more than a slow link or a busy node can promise).
    pub async fn copy_image_from(&self, source: &Engine, image: &str, stall: Duration) -> Result<(), DockerError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let fail = |message: String| DockerError::Copy { image: image.into(), message };
        let started = std::time::Instant::now();
        let (moved, last_move_ms) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (counter, clock) = (moved.clone(), last_move_ms.clone());
        let export = source.docker.export_image(image).map(|chunk| chunk.map_err(|e| std::io::Error::other(engine_message(&e))));
        let compressed = gzip_stream(export).inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                clock.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        });
        // The request itself may last as long as the bytes keep moving: the watchdog below decides.
        let docker = self.docker.clone().with_timeout(COPY_LIMIT);
        let mut stream = docker.import_image(ImportImageOptions::default(), bollard::body_try_stream(compressed), None);
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(item) => {
                        item.map_err(|e| fail(engine_message(&e)))?;
                        last_move_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    None => break,
                },
                _ = watchdog.tick() => {
                    let idle = started.elapsed().saturating_sub(Duration::from_millis(last_move_ms.load(Ordering::Relaxed)));
                    if idle >= stall {
                        let mib = moved.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
                        return Err(fail(format!("no progress for {} s after {mib:.1} MiB (compressed)", stall.as_secs())));
                    }
                }
            }
        }
        if !self.has_image(image).await? {
            return Err(fail("the engine did not keep it".into()));
        }
        tracing::debug!(
            image,
            compressed_bytes = moved.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image copied"
        );
        Ok(())
    }
}

/// A file's bytes as a stream of chunks, for the engine to read as it goes.
/// The longest one image copy may take at all, moving or not (a bound, not a schedule).
const COPY_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// A stream of bytes, gzip-compressed as it goes (fast level: the link is the bottleneck, not the CPU).
fn gzip_stream(
    input: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    use std::io::Write;
    let encoder = Some(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    futures_util::stream::unfold((input, encoder), |(mut input, mut encoder)| async move {
        let mut gz = encoder.take()?;
        loop {
            match input.next().await {
                Some(Ok(chunk)) => {
                    if let Err(e) = gz.write_all(&chunk) {
                        return Some((Err(e), (input, None)));
                    }
                    if gz.get_ref().len() >= 64 * 1024 {
                        let out = Bytes::from(std::mem::take(gz.get_mut()));
                        return Some((Ok(out), (input, Some(gz))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (input, None))),
                None => {
                    return match gz.finish() {
                        Ok(rest) => Some((Ok(Bytes::from(rest)), (input, None))),
                        Err(e) => Some((Err(e), (input, None))),
                    }
                }
            }
        }
    })
}

fn file_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    #[tokio::test]
    async fn an_image_stream_is_gzipped_whole_and_in_bounded_pieces() {
        use std::io::Read;
        let input: Vec<u8> = (0..3_000_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            input.chunks(100_000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
        let pieces: Vec<bytes::Bytes> = super::gzip_stream(futures_util::stream::iter(chunks)).map(|p| p.unwrap()).collect().await;
        assert!(pieces.len() > 2, "sent as it goes, not at the end");
        let compressed: Vec<u8> = pieces.concat();
        assert!(compressed.len() < input.len() / 4, "{} of {}", compressed.len(), input.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }
}
