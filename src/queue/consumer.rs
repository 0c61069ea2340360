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

    /// Handles the deliveries a consumer had ready together (see
    /// [`Grouping`]); one disposition per message, in order.
    fn handle_group(
        self: Arc<Self>,
        messages: Vec<Incoming>,
    ) -> BoxFuture<'static, Vec<Disposition>>;
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

    /// Processes several parsed messages together (a group the consumer had
    /// ready, see [`Grouping`]): one entry per request, in order, `None`
    /// leaving that request to [`Self::process`], one by one, after this
    /// returns. An error leaves them all to it. The default leaves them all.
    fn process_group(
        &self,
        requests: &[&Self::Request],
    ) -> impl Future<Output = Result<Vec<Option<Disposition>>, Self::InfraError>> + Send {
        let left = vec![None; requests.len()];
        async move { Ok(left) }
    }

    /// The span a group is processed in.
    fn group_span(&self, size: usize) -> tracing::Span {
        tracing::info_span!("group", size)
    }
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

    fn handle_group(
        self: Arc<Self>,
        messages: Vec<Incoming>,
    ) -> BoxFuture<'static, Vec<Disposition>> {
        Box::pin(async move {
            let parsed: Vec<Result<H::Request, InvalidMessage>> =
                messages.iter().map(|m| self.parse(&m.data)).collect();
            let valid: Vec<&H::Request> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
            let mut grouped = if valid.len() > 1 {
                let span = self.group_span(valid.len());
                match self.process_group(&valid).instrument(span).await {
                    Ok(dispositions) if dispositions.len() == valid.len() => dispositions,
                    Ok(_) => {
                        tracing::error!("a group's dispositions do not match its messages; processing them one by one");
                        vec![None; valid.len()]
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "infrastructure trouble in a group; processing its messages one by one");
                        vec![None; valid.len()]
                    }
                }
            } else {
                vec![None; valid.len()]
            }
            .into_iter();
            // Parse failures are dead-lettered; what the group left is
            // processed one by one, concurrently.
            let pending = parsed.iter().map(|p| {
                let grouped = match p {
                    Ok(_) => grouped.next().flatten(),
                    Err(_) => None,
                };
                let handler = &*self;
                async move {
                    match (p, grouped) {
                        (Err(e), _) => Disposition::DeadLetter(e.0.clone()),
                        (Ok(_), Some(d)) => d,
                        (Ok(request), None) => {
                            let span = handler.span(request);
                            process_kept(handler, request).instrument(span).await
                        }
                    }
                }
            });
            futures::future::join_all(pending).await
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
    /// Whether deliveries are handled in groups.
    pub grouping: Grouping,
}

/// How a consumer hands deliveries to its handler: one at a time (each in
/// its own task, as many at once as the prefetch), or in groups. In groups,
/// a delivery is handed over at once while fewer than `in_flight` groups
/// run; otherwise it waits, and the next group takes up to `max` of those
/// waiting. So a light load makes groups of one (no added latency) and a
/// burst makes large groups ([`Handler::handle_group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// The largest group.
    pub max: usize,
    /// Groups handled at once.
    pub in_flight: usize,
}

impl Grouping {
    /// One delivery at a time, each in its own task.
    pub const NONE: Grouping = Grouping {
        max: 1,
        in_flight: usize::MAX,
    };

    fn groups(&self) -> bool {
        self.max > 1
    }
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
        grouping,
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
    tracing::info!(queue, prefetch, group_max = grouping.max, "consuming");
    let mut tasks = JoinSet::new();
    // Deliveries waiting for a group (only when grouping).
    let mut waiting: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
    let settle = Settle {
        publisher: publisher.clone(),
        topology: topology.clone(),
    };
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
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                dispatch(&mut waiting, &mut tasks, &grouping, &handler, &settle);
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) if grouping.groups() => {
                    waiting.push_back(delivery);
                    dispatch(&mut waiting, &mut tasks, &grouping, &handler, &settle);
                }
                Some(Ok(delivery)) => {
                    tasks.spawn(process(delivery, handler.clone(), settle.clone()));
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
        waiting = waiting.len(),
        "stopping: finishing messages in flight"
    );
    // Not started: back to the broker at once, for another consumer.
    for delivery in waiting {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(e) = delivery.nack(requeue).await {
            tracing::warn!(error = %e, "could not give back a delivery; it will be redelivered");
        }
    }
    while tasks.join_next().await.is_some() {}
    result
}

/// Hands waiting deliveries to new groups while fewer than
/// `grouping.in_flight` run (every task of a grouping consumer is a group).
fn dispatch(
    waiting: &mut std::collections::VecDeque<Delivery>,
    tasks: &mut JoinSet<()>,
    grouping: &Grouping,
    handler: &Arc<dyn Handler>,
    settle: &Settle,
) {
    while !waiting.is_empty() && tasks.len() < grouping.in_flight {
        let take = waiting.len().min(grouping.max);
        let group: Vec<Delivery> = waiting.drain(..take).collect();
        tasks.spawn(process_group(group, handler.clone(), settle.clone()));
    }
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

/// What settling a delivery needs: dead-lettering publishes.
#[derive(Clone)]
struct Settle {
    publisher: Publisher,
    topology: Arc<Topology>,
}

fn incoming(delivery: &Delivery) -> Incoming {
    Incoming {
        data: delivery.data.clone(),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
    }
}

async fn process(delivery: Delivery, handler: Arc<dyn Handler>, settle: Settle) {
    let incoming = incoming(&delivery);
    let disposition = handler.handle(incoming.clone()).await;
    settle.settle(delivery, &incoming, disposition).await;
}

async fn process_group(deliveries: Vec<Delivery>, handler: Arc<dyn Handler>, settle: Settle) {
    let incoming: Vec<Incoming> = deliveries.iter().map(incoming).collect();
    let dispositions = handler.handle_group(incoming.clone()).await;
    let settled = deliveries.into_iter().zip(incoming).zip(dispositions).map(
        |((delivery, incoming), disposition)| {
            let settle = &settle;
            async move { settle.settle(delivery, &incoming, disposition).await }
        },
    );
    futures::future::join_all(settled).await;
}

impl Settle {
    /// Acks, requeues or dead-letters a delivery as its handler decided.
    async fn settle(&self, delivery: Delivery, incoming: &Incoming, disposition: Disposition) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let settled = match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::Requeue => delivery.nack(requeue).await,
            Disposition::DeadLetter(reason) => {
                tracing::warn!(reason = %reason, routing_key = %incoming.routing_key, "dead-lettering a message");
                match dead_letter(&self.publisher, &self.topology, incoming, &reason).await {
                    Ok(()) => {
                        crate::metrics::global().dead_lettered(&incoming.routing_key);
                        delivery.ack(BasicAckOptions::default()).await
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not dead-letter; giving the message back");
                        delivery.nack(requeue).await
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
