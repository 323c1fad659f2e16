//! The docs stay true to the code where a test can tell: every message an actor
//! handles is in `docs/actors.md`, under a name no other type in the crates has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every Rust source of the crates, with its text.
fn crate_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in ["src", "actors/src", "relay/src"] {
        if root().join(dir).is_dir() {
            sources(&root().join(dir), &mut files);
        }
    }
    files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap())).collect()
}

/// The last segment of each `impl Handler<…>` type: the messages actors handle.
fn handled_messages(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut messages = BTreeSet::new();
    for (_, text) in sources {
        // A test module's doubles are not the system's actors.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        for part in text.split("impl Handler<").skip(1) {
            let path: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            messages.insert(path.rsplit("::").next().unwrap_or_default().to_string());
        }
    }
    messages
}

/// The names the table rows of `docs/actors.md` document: the first word of the first
/// cell (`Name {…}`, or `in: Name`, `out: Name` for what an actor takes or sends).
fn documented_messages() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/actors.md")).unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| "))
        .map(|cell| cell.trim_start_matches("in: ").trim_start_matches("out: "))
        .filter_map(|cell| cell.strip_prefix('`'))
        .map(|cell| cell.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .collect()
}

#[test]
fn every_handled_message_is_documented_under_a_name_of_its_own() {
    let sources = crate_sources();
    let handled = handled_messages(&sources);
    assert!(handled.len() > 40, "found only {} handled messages: {handled:?}", handled.len());
    let documented = documented_messages();
    let missing: Vec<&String> = handled.iter().filter(|m| !documented.contains(*m)).collect();
    assert!(missing.is_empty(), "docs/actors.md has no row for: {missing:?}");

    let mut defined: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (path, text) in &sources {
        for message in &handled {
            for kind in ["struct", "enum"] {
                let needle = format!("{kind} {message}");
                let found = text.match_indices(&needle).any(|(at, _)| {
                    let next = text[at + needle.len()..].chars().next();
                    !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if found {
                    defined.entry(message).or_default().push(path.strip_prefix(root()).unwrap().display().to_string());
                }
            }
        }
    }
    let twice: Vec<_> = defined.iter().filter(|(_, files)| files.len() > 1).collect();
    assert!(twice.is_empty(), "message names defined more than once: {twice:?}");
}
