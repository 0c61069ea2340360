//! The consumer loop: one channel with a prefetch, one task per delivery,
//! and the message's fate decided by the handler only after its outcome is
//! durable (DESIGN.md rule 2).

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::publisher::{Outgoing, Publisher, string_headers};
use super::topology::Topology;

/// A delivery as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub data: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub message_id: Option<String>,
}

/// What happens to a message once its handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Its outcome is committed and its events confirmed.
    Ack,
    /// It can never be processed: move it to the dead-letter exchange with
    /// this reason in `x-error`, then ack.
    DeadLetter(String),
    /// Something outside it failed (database down): give it back.
    Requeue,
}

/// Processes one message.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, message: Incoming) -> BoxFuture<'static, Disposition>;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer of {0}")]
    Cancelled(String),
    #[error("the broker connection is {0}, and recovery gave up")]
    Lost(&'static str),
    #[error("the broker connection has been down for {0:?}")]
    Outage(std::time::Duration),
}

/// What one consumer consumes and how.
pub struct ConsumerSpec {
    pub queue: String,
    /// Unacknowledged messages at once (and so handlers in flight).
    pub prefetch: u16,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub handler: Arc<dyn HandlerDyn>,
    /// How long the connection may be down before the consumer gives up.
    pub max_outage: std::time::Duration,
}

/// Consumes `spec.queue` until `shutdown` turns true, then waits for the
/// messages in flight.
///
/// # Errors
/// [`ConsumeError`] when the broker connection is lost for good (lapin's
/// recovery gave up) or the consumer is cancelled: the caller should exit
/// non-zero so a supervisor restarts it.
pub async fn consume(
    conn: &Connection,
    spec: ConsumerSpec,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConsumeError> {
    let ConsumerSpec {
        queue,
        prefetch,
        publisher,
        topology,
        handler,
        max_outage,
    } = spec;
    let queue = queue.as_str();
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("haproxy-control-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue, prefetch, "consuming");
    let mut tasks = JoinSet::new();
    // lapin's recovery may leave a consumer waiting forever once it gives up;
    // the watchdog turns a dead or long-lost connection into an error.
    let mut watchdog = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut down_since: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            _ = watchdog.tick() => {
                let status = conn.status();
                if status.errored() {
                    break Err(ConsumeError::Lost("in error"));
                }
                if status.closed() {
                    break Err(ConsumeError::Lost("closed"));
                }
                if status.connected() {
                    down_since = None;
                } else {
                    let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > max_outage {
                        break Err(ConsumeError::Outage(since.elapsed()));
                    }
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ok(());
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(process(delivery, handler.clone(), publisher.clone(), topology.clone()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, queue, "consumer error; waiting for broker recovery");
                    if let Err(e) = channel.wait_for_recovery(e).await {
                        break Err(ConsumeError::Broker(e));
                    }
                    tracing::info!(queue, "broker connection recovered");
                }
                None => break Err(ConsumeError::Cancelled(queue.to_owned())),
            }
        }
    };
    tracing::info!(
        queue,
        in_flight = tasks.len(),
        "stopping: finishing messages in flight"
    );
    while tasks.join_next().await.is_some() {}
    result
}

/// Object-safe form of [`Handler`].
pub trait HandlerDyn: Send + Sync + 'static {
    fn handle_dyn(&self, message: Incoming) -> BoxFuture<'static, Disposition>;
}

impl<H: Handler> HandlerDyn for Arc<H> {
    fn handle_dyn(&self, message: Incoming) -> BoxFuture<'static, Disposition> {
        self.clone().handle(message)
    }
}

async fn process(
    delivery: Delivery,
    handler: Arc<dyn HandlerDyn>,
    publisher: Publisher,
    topology: Arc<Topology>,
) {
    let incoming = Incoming {
        data: delivery.data.clone(),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
    };
    let disposition = handler.handle_dyn(incoming.clone()).await;
    let settled = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::DeadLetter(reason) => {
            tracing::warn!(reason = %reason, routing_key = %incoming.routing_key, "dead-lettering a message");
            match dead_letter(&publisher, &topology, &incoming, &reason).await {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                Err(e) => {
                    tracing::error!(error = %e, "could not dead-letter; giving the message back");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            }
        }
    };
    if let Err(e) = settled {
        // After a broker recovery a delivery from before cannot be settled;
        // it comes back and is deduplicated by its transaction id.
        tracing::warn!(error = %e, "could not settle a delivery; it will be redelivered");
    }
}

async fn dead_letter(
    publisher: &Publisher,
    topology: &Topology,
    m: &Incoming,
    reason: &str,
) -> Result<(), super::publisher::PublishError> {
    let headers = string_headers(&[
        ("x-error", reason.chars().take(4096).collect()),
        ("x-original-exchange", m.exchange.clone()),
        ("x-original-routing-key", m.routing_key.clone()),
        ("x-dead-lettered-at", chrono::Utc::now().to_rfc3339()),
    ]);
    let id = m
        .message_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    publisher
        .publish(Outgoing {
            exchange: &topology.dead_exchange,
            routing_key: &m.routing_key,
            body: &m.data,
            message_id: &id,
            headers,
        })
        .await
}
