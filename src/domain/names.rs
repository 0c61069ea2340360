//! Backend and server names as HAProxy accepts them. Parsing is the only way
//! to get a [`BackendName`] or [`ServerName`], so code that holds one knows it
//! is safe to put on the runtime socket (DESIGN.md rule 9: names are data).

use std::fmt;

/// Longest name accepted. HAProxy itself has no small limit, but nothing in a
/// real fleet comes close; the bound keeps hostile input out of logs and SQL.
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name is longer than {max} bytes ({len})", max = MAX_NAME_LEN)]
    TooLong { kind: &'static str, len: usize },
    #[error(
        "{kind} name contains {found:?} at position {position}; allowed are letters, digits, '.', '_', ':' and '-'"
    )]
    InvalidChar {
        kind: &'static str,
        found: char,
        position: usize,
    },
}

fn parse_identifier(kind: &'static str, raw: &str) -> Result<(), NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: raw.len(),
        });
    }
    // HAProxy's invalid_char(): identifiers are [A-Za-z0-9._:-].
    if let Some((position, found)) = raw
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(NameError::InvalidChar {
            kind,
            found,
            position,
        });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a raw name.
            ///
            /// # Errors
            /// [`NameError`] when the name is empty, too long or holds a
            /// character HAProxy does not allow in identifiers.
            pub fn parse(raw: &str) -> Result<Self, NameError> {
                parse_identifier($kind, raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// The name of an HAProxy backend (or `listen` section).
    BackendName,
    "backend"
);
identifier!(
    /// The name of a server inside a backend.
    ServerName,
    "server"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_haproxy_identifier_characters() {
        for ok in [
            "web",
            "web1_shop_1",
            "a.b-c:d",
            "X9",
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert_eq!(
                ServerName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_everything_that_could_reach_the_socket_as_a_command() {
        for bad in [
            "web;show info",
            "web\nshow info",
            "web 1",
            "web/1",
            "web#1",
            "wéb",
            "web\r",
            "web\t",
            "web\0",
            "'web'",
            "web$(id)",
            "../etc",
        ] {
            assert!(
                matches!(BackendName::parse(bad), Err(NameError::InvalidChar { .. })),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn rejects_empty_and_oversized_names() {
        assert_eq!(
            ServerName::parse(""),
            Err(NameError::Empty { kind: "server" })
        );
        let long = "a".repeat(10 * 1024);
        assert_eq!(
            ServerName::parse(&long),
            Err(NameError::TooLong {
                kind: "server",
                len: 10 * 1024
            })
        );
    }

    #[test]
    fn error_message_names_the_offending_character() {
        let err = BackendName::parse("web;x").unwrap_err().to_string();
        assert!(err.contains("';'"), "{err}");
        assert!(err.contains("position 3"), "{err}");
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<ServerName>("\"ok_1\"").is_ok());
        assert!(serde_json::from_str::<ServerName>("\"no;pe\"").is_err());
    }
}
