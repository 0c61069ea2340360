//! RabbitMQ: topology, publishing with confirms, consuming, and the
//! (de)serialisation of messages.

pub mod broker;
pub mod consumer;
pub mod message;
pub mod publisher;
pub mod topology;

pub use broker::Brokers;
pub use consumer::{Disposition, Grouping, Handler, Incoming, InfraRetryPolicy, MessageHandler};
pub use publisher::Publisher;
pub use topology::Topology;

/// Reconnection attempts when none are configured.
pub const DEFAULT_RECONNECT_ATTEMPTS: usize = 12;

/// Connects to one broker URL with lapin's automatic recovery on
/// (topology, consumers and confirms are restored after a connection loss).
///
/// # Errors
/// When the URL is not an AMQP URL or the broker cannot be reached.
pub async fn connect(url: &str, name: &str) -> Result<lapin::Connection, lapin::Error> {
    let brokers = Brokers::parse("the AMQP URL", &[url]).map_err(invalid)?;
    connect_with(&brokers, name, DEFAULT_RECONNECT_ATTEMPTS).await
}

/// Connects to the first of `brokers` that answers, with lapin's automatic
/// recovery on and a bound on reconnection attempts: 0.5 s doubling up to
/// 5 s between them (12 attempts ≈ 45 s), each trying every address
/// round-robin from the one after the node lost ([`Brokers::connect`]);
/// after the last, consumers fail and the role exits instead of hanging.
///
/// # Errors
/// When no broker can be reached.
pub async fn connect_with(
    brokers: &Brokers,
    name: &str,
    reconnect_attempts: usize,
) -> Result<lapin::Connection, lapin::Error> {
    let props = lapin::ConnectionProperties::default()
        .enable_auto_recover()
        .with_backoff(reconnect_backoff(reconnect_attempts))
        .with_connection_name(name.into());
    brokers.connect(props).await
}

fn invalid(e: broker::InvalidBrokers) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.0).into()
}

/// The waits between reconnection attempts: 0.5 s doubling up to 5 s.
pub fn reconnect_backoff(reconnect_attempts: usize) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_max_times(reconnect_attempts)
}
