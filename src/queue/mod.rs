//! RabbitMQ: topology, publishing with confirms, consuming, and the
//! (de)serialisation of messages.

pub mod consumer;
pub mod message;
pub mod publisher;
pub mod topology;

pub use consumer::{Disposition, Handler, Incoming};
pub use publisher::Publisher;
pub use topology::Topology;

/// Connects with lapin's automatic recovery on (topology, consumers and
/// confirms are restored after a connection loss).
///
/// # Errors
/// When the broker cannot be reached.
pub async fn connect(url: &str, name: &str) -> Result<lapin::Connection, lapin::Error> {
    let props = lapin::ConnectionProperties::default()
        .enable_auto_recover()
        .with_connection_name(name.into());
    lapin::Connection::connect(url, props).await
}
