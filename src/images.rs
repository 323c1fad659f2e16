//! The images loads needs, built on this machine with no registry: the relay
//! (the `loads-relay` binary installed beside `loads`, or else this very
//! binary run as `loads relay`), a busybox base, and the demo's service and
//! generators. `loads images build` builds them all; runs build
//! the ones they use when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use loads_actors::infra::docker::Engine;
use loads_actors::infra::images::{self, binary_with_libraries, ImageError, Recipe, RootEntry};

/// The per-node metrics relay.
pub const RELAY: &str = concat!("loads/relay:", env!("CARGO_PKG_VERSION"));
/// A static busybox, for tests and small tools.
pub const BUSYBOX: &str = "loads/busybox:1";
/// The demo's service under test (busybox httpd on port 8080).
pub const DEMO_HTTPD: &str = "loads/demo-httpd:1";
/// The demo's shell load generator.
pub const DEMO_SHELL_GEN: &str = "loads/demo-shell-gen:2";
/// The demo's C load generator.
pub const DEMO_C_GEN: &str = "loads/demo-c-gen:1";

/// Every image `loads images build` builds.
pub const ALL: [&str; 5] = [RELAY, BUSYBOX, DEMO_HTTPD, DEMO_SHELL_GEN, DEMO_C_GEN];

const GEN_SH: &str = include_str!("../examples/demo/gen.sh");
const GEN_C: &str = include_str!("../examples/demo/gen.c");
const INDEX_HTML: &str = include_str!("../examples/demo/index.html");

/// Busybox applets the images use, linked under /bin.
const APPLETS: [&str; 18] = [
    "sh", "wget", "nc", "date", "sleep", "usleep", "cat", "echo", "printf", "httpd", "seq", "ls", "env", "true", "false", "kill", "mkdir",
    "trap",
];

fn tool_error(tag: &str, message: impl Into<String>) -> ImageError {
    ImageError::Tool { tag: tag.to_string(), message: message.into() }
}

fn busybox_path(tag: &str) -> Result<PathBuf, ImageError> {
    let path = std::env::var_os("LOADS_BUSYBOX").map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    if path.exists() {
        Ok(path)
    } else {
        Err(tool_error(tag, format!("{} not found: install a static busybox (apt-get install busybox-static)", path.display())))
    }
}

fn busybox_entries(tag: &str) -> Result<Vec<RootEntry>, ImageError> {
    let mut entries = vec![
        RootEntry::File { from: busybox_path(tag)?, to: "/bin/busybox".into() },
        RootEntry::Bytes { to: "/tmp/.keep".into(), data: Vec::new(), mode: 0o644 },
    ];
    entries.extend(APPLETS.iter().map(|a| RootEntry::Symlink { to: format!("/bin/{a}"), target: "busybox".into() }));
    Ok(entries)
}

fn compile_c_generator(tag: &str) -> Result<PathBuf, ImageError> {
    let dir = std::env::temp_dir().join(format!("loads-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| tool_error(tag, e.to_string()))?;
    let (source, binary) = (dir.join("gen.c"), dir.join("gen"));
    std::fs::write(&source, GEN_C).map_err(|e| tool_error(tag, e.to_string()))?;
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .map_err(|e| tool_error(tag, format!("cannot run the C compiler `cc` ({e}): install gcc")))?;
    if !out.status.success() {
        return Err(tool_error(tag, format!("cc failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(binary)
}

/// The relay's entries and how the image runs it: `loads-relay` beside
/// `loads_binary` when installed, else `loads_binary` itself as `loads relay`.
/// Debug information is left out when `objcopy` is at hand, so nodes get a
/// smaller image to copy.
fn relay_entries(tag: &str, loads_binary: &Path) -> Result<(Vec<RootEntry>, Vec<String>), ImageError> {
    static COPIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let own = loads_binary.with_file_name("loads-relay");
    let (binary, entrypoint) = if own.is_file() {
        (own, vec!["/loads-relay".to_string()])
    } else {
        (loads_binary.to_path_buf(), vec!["/loads".into(), "relay".into()])
    };
    let mut entries = binary_with_libraries(&binary, &entrypoint[0]).map_err(|e| tool_error(tag, e))?;
    let copy = std::sync::atomic::Ordering::Relaxed;
    let stripped = std::env::temp_dir().join(format!("loads-relay-{}-{}", std::process::id(), COPIES.fetch_add(1, copy)));
    let done = Command::new("objcopy").arg("--strip-debug").arg(&binary).arg(&stripped).output().is_ok_and(|o| o.status.success());
    if done {
        let data = std::fs::read(&stripped);
        let _ = std::fs::remove_file(&stripped);
        let data = data.map_err(|e| ImageError::Read { tag: tag.to_string(), path: stripped.clone(), source: e })?;
        entries[0] = RootEntry::Bytes { to: entrypoint[0].clone(), data, mode: 0o755 };
    }
    Ok((entries, entrypoint))
}

/// The recipe of `tag`; `loads_binary` is the `loads` binary whose relay the relay image runs.
pub fn recipe(tag: &str, loads_binary: &Path) -> Result<Recipe, ImageError> {
    let with_libs = |binary: &Path, to: &str| binary_with_libraries(binary, to).map_err(|e| tool_error(tag, e));
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (entries, entrypoint, cmd) = match tag {
        RELAY => {
            let (entries, entrypoint) = relay_entries(tag, loads_binary)?;
            (entries, entrypoint, Vec::new())
        }
        BUSYBOX => (busybox_entries(tag)?, Vec::new(), strings(&["/bin/sh"])),
        DEMO_HTTPD => {
            let mut e = busybox_entries(tag)?;
            e.push(RootEntry::Bytes { to: "/www/index.html".into(), data: INDEX_HTML.as_bytes().to_vec(), mode: 0o644 });
            (e, Vec::new(), strings(&["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"]))
        }
        DEMO_SHELL_GEN => {
            let mut e = busybox_entries(tag)?;
            e.push(RootEntry::Bytes { to: "/gen.sh".into(), data: GEN_SH.as_bytes().to_vec(), mode: 0o755 });
            (e, strings(&["/bin/sh", "/gen.sh"]), Vec::new())
        }
        DEMO_C_GEN => (with_libs(&compile_c_generator(tag)?, "/gen")?, strings(&["/gen"]), Vec::new()),
        other => return Err(tool_error(other, "not an image loads knows how to build")),
    };
    Ok(Recipe { tag: tag.to_string(), entries, entrypoint, cmd })
}

/// Builds `tag` (again, even if present).
pub async fn build(engine: &Engine, tag: &str, loads_binary: &Path) -> Result<(), ImageError> {
    images::build(engine, &recipe(tag, loads_binary)?).await
}

/// Builds each of `tags` that loads knows and the engine lacks; answers the ones built.
pub async fn ensure<'a>(engine: &Engine, tags: impl IntoIterator<Item = &'a str>, loads_binary: &Path) -> Result<Vec<String>, ImageError> {
    let mut built = Vec::new();
    for tag in tags.into_iter().filter(|t| ALL.contains(t)) {
        if !engine.has_image(tag).await? {
            images::build(engine, &recipe(tag, loads_binary)?).await?;
            built.push(tag.to_string());
        }
    }
    Ok(built)
}
