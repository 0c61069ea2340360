//! Bearer tokens: each names an actor and a role. Tokens are compared in
//! constant time, against every configured token (no early exit).

use std::marker::PhantomData;
use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

pub use crate::config::ApiRole as Role;
use crate::config::{ApiConfig, ConfigError};
use crate::queue::message::parse_actor;

use super::ApiState;
use super::error::ApiError;

/// One accepted token.
struct Entry {
    secret: Box<[u8]>,
    actor: String,
    role: Role,
}

/// Every accepted token. Debug output never shows a secret.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.actor, e.role)))
            .finish()
    }
}

impl Tokens {
    /// The tokens of `[api] tokens` and of the `tokens_file`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the entry or line (never the secret)
    /// when a token is missing, empty, duplicated or unreadable, or an actor
    /// or role is invalid.
    pub fn from_config(config: &ApiConfig) -> Result<Self, ConfigError> {
        let mut tokens = Self::default();
        for (n, t) in config.tokens.iter().enumerate() {
            let what = format!("api.tokens[{n}] ({})", t.actor);
            let secret = match (&t.token, &t.token_file) {
                (Some(token), None) => token.clone(),
                (None, Some(path)) => read(path, &what)?,
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{what}: give exactly one of token, token_file"
                    )));
                }
            };
            tokens.add(&what, &secret, &t.actor, t.role)?;
        }
        if let Some(path) = &config.tokens_file {
            let text = read(path, "the API tokens file")?;
            tokens.add_lines(&text, &path.display().to_string())?;
        }
        Ok(tokens)
    }

    /// Adds the lines of a tokens file: `role actor token`, `#` comments.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line.
    pub fn add_lines(&mut self, text: &str, source: &str) -> Result<(), ConfigError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let what = format!("{source} line {}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [role, actor, secret] = fields.as_slice() else {
                return Err(ConfigError::Invalid(format!(
                    "{what}: expected `role actor token`"
                )));
            };
            let role: Role = role
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
            self.add(&what, secret, actor, role)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        what: &str,
        secret: &str,
        actor: &str,
        role: Role,
    ) -> Result<(), ConfigError> {
        let secret = secret.trim();
        if secret.len() < 8 || secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::Invalid(format!(
                "{what}: a token must be at least 8 characters without spaces"
            )));
        }
        let actor = parse_actor(actor).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
        if self.lookup(secret).is_some() {
            return Err(ConfigError::Invalid(format!(
                "{what}: the same token is configured twice"
            )));
        }
        self.entries.push(Entry {
            secret: secret.as_bytes().into(),
            actor,
            role,
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The actor and role of a presented token. Every entry is compared,
    /// each in constant time.
    pub fn lookup(&self, presented: &str) -> Option<(&str, Role)> {
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.secret.as_ref().ct_eq(presented.as_bytes())) {
                found = Some((e.actor.as_str(), e.role));
            }
        }
        found
    }
}

fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "{what}: cannot read token file {}: {e}",
            path.display()
        ))
    })
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: String,
    pub role: Role,
}

/// The lowest role an endpoint accepts.
pub trait MinRole {
    const ROLE: Role;
    /// What the role may do, for the 403 message.
    const NEEDED_FOR: &'static str;
}

/// Reads.
pub struct Viewer;
/// Actions, batches, syncs.
pub struct Operator;
/// Deciding held requests (four eyes).
pub struct Approver;
/// Settings.
pub struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
    const NEEDED_FOR: &'static str = "reading";
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
    const NEEDED_FOR: &'static str = "actions, batches and syncs";
}
impl MinRole for Approver {
    const ROLE: Role = Role::Approver;
    const NEEDED_FOR: &'static str = "approving or rejecting held requests";
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
    const NEEDED_FOR: &'static str = "settings";
}

/// A caller whose token is valid and whose role is at least `R`.
pub struct Auth<R: MinRole>(pub Caller, pub PhantomData<R>);

impl<R: MinRole> FromRequestParts<ApiState> for Auth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = authenticate(parts, state)?;
        if caller.role < R::ROLE {
            return Err(ApiError::forbidden(format!(
                "{} has role {}; {} needs role {} or higher",
                caller.actor,
                caller.role.as_str(),
                R::NEEDED_FOR,
                R::ROLE.as_str()
            )));
        }
        Ok(Auth(caller, PhantomData))
    }
}

fn authenticate(parts: &Parts, state: &ApiState) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = header.and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let Some(presented) = presented else {
        return Err(ApiError::unauthorized(
            "an 'Authorization: Bearer <token>' header is required",
        ));
    };
    state
        .tokens
        .lookup(presented)
        .map(|(actor, role)| Caller {
            actor: actor.to_owned(),
            role,
        })
        .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))
}

/// Who a token is: what the page shows and which controls it offers.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Me {
    pub actor: String,
    /// `viewer`, `operator`, `approver` or `admin`.
    pub role: String,
}

/// The caller's actor and role.
#[utoipa::path(
    get, path = "/api/me", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token's actor and role", body = Me),
        (status = 401, description = "Missing or wrong token", body = super::error::ErrorBody),
    )
)]
pub async fn me(Auth(caller, _): Auth<Viewer>) -> axum::Json<Me> {
    axum::Json(Me {
        actor: caller.actor,
        role: caller.role.as_str().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines_give_actor_and_role_and_bad_lines_are_refused() {
        let mut t = Tokens::default();
        t.add_lines(
            "# role actor token\n\noperator user:alice alice-secret-1\nadmin user:root root-secret-22\napprover user:petra petra-secret-3\n",
            "f",
        )
        .expect("valid");
        assert_eq!(
            t.lookup("alice-secret-1"),
            Some(("user:alice", Role::Operator))
        );
        assert_eq!(t.lookup("root-secret-22"), Some(("user:root", Role::Admin)));
        assert_eq!(
            t.lookup("petra-secret-3"),
            Some(("user:petra", Role::Approver))
        );
        assert!(Role::Operator < Role::Approver && Role::Approver < Role::Admin);
        assert_eq!(t.lookup("alice-secret"), None);
        assert_eq!(t.lookup(""), None);
        assert!(!format!("{t:?}").contains("secret"));
        for bad in [
            "operator user:alice",
            "king user:alice secret-secret",
            "viewer user:x short",
            "viewer user:x alice-secret-1",
        ] {
            assert!(t.add_lines(bad, "f").is_err(), "{bad}");
        }
    }
}
