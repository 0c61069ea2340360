//! Publishing with publisher confirms. A publish interrupted by a broker
//! outage is re-sent after lapin's recovery (lapin does not re-send it),
//! possibly to another node of the cluster; one the broker nacked (a
//! quorum queue electing a new leader) is re-sent after a pause.

use std::time::Duration;

use backon::Retryable as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::message::Command;
use super::topology::Topology;
use crate::domain::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error while publishing: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nacked) the message")]
    Nacked,
    #[error("the broker confirmed none of the sends within {0:?} each")]
    Unconfirmed(Duration),
    #[error("cannot serialise the message: {0}")]
    Serialize(String),
}

/// The pauses before re-sending one publish, across broker recoveries
/// and nacks: five sends in all, over about 3.5 s.
const RESEND_PAUSES: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// How long one send (and its confirm) may take before it is sent again. A
/// confirm can be lost when the channel is recovered between the send and
/// its ack (lapin re-sends nothing); every message is idempotent (commands
/// by their transaction id, events by their `event_id`), so a second send
/// is safe where a lost one would hang its caller.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed send.
enum Attempt {
    /// Interrupted by an outage the connection has recovered from.
    Recovered(lapin::Error),
    /// The broker refused it (nack): the message is not enqueued.
    Nacked,
    /// No confirm within [`CONFIRM_TIMEOUT`].
    Unconfirmed,
    Failed(PublishError),
}

/// A channel in confirm mode. Cheap to clone; safe to share across tasks.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

/// One message to publish.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub message_id: &'a str,
    pub headers: FieldTable,
}

impl Publisher {
    /// Opens a channel in confirm mode.
    ///
    /// # Errors
    /// When the channel cannot be opened.
    pub async fn new(conn: &Connection) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes one persistent JSON message and waits for the broker's ack.
    ///
    /// # Errors
    /// [`PublishError`] when the broker nacks it or stays unreachable.
    pub async fn publish(&self, m: Outgoing<'_>) -> Result<(), PublishError> {
        (|| self.publish_once(&m))
            .retry(RESEND_PAUSES.into_iter())
            .sleep(tokio::time::sleep)
            .when(|e| {
                matches!(
                    e,
                    Attempt::Recovered(_) | Attempt::Nacked | Attempt::Unconfirmed
                )
            })
            .await
            .map_err(|e| match e {
                Attempt::Recovered(e) => PublishError::Broker(e),
                Attempt::Nacked => PublishError::Nacked,
                Attempt::Unconfirmed => PublishError::Unconfirmed(CONFIRM_TIMEOUT),
                Attempt::Failed(e) => e,
            })
    }

