//! Build script: makes `embed_migrations!` rebuild when a migration changes, and exports a hash of
//! the migrations (`HC_MIGRATIONS_HASH`) that names the migrated template database used by tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let hash = match migrations_hash(Path::new("migrations")) {
        Ok(hash) => hash,
        Err(e) => {
            println!("cargo:warning=cannot hash migrations/: {e}");
            0
        }
    };
    println!("cargo:rustc-env=HC_MIGRATIONS_HASH={hash:016x}");
}

/// FNV-1a over every file's relative path and contents, in path order. Stable across Rust
/// versions (unlike `DefaultHasher`), so every build of the same migrations agrees.
fn migrations_hash(root: &Path) -> io::Result<u64> {
    let mut files = Vec::new();
    collect(root, &mut files)?;
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(&file);
        feed(relative.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&fs::read(&file)?);
        feed(&[0]);
    }
    Ok(hash)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
