//! The webhook dispatcher (issue 13): one more subscriber of
//! `haproxy.events`. Its consumer turns each event into one delivery row per
//! matching active endpoint (and one for the request's callback URL), in one
//! transaction, then acks; its delivery loop claims due rows by lease, sends
//! them signed, and records every attempt. Everything it must remember is in
//! PostgreSQL, so a dispatcher killed at any instant loses no pending retry
//! and several can run at once. See docs/webhooks.md.

pub mod dispatcher;
pub mod sender;
pub mod signing;

pub use dispatcher::{Dispatcher, DispatcherSettings};

/// Database connections one dispatcher uses at most: one for the consumer's
/// transaction and one for the delivery loop's claims and records (every
/// database call of the dispatcher waits for one of these).
pub const DISPATCHER_CONNECTIONS: u32 = 2;

use std::sync::Arc;

use tokio::sync::watch;

use crate::queue::consumer::{ConsumeError, ConsumerSpec, consume};
use crate::queue::{Handler, Publisher, Topology};

/// Events handled at once by one dispatcher's consumer (each is one short
/// transaction on one of [`DISPATCHER_CONNECTIONS`]).
pub const EVENT_PREFETCH: u16 = 32;

/// Runs a dispatcher on a role's connections until `shutdown` turns true:
/// declares its queue, consumes events and runs the delivery loop.
///
/// # Errors
/// When the broker refuses the queue, or the connection is lost for good.
pub async fn run_dispatcher(
    conn: &lapin::Connection,
    pool: crate::db::PgPool,
    publisher: Publisher,
    topology: Arc<Topology>,
    settings: DispatcherSettings,
    max_outage: std::time::Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumeError> {
    topology
        .declare_webhooks(&conn.create_channel().await?)
        .await?;
    let dispatcher = match Dispatcher::new(pool, publisher.clone(), topology.clone(), settings) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(error = %e, "the webhook dispatcher cannot start");
            return Err(ConsumeError::Cancelled(topology.webhooks_queue.clone()));
        }
    };
    let handler: Arc<dyn Handler> = Arc::new(dispatcher::EventHandler::new(dispatcher.clone()));
    let loop_task = tokio::spawn(dispatcher.deliver(shutdown.clone()));
    let consumed = consume(
        conn,
        ConsumerSpec {
            queue: topology.webhooks_queue.clone(),
            prefetch: EVENT_PREFETCH,
            publisher,
            topology: topology.clone(),
            handler,
            max_outage,
            // Events a burst makes are stored in groups: endpoints and
            // callbacks read once per group, not per event.
            grouping: crate::queue::Grouping {
                max: usize::from(EVENT_PREFETCH),
                in_flight: DISPATCHER_CONNECTIONS as usize,
            },
        },
        shutdown,
    )
    .await;
    if consumed.is_err() {
        loop_task.abort();
    }
    let _ = loop_task.await;
    consumed
}

/// `haproxy-control webhooks`: the dispatcher alone, on a pool of
/// [`DISPATCHER_CONNECTIONS`].
///
/// # Errors
/// When PostgreSQL or RabbitMQ cannot be reached at start, the settings are
/// invalid, or the broker connection is lost for good.
pub async fn run(
    config: &crate::config::Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let settings = DispatcherSettings::from_config(&config.webhooks).map_err(anyhow::Error::msg)?;
    let crate::app::App {
        pool,
        conn,
        topology,
        publisher,
    } = crate::app::App::connect(config, crate::app::Role::WEBHOOKS, DISPATCHER_CONNECTIONS)
        .await?;
    let outage = crate::worker::max_outage(config.amqp.reconnect_attempts);
    run_dispatcher(&conn, pool, publisher, topology, settings, outage, shutdown).await?;
    let _ = conn.close(200, "webhook dispatcher stopped".into()).await;
    Ok(())
}
