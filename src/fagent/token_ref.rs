//! Where an instance's agent token lives: `env:VAR`, `file:/path`, or
//! `token:literal`. The reference is stored; the secret is read when used.

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
}
