//! Where an instance's agent token lives: `env:VAR`, `file:/path`, or
//! `token:literal`. The reference is stored; the secret is read when used.
//!
//! Any reference may be stored from the CLI on the host (`instance add`).
//! Through the HTTP API only [`from_api`] decides: a token value, or a file
//! inside the configured token directory; the secret is never read there.

use std::path::{Component, Path, PathBuf};

/// The reference to store for a `fagent_token` given through the HTTP API:
/// a token value (bare or `token:value`) is stored as `token:value`; a
/// `file:` reference must name an existing file inside `token_dir` (the
/// canonical directory, see [`canonical_dir`]) and is stored with its
/// canonical path. `env:` references and files anywhere else are refused:
/// they would let an API caller make the workers read the host's secrets
/// and send them to an agent URL of the caller's choice. Nothing is read:
/// a file is only resolved (`realpath`), never opened.
///
/// # Errors
/// Why the reference is refused, naming no secret.
pub fn from_api(raw: &str, token_dir: Option<&Path>) -> Result<String, String> {
    if raw.starts_with("env:") {
        return Err(
            "env: references are accepted only from the CLI on the host \
             (haproxy-control instance add --token-env); send the token itself \
             or a file: reference under the configured token directory"
                .into(),
        );
    }
    if let Some(path) = raw.strip_prefix("file:") {
        let file = file_under(path, token_dir)?;
        return Ok(format!("file:{}", file.display()));
    }
    let literal = raw.strip_prefix("token:").unwrap_or(raw);
    if literal.is_empty() {
        return Err("token: needs a value".into());
    }
    Ok(format!("token:{literal}"))
}

/// `dir` resolved, for [`from_api`].
///
/// # Errors
/// When it does not exist or is no directory.
pub fn canonical_dir(dir: &Path) -> Result<PathBuf, String> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("token directory {}: {e}", dir.display()))?;
    if !canonical.is_dir() {
        return Err(format!(
            "token directory {} is not a directory",
            dir.display()
        ));
    }
    Ok(canonical)
}

/// `path` (absolute, or relative to `dir`) as a canonical path of a file
/// inside `dir`. A path outside `dir` or with a `..` is refused before the
/// file system is asked anything; a symlink is followed and must end inside.
fn file_under(path: &str, dir: Option<&Path>) -> Result<PathBuf, String> {
    let Some(dir) = dir else {
        return Err(
            "file: references are accepted through the API only when a token directory \
             is configured (fagent.token_dir / FAGENT_TOKEN_DIR); otherwise send the token \
             itself, or register the instance from the CLI on the host"
                .into(),
        );
    };
    let outside = || {
        format!(
            "file:{path} is not inside the token directory {}",
            dir.display()
        )
    };
    let given = Path::new(path);
    if path.is_empty() || given.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "file:{path} must name a file inside the token directory {}, without ..",
            dir.display()
        ));
    }
    let joined = dir.join(given);
    if !joined.starts_with(dir) {
        return Err(outside());
    }
    let canonical = joined
        .canonicalize()
        .map_err(|e| format!("file:{path} cannot be resolved: {e}"))?;
    if !canonical.starts_with(dir) {
        return Err(format!(
            "file:{path} leads (through a symbolic link) outside the token directory {}",
            dir.display()
        ));
    }
    if !canonical.is_file() {
        return Err(format!("file:{path} is not a regular file"));
    }
    Ok(canonical)
}

/// Reads the token a reference points to.
///
/// # Errors
/// A message naming the reference (never the secret) when it cannot be read.
pub fn resolve(reference: &str) -> Result<String, String> {
    let token = if let Some(var) = reference.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {path}: {e}"))?
    } else if let Some(literal) = reference.strip_prefix("token:") {
        literal.to_owned()
    } else {
        return Err("a token reference starts with env:, file: or token:".into());
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(format!("the token behind {} is empty", describe(reference)));
    }
    Ok(token)
}

/// The reference without a literal secret, for logs and API answers.
pub fn describe(reference: &str) -> String {
    if reference.starts_with("token:") {
        "token:***".into()
    } else {
        reference.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_kind_and_never_shows_a_literal() {
        assert_eq!(resolve("token:abc"), Ok("abc".into()));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(
            resolve(&format!("file:{}", path.display())),
            Ok("s3cret".into())
        );
        assert!(resolve("env:HC_SURELY_UNSET_VARIABLE").is_err());
        assert!(resolve("plain").is_err());
        assert!(resolve("token:").is_err());
        assert_eq!(describe("token:abc"), "token:***");
        assert_eq!(describe("env:X"), "env:X");
    }

    #[test]
    fn the_api_may_store_token_values_and_files_inside_the_token_dir_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("tokens");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("lb1"), "s3cret").expect("write");
        std::fs::write(root.path().join("outside"), "other").expect("write");
        std::os::unix::fs::symlink(root.path().join("outside"), dir.join("out-link"))
            .expect("symlink");
        std::os::unix::fs::symlink(dir.join("lb1"), dir.join("in-link")).expect("symlink");
        let dir = canonical_dir(&dir).expect("dir");
        let lb1 = format!("file:{}", dir.join("lb1").display());
        let d = Some(dir.as_path());

        assert_eq!(from_api("abc", d), Ok("token:abc".into()));
        assert_eq!(from_api("token:abc", None), Ok("token:abc".into()));
        assert_eq!(from_api(&lb1, d), Ok(lb1.clone()));
        assert_eq!(from_api("file:lb1", d), Ok(lb1.clone()));
        assert_eq!(from_api("file:in-link", d), Ok(lb1.clone()));
        for refused in [
            "env:DATABASE_URL".to_owned(),
            "env:".to_owned(),
            "token:".to_owned(),
            "file:".to_owned(),
            "file:/etc/passwd".to_owned(),
            "file:../outside".to_owned(),
            format!("file:{}/../outside", dir.display()),
            "file:out-link".to_owned(),
            "file:missing".to_owned(),
            "file:.".to_owned(),
        ] {
            let answer = from_api(&refused, d);
            assert!(answer.is_err(), "{refused}: {answer:?}");
        }
        assert!(from_api(&lb1, None).is_err(), "no directory, no file:");
        assert!(canonical_dir(&root.path().join("none")).is_err());
    }
}
