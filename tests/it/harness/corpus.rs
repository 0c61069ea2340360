//! The message corpus under `tests/fixtures/messages/<kind>/<folder>/`:
//! one JSON file per example, named for what it holds.

use std::fs;
use std::path::{Path, PathBuf};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/messages/<kind>/<folder>`.
pub fn fixtures(kind: &str, folder: &str) -> PathBuf {
    root()
        .join("tests/fixtures/messages")
        .join(kind)
        .join(folder)
}

/// The path relative to the crate, for messages.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `*.json` file directly in `dir`, sorted.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", shown(path)))
}

/// Every example of `<kind>/<folder>` as (shown path, body).
pub fn examples(kind: &str, folder: &str) -> Vec<(String, Vec<u8>)> {
    json_files(&fixtures(kind, folder))
        .into_iter()
        .map(|p| (shown(&p), read(&p)))
        .collect()
}
