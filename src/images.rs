//! The images loads needs, built on this machine with no registry: the relay
//! (always an optimized `loads-relay`, see [`relay_binary`]), a busybox base,
//! and the demo's service and generators. `loads images build` builds them
//! all; runs build the ones they use when missing, and the relay image again
//! when the relay binary at hand is not the one it holds.

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

/// The label holding the SHA-256 of the relay binary a relay image holds.
pub const RELAY_DIGEST_LABEL: &str = "loads.relay.sha256";

/// Whether `binary` is an optimized `loads-relay` (its `--version` says so).
fn is_optimized_relay(binary: &Path) -> bool {
    Command::new(binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("(optimized)"))
}

/// The optimized relay the relay image holds, whatever profile `loads` itself was built
/// with: `LOADS_RELAY_BINARY` when set; else `loads-relay` beside `loads_binary` when it is
/// an optimized build (`cargo install --path relay` puts it beside an installed `loads`);
/// else built from this source tree, once (`cargo build --profile relay -p loads-relay`, a
/// few minutes the first time, into `relay-build/` of the Cargo target directory).
pub fn relay_binary(loads_binary: &Path) -> Result<PathBuf, ImageError> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| find_relay(loads_binary)).clone().map_err(|m| tool_error(RELAY, m))
}

fn find_relay(loads_binary: &Path) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("LOADS_RELAY_BINARY").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match is_optimized_relay(&path) {
            true => Ok(path),
            false => Err(format!("LOADS_RELAY_BINARY={}: not an optimized loads-relay (see its --version)", path.display())),
        };
    }
    let beside = loads_binary.with_file_name("loads-relay");
    if beside.is_file() && is_optimized_relay(&beside) {
        return Ok(beside);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("relay/Cargo.toml").is_file() {
        return Err("no optimized loads-relay beside loads nor in LOADS_RELAY_BINARY, and no source to build one: \
            cargo install --path relay (from loads' source)"
            .into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("relay-build");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tracing::info!(target = %target.display(), "building the relay image's optimized loads-relay (the first time takes a few minutes)");
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "--locked", "--profile", "relay", "-p", "loads-relay", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .map_err(|e| format!("cannot run {} to build the relay: {e}", cargo.to_string_lossy()))?;
    if !out.status.success() {
        return Err(format!("building the relay failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(target.join("relay/loads-relay"))
}

/// The SHA-256 of a file, in hex.
fn sha256_of(tag: &str, path: &Path) -> Result<String, ImageError> {
    use sha2::Digest as _;
    let data = std::fs::read(path).map_err(|e| ImageError::Read { tag: tag.to_string(), path: path.to_path_buf(), source: e })?;
    Ok(sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect())
}

/// [`relay_binary`] without holding up the caller's runtime while it builds.
async fn relay_binary_async(loads_binary: &Path) -> Result<PathBuf, ImageError> {
    let binary = loads_binary.to_path_buf();
    tokio::task::spawn_blocking(move || relay_binary(&binary)).await.map_err(|e| tool_error(RELAY, e.to_string()))?
}

/// The recipe of `tag`; `loads_binary` is the `loads` binary whose relay the relay image runs.
pub fn recipe(tag: &str, loads_binary: &Path) -> Result<Recipe, ImageError> {
    let with_libs = |binary: &Path, to: &str| binary_with_libraries(binary, to).map_err(|e| tool_error(tag, e));
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (entries, entrypoint, cmd) = match tag {
        RELAY => {
            let binary = relay_binary(loads_binary)?;
            let labels = vec![(RELAY_DIGEST_LABEL.to_string(), sha256_of(tag, &binary)?)];
            let entries = with_libs(&binary, "/loads-relay")?;
            return Ok(Recipe { tag: tag.to_string(), entries, entrypoint: strings(&["/loads-relay"]), cmd: Vec::new(), labels });
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
    Ok(Recipe { tag: tag.to_string(), entries, entrypoint, cmd, labels: Vec::new() })
}

/// Builds `tag` (again, even if present).
pub async fn build(engine: &Engine, tag: &str, loads_binary: &Path) -> Result<(), ImageError> {
    if tag == RELAY {
        relay_binary_async(loads_binary).await?;
    }
    images::build(engine, &recipe(tag, loads_binary)?).await
}

/// Whether `tag` must be built: missing, or (the relay) holding another relay binary than the one at hand.
async fn wanted(engine: &Engine, tag: &str, loads_binary: &Path) -> Result<bool, ImageError> {
    if tag != RELAY {
        return Ok(!engine.has_image(tag).await?);
    }
    let binary = relay_binary_async(loads_binary).await?;
    let digest = sha256_of(tag, &binary)?;
    Ok(engine.image_label(tag, RELAY_DIGEST_LABEL).await?.as_deref() != Some(digest.as_str()))
}

/// Builds each of `tags` that loads knows and the engine lacks; answers the ones built.
pub async fn ensure<'a>(engine: &Engine, tags: impl IntoIterator<Item = &'a str>, loads_binary: &Path) -> Result<Vec<String>, ImageError> {
    let mut built = Vec::new();
    for tag in tags.into_iter().filter(|t| ALL.contains(t)) {
        if wanted(engine, tag, loads_binary).await? {
            images::build(engine, &recipe(tag, loads_binary)?).await?;
            built.push(tag.to_string());
        }
    }
    Ok(built)
}