    /// One send and its confirm. A send the broker outage interrupted is
    /// [`Attempt::Recovered`] once lapin's recovery is done: send it again.
    async fn publish_once(&self, m: &Outgoing<'_>) -> Result<(), Attempt> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(m.message_id.into())
            .with_headers(m.headers.clone());
        let attempt = async {
            let sent = self
                .channel
                .basic_publish(
                    m.exchange.into(),
                    m.routing_key.into(),
                    BasicPublishOptions::default(),
                    m.body,
                    properties,
                )
                .await;
            let confirmed = match sent {
                Ok(confirm) => confirm.await,
                Err(e) => Err(e),
            };
            match confirmed {
                Ok(c) if c.is_ack() => Ok(()),
                Ok(_) => {
                    tracing::warn!(
                        exchange = m.exchange,
                        "the broker nacked a publish; sending it again"
                    );
                    Err(Attempt::Nacked)
                }
                Err(e) => {
                    tracing::warn!(error = %e, exchange = m.exchange, "publish failed; waiting for broker recovery");
                    match self.channel.wait_for_recovery(e.clone()).await {
                        Ok(()) => Err(Attempt::Recovered(e)),
                        Err(e2) => Err(Attempt::Failed(PublishError::Broker(e2))),
                    }
                }
            }
        };
        // The send, its confirm and any wait for recovery: bounded, then sent again.
        tokio::time::timeout(CONFIRM_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(
                    exchange = m.exchange,
                    channel_connected = self.channel.status().connected(),
                    "no confirm for a publish within {CONFIRM_TIMEOUT:?}; sending it again"
                );
                Err(Attempt::Unconfirmed)
            })
    }

    /// Publishes a command on the commands exchange, routed by its kind,
    /// with its transaction id as the `message_id`.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_command<C: Command>(
        &self,
        topology: &Topology,
        command: &C,
    ) -> Result<(), PublishError> {
        let body =
            serde_json::to_vec(command).map_err(|e| PublishError::Serialize(e.to_string()))?;
        self.publish(Outgoing {
            exchange: &topology.commands_exchange,
            routing_key: C::ROUTING_KEY,
            body: &body,
            message_id: command.transaction_id(),
            headers: FieldTable::default(),
        })
        .await
    }

    /// Publishes a status event on the events exchange, routed by its type.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_event(
        &self,
        topology: &Topology,
        event: &Event,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).map_err(|e| PublishError::Serialize(e.to_string()))?;
        self.publish(Outgoing {
            exchange: &topology.events_exchange,
            routing_key: event.kind.routing_key(),
            body: &body,
            message_id: &event.event_id.to_string(),
            headers: FieldTable::default(),
        })
        .await?;
        crate::metrics::global().event_published(event.kind.routing_key());
        Ok(())
    }

    /// Publishes a rollout tick: to the wait queue (`delayed`, back on the
    /// rollouts queue after [`super::topology::ROLLOUT_TICK_MS`]) or at once.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_tick(
        &self,
        topology: &Topology,
        tick: &crate::queue::message::RolloutTick,
        delayed: bool,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(tick).map_err(|e| PublishError::Serialize(e.to_string()))?;
        let id = format!("rollout-{}-tick-{}", tick.rollout_id, tick.seq);
        let (exchange, routing_key) = if delayed {
            ("", topology.rollout_wait_queue.as_str())
        } else {
            (
                topology.commands_exchange.as_str(),
                super::topology::ROUTE_ROLLOUT,
            )
        };
        self.publish(Outgoing {
            exchange,
            routing_key,
            body: &body,
            message_id: &id,
            headers: FieldTable::default(),
        })
        .await
    }

    /// Publishes a rollout hook run.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish_hook_run(
        &self,
        topology: &Topology,
        run: &crate::queue::message::RolloutHookRun,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(run).map_err(|e| PublishError::Serialize(e.to_string()))?;
        let id = format!(
            "rollout-{}-hook-{}-{}",
            run.rollout_id, run.server_row_id, run.attempt
        );
        self.publish(Outgoing {
            exchange: &topology.commands_exchange,
            routing_key: super::topology::ROUTE_ROLLOUT_HOOK,
            body: &body,
            message_id: &id,
            headers: FieldTable::default(),
        })
        .await
    }

    /// Publishes stored events (a JSON array of event bodies) as they are.
    ///
    /// # Errors
    /// [`PublishError`]; a stored value that is not an event is skipped with
    /// a warning rather than blocking the action forever.
    pub async fn publish_stored(
        &self,
        topology: &Topology,
        events: &serde_json::Value,
    ) -> Result<(), PublishError> {
        let mut parsed = Vec::new();
        for value in events.as_array().into_iter().flatten() {
            match serde_json::from_value::<Event>(value.clone()) {
                Ok(event) => parsed.push(event),
                Err(e) => tracing::warn!(error = %e, "a stored event does not parse; skipped"),
            }
        }
        // All are sent before any confirm is awaited.
        let results =
            futures::future::join_all(parsed.iter().map(|e| self.publish_event(topology, e))).await;
        results.into_iter().collect()
    }
}

/// A header table with string values.
pub fn string_headers(pairs: &[(&str, String)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), AMQPValue::LongString(v.as_str().into()));
    }
    t
}
