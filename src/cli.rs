//! The command line: one binary, one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::fagent::server::{AgentSettings, BearerToken, SocketTarget};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "haproxy-control", version, about = "Controls the servers behind a fleet of HAProxy load balancers", long_about = None)]
pub struct Cli {
    /// Optional TOML file with settings; flags and environment variables win over it.
    #[arg(long, env = "HAPROXY_CONTROL_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reference FAgent next to one HAProxy: HTTP in front of its runtime API.
    Fagent(FagentArgs),
}

#[derive(Debug, Args)]
pub struct FagentArgs {
    /// Address to listen on [default: 127.0.0.1:9100].
    #[arg(long, env = "FAGENT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// HAProxy's stats socket, `level admin`: a unix path (`/run/haproxy/admin.sock`,
    /// `unix:rel.sock`) or a TCP address (`127.0.0.1:9999`, `tcp:lb1:9999`)
    /// [default: /run/haproxy/admin.sock].
    #[arg(long, env = "FAGENT_HAPROXY_SOCKET")]
    pub haproxy_socket: Option<String>,

    /// File holding the bearer token clients must present.
    #[arg(long, env = "FAGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The bearer token itself (prefer --token-file: the environment of a
    /// process is visible to its user).
    #[arg(
        long = "token-env",
        env = "FAGENT_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub token: Option<String>,

    /// Timeout of one runtime-API command, in milliseconds [default: 5000].
    #[arg(long, env = "FAGENT_SOCKET_TIMEOUT_MS")]
    pub socket_timeout_ms: Option<u64>,

    /// How many transaction ids are remembered so a repeat gets the first
    /// answer [default: 10000].
    #[arg(long, env = "FAGENT_IDEMPOTENCY_CAPACITY")]
    pub idempotency_capacity: Option<usize>,
}

impl FagentArgs {
    /// Resolves flags, environment and config file into the agent's settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when the socket address or token is missing
    /// or malformed.
    pub fn settings(&self, config: &Config) -> Result<(SocketAddr, AgentSettings), ConfigError> {
        let c = &config.fagent;
        let listen = self.listen.unwrap_or(c.listen);
        let socket: SocketTarget = self
            .haproxy_socket
            .as_deref()
            .unwrap_or(&c.socket)
            .parse()
            .map_err(ConfigError::Invalid)?;
        let token = match (
            &self.token,
            self.token_file.as_ref().or(c.token_file.as_ref()),
        ) {
            (Some(token), _) => token.clone(),
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read token file {}: {e}", path.display()))
            })?,
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "no agent token: set FAGENT_TOKEN or --token-file".into(),
                ));
            }
        };
        let token = BearerToken::new(&token).map_err(ConfigError::Invalid)?;
        Ok((
            listen,
            AgentSettings {
                socket,
                socket_timeout: Duration::from_millis(
                    self.socket_timeout_ms.unwrap_or(c.socket_timeout_ms),
                ),
                token,
                idempotency_capacity: self.idempotency_capacity.unwrap_or(c.idempotency_capacity),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fagent_needs_a_token() {
        let cli = Cli::parse_from([
            "haproxy-control",
            "fagent",
            "--haproxy-socket",
            "/tmp/x.sock",
        ]);
        let Command::Fagent(args) = cli.command;
        if args.token.is_none() {
            let err = args
                .settings(&Config::default())
                .err()
                .map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("token")));
        }
    }
}
