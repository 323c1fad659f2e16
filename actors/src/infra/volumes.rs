//! Bind-mount paths on this machine's disk, resolved as Docker will see them.
//!
//! A step that mounts the volume root read-write can leave a symbolic link
//! there (`ln -s /etc /v/etc-link`); a later mount of `<root>/etc-link` would
//! then hand the next step the host's `/etc`. Checking the path's text is not
//! enough, so just before each container is created every host path is walked
//! on the disk, one component at a time: a link is followed only when it
//! resolves inside the root, a missing directory is made (without following
//! anything), and the container is given the resolved path.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// Resolves the host side of each `host:container:mode` bind under `root`;
/// refuses a path that leaves the root, naming it and why.
pub fn confine(binds: &[String], root: &Path) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create the volume root {}: {e}", root.display()))?;
    let root_real = root.canonicalize().map_err(|e| format!("cannot resolve the volume root {}: {e}", root.display()))?;
    binds
        .iter()
        .map(|bind| {
            let (host, rest) = bind.split_once(':').ok_or_else(|| format!("volume_mapping: {bind:?} is not host:container"))?;
            let resolved = resolve(Path::new(host), root, &root_real).map_err(|why| format!("volume_mapping: host path {host:?} {why}"))?;
            Ok(format!("{}:{rest}", resolved.display()))
        })
        .collect()
}

fn resolve(host: &Path, root: &Path, root_real: &Path) -> Result<PathBuf, String> {
    let relative = host
        .strip_prefix(root)
        .or_else(|_| host.strip_prefix(root_real))
        .map_err(|_| format!("is outside the volume root {} (docker.volume_root)", root.display()))?;
    let mut current = root_real.to_path_buf();
    for component in relative.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::CurDir => continue,
            _ => return Err("must not contain `..`".to_string()),
        };
        let next = current.join(name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target =
                    next.canonicalize().map_err(|e| format!("has a symbolic link {} that cannot be resolved: {e}", next.display()))?;
                if !target.starts_with(root_real) {
                    return Err(format!(
                        "leads out of the volume root through the symbolic link {} (to {})",
                        next.display(),
                        target.display()
                    ));
                }
                current = target;
            }
            Ok(_) => current = next,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&next).map_err(|e| format!("cannot create {}: {e}", next.display()))?;
                current = next;
            }
            Err(e) => return Err(format!("cannot be checked at {}: {e}", next.display())),
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_the_root_are_followed_and_links_out_of_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("volumes");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink(root.join("data"), root.join("inner-link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        let real = root.canonicalize().unwrap();

        let ok = confine(&[format!("{}/inner-link/x:/x:rw", root.display())], &root).unwrap();
        assert_eq!(ok, [format!("{}/data/x:/x:rw", real.display())]);
        assert!(real.join("data/x").is_dir(), "a missing directory is made");

        let err = confine(&[format!("{}/etc-link:/x:rw", root.display())], &root).unwrap_err();
        assert!(err.contains("symbolic link") && err.contains("etc-link"), "{err}");
        let err = confine(&[format!("{}/etc-link/sub:/x:rw", root.display())], &root).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!Path::new("/etc/sub").exists());
        let err = confine(&["/etc:/x:rw".to_string()], &root).unwrap_err();
        assert!(err.contains("outside the volume root"), "{err}");
    }
}
