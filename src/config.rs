//! One `Config` for every role. Values come, strongest first, from command
//! line flags, environment variables (clap reads both), an optional TOML file
//! (`--config`), and built-in defaults that work on a local machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub fagent: FagentConfig,
}

/// The reference agent (`haproxy-control fagent`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FagentConfig {
    /// Address the agent listens on.
    pub listen: SocketAddr,
    /// HAProxy's stats socket: a unix path or `host:port`.
    pub socket: String,
    /// File holding the bearer token (the `FAGENT_TOKEN` variable wins).
    pub token_file: Option<PathBuf>,
    /// How long one runtime-API command may take.
    pub socket_timeout_ms: u64,
    /// How many transaction ids are remembered for replays.
    pub idempotency_capacity: usize,
}

impl Default for FagentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            socket: "/run/haproxy/admin.sock".into(),
            token_file: None,
            socket_timeout_ms: 5_000,
            idempotency_capacity: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, overlaid with the TOML file when one is given.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or has unknown or
    /// ill-typed keys.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_locally_and_the_file_overrides_them() {
        let c = Config::default();
        assert_eq!(c.fagent.listen.port(), 9100);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[fagent]\nsocket = \"127.0.0.1:9999\"\n").expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.fagent.socket, "127.0.0.1:9999");
        assert_eq!(c.fagent.idempotency_capacity, 10_000);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[fagent]\nsockett = \"x\"\n").expect("write");
        let err = Config::load(Some(&path))
            .expect_err("typo must fail")
            .to_string();
        assert!(err.contains("c.toml") && err.contains("sockett"), "{err}");
    }
}
