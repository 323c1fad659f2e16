//! Builds images from files on this machine, with no registry: a recipe lists
//! the files of a root filesystem (a binary and the shared libraries it links,
//! a static busybox, scripts) and the image is `FROM scratch` plus those files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::docker::{DockerError, Engine};

/// One entry of an image's root filesystem.
#[derive(Clone, Debug)]
pub enum RootEntry {
    /// A file copied from this machine to an absolute path in the image.
    File {
        /// Where it is here.
        from: PathBuf,
        /// Where it goes in the image.
        to: String,
    },
    /// Bytes written to an absolute path in the image, with a mode.
    Bytes {
        /// Where it goes in the image.
        to: String,
        /// The content.
        data: Vec<u8>,
        /// Unix permissions.
        mode: u32,
    },
    /// A symbolic link in the image.
    Symlink {
        /// The link's path in the image.
        to: String,
        /// What it points to.
        target: String,
    },
}

/// An image to build.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The tag, e.g. `loads/relay:0.1.0`.
    pub tag: String,
    /// The root filesystem.
    pub entries: Vec<RootEntry>,
    /// `ENTRYPOINT`, empty for none.
    pub entrypoint: Vec<String>,
    /// `CMD`, empty for none.
    pub cmd: Vec<String>,
    /// Labels besides loads' own.
    pub labels: Vec<(String, String)>,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file of the recipe cannot be read.
    #[error("image {tag}: cannot read {path}: {source}")]
    Read {
        /// The image.
        tag: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tool the recipe needs failed (ldd, the C compiler).
    #[error("image {tag}: {message}")]
    Tool {
        /// The image.
        tag: String,
        /// What failed.
        message: String,
    },
    /// The engine refused the build.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// The shared libraries `binary` links, from `ldd`; empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Entries for `binary` at `to` plus every library it links, at their own paths.
pub fn binary_with_libraries(binary: &Path, to: &str) -> Result<Vec<RootEntry>, String> {
    let mut entries = vec![RootEntry::File { from: binary.to_path_buf(), to: to.to_string() }];
    for lib in shared_libraries(binary)? {
        let to = lib.to_string_lossy().into_owned();
        entries.push(RootEntry::File { from: lib, to });
    }
    Ok(entries)
}

/// The label on every image loads builds.
pub const IMAGE_LABEL: &str = "loads.image";

fn dockerfile(recipe: &Recipe) -> String {
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let mut text = format!("FROM scratch\nCOPY rootfs/ /\nLABEL {IMAGE_LABEL}=\"true\"\n");
    for (key, value) in &recipe.labels {
        text.push_str(&format!("LABEL {key}={}\n", serde_json::Value::from(value.as_str())));
    }
    if !recipe.entrypoint.is_empty() {
        text.push_str(&format!("ENTRYPOINT {}\n", json(&recipe.entrypoint)));
    }
    if !recipe.cmd.is_empty() {
        text.push_str(&format!("CMD {}\n", json(&recipe.cmd)));
    }
    text
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

/// The tar build context of `recipe`: a Dockerfile and `rootfs/`.
pub fn context(recipe: &Recipe) -> Result<Vec<u8>, ImageError> {
    let tag = recipe.tag.clone();
    let io = |path: &Path, source: std::io::Error| ImageError::Read { tag: tag.clone(), path: path.to_path_buf(), source };
    let mut tar = tar::Builder::new(Vec::new());
    let docker = dockerfile(recipe).into_bytes();
    tar.append(&header("Dockerfile", docker.len() as u64, 0o644, tar::EntryType::Regular), docker.as_slice())
        .map_err(|e| io(Path::new("Dockerfile"), e))?;
    for entry in &recipe.entries {
        match entry {
            RootEntry::File { from, to } => {
                let data = std::fs::read(from).map_err(|e| io(from, e))?;
                let mode = std::fs::metadata(from).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap_or(0o755);
                let path = format!("rootfs{to}");
                tar.append(&header(&path, data.len() as u64, mode & 0o7777, tar::EntryType::Regular), data.as_slice())
                    .map_err(|e| io(from, e))?;
            }
            RootEntry::Bytes { to, data, mode } => {
                let path = format!("rootfs{to}");
                tar.append(&header(&path, data.len() as u64, *mode, tar::EntryType::Regular), data.as_slice())
                    .map_err(|e| io(Path::new(to), e))?;
            }
            RootEntry::Symlink { to, target } => {
                let mut h = header(&format!("rootfs{to}"), 0, 0o777, tar::EntryType::Symlink);
                h.set_link_name(target).map_err(|e| io(Path::new(to), e))?;
                h.set_cksum();
                tar.append(&h, std::io::empty()).map_err(|e| io(Path::new(to), e))?;
            }
        }
    }
    tar.into_inner().map_err(|e| io(Path::new("context"), e))
}

/// Builds `recipe` on `engine`, then removes earlier builds the tag no longer names.
pub async fn build(engine: &Engine, recipe: &Recipe) -> Result<(), ImageError> {
    let context = context(recipe)?;
    engine.build_image(&recipe.tag, context).await?;
    engine.prune_untagged(&format!("{IMAGE_LABEL}=true")).await?;
    Ok(())
}
