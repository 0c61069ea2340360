//! The consumer loop: one channel with a prefetch, one task per delivery,
//! and the message's fate decided by the handler only after its outcome is
//! durable (DESIGN.md rule 2).

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable as _;
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::message::InvalidMessage;
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

/// Processes one message; what the consumer calls (`Arc<dyn Handler>`).
/// Every [`MessageHandler`] is one.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, message: Incoming) -> BoxFuture<'static, Disposition>;
}

/// How long a message that hit infrastructure trouble (database or broker
/// down) is kept before it is given back to the broker.
#[derive(Debug, Clone, Copy)]
pub struct InfraRetryPolicy {
    /// Waits between in-process attempts; after the last one, the message
    /// is requeued.
    pub retries: &'static [Duration],
    /// Wait before the requeue, so a broker redelivering at once does not
    /// spin on a database that is down.
    pub pause_before_requeue: Duration,
}

/// One command kind's handler. The opening every handler shares is written
/// once, in its [`Handler`] impl: parse or dead-letter, open the span,
/// process with retries on trouble ([`InfraRetryPolicy`]), else requeue.
pub trait MessageHandler: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    /// Infrastructure trouble: the message is kept and processed again.
    type InfraError: std::fmt::Display + Send;

    const INFRA_RETRY: InfraRetryPolicy;

    /// Parses and validates a body; an error dead-letters the message.
    ///
    /// # Errors
    /// [`InvalidMessage`] with the reason.
    fn parse(&self, data: &[u8]) -> Result<Self::Request, InvalidMessage>;

    /// The span the message is processed in.
    fn span(&self, request: &Self::Request) -> tracing::Span;

    /// Processes a parsed message; the outcome is durable when this returns
    /// a disposition.
    fn process(
        &self,
        request: &Self::Request,
    ) -> impl Future<Output = Result<Disposition, Self::InfraError>> + Send;
}

impl<H: MessageHandler> Handler for H {
    fn handle(self: Arc<Self>, message: Incoming) -> BoxFuture<'static, Disposition> {
        Box::pin(async move {
            let request = match self.parse(&message.data) {
                Ok(r) => r,
                Err(e) => return Disposition::DeadLetter(e.0),
            };
            let span = self.span(&request);
            process_kept(&*self, &request).instrument(span).await
        })
    }
}

/// [`MessageHandler::process`], retried in process on trouble, then
/// requeued.
async fn process_kept<H: MessageHandler>(handler: &H, request: &H::Request) -> Disposition {
    let policy = H::INFRA_RETRY;
    let processed = (|| handler.process(request))
        .retry(policy.retries.iter().copied())
        .sleep(tokio::time::sleep)
        .notify(|e, _| tracing::warn!(error = %e, "infrastructure trouble; retrying the message"))
        .await;
    match processed {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "infrastructure trouble; giving the message back to the broker");
            tokio::time::sleep(policy.pause_before_requeue).await;
            Disposition::Requeue
        }
    }
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
    pub handler: Arc<dyn Handler>,
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
                if let Err(e) = check_connection(conn, &mut down_since, max_outage) {
                    break Err(e);
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

/// The watchdog's check: a connection in error or closed is lost, and one
/// down longer than `max_outage` is given up on.
fn check_connection(
    conn: &Connection,
    down_since: &mut Option<tokio::time::Instant>,
    max_outage: Duration,
) -> Result<(), ConsumeError> {
    let status = conn.status();
    if status.errored() {
        return Err(ConsumeError::Lost("in error"));
    }
    if status.closed() {
        return Err(ConsumeError::Lost("closed"));
    }
    if status.connected() {
        *down_since = None;
    } else {
        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > max_outage {
            return Err(ConsumeError::Outage(since.elapsed()));
        }
    }
    Ok(())
}

async fn process(
    delivery: Delivery,
    handler: Arc<dyn Handler>,
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
    let disposition = handler.handle(incoming.clone()).await;
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
                Ok(()) => {
                    crate::metrics::global().dead_lettered(&incoming.routing_key);
                    delivery.ack(BasicAckOptions::default()).await
                }
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
