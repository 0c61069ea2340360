//! `haproxy-control dead-letters list|replay`: what sits in the dead-letter
//! queue, and re-driving it.
//!
//! Both read the queue with `basic_get` without acknowledging: `list` gives
//! every message back (nack with requeue) once it has read them, so nothing
//! is consumed away; `replay` acknowledges a message only after the broker
//! confirmed its publication on the commands exchange, and gives back the
//! others. A replayed command that was applied already changes nothing:
//! the worker dedupes on its transaction id (rule 1).

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use uuid::Uuid;

use crate::config::Config;
use crate::queue::publisher::{Outgoing, Publisher, string_headers};
use crate::queue::topology::{ROUTE_ACTION, ROUTE_BATCH, ROUTE_SYNC, Topology};

/// One `x-death` entry: RabbitMQ's record of why and where it dead-lettered
/// the message (e.g. `delivery_limit` in `haproxy.actions`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Death {
    pub count: i64,
    pub reason: Option<String>,
    pub queue: Option<String>,
}

/// A dead-lettered message as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub routing_key: String,
    /// The body's `transaction_id`, else the message id.
    pub transaction_id: Option<String>,
    /// Why the worker dead-lettered it (absent when RabbitMQ did).
    pub x_error: Option<String>,
    pub x_death: Vec<Death>,
    pub dead_lettered_at: Option<String>,
    pub body_bytes: usize,
}

/// Which messages `replay` re-drives.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    All,
    Transaction(Uuid),
}

/// What `replay` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReplayReport {
    /// Routing key and transaction id of each replayed message.
    pub replayed: Vec<(String, Option<String>)>,
    /// Messages left in the queue.
    pub kept: usize,
}

/// The dead-letter queue, read through one channel.
struct DeadQueue {
    conn: lapin::Connection,
    channel: lapin::Channel,
    topology: Topology,
}

impl DeadQueue {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        let topology = Topology::with_prefix(&config.amqp.prefix, config.amqp.delivery_limit);
        let conn =
            crate::queue::connect_with(&config.amqp.brokers()?, "haproxy-control dead-letters", 0)
                .await?;
        let channel = conn.create_channel().await?;
        topology.declare(&channel).await?;
        Ok(Self {
            conn,
            channel,
            topology,
        })
    }

    /// Messages ready in the queue now.
    async fn depth(&self) -> anyhow::Result<usize> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(
                self.topology.dead_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        Ok(usize::try_from(q.message_count()).unwrap_or(usize::MAX))
    }

    /// The next message, held (not acknowledged) until settled.
    async fn next(&self) -> anyhow::Result<Option<Delivery>> {
        let got = self
            .channel
            .basic_get(
                self.topology.dead_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?;
        Ok(got.map(|m| m.delivery))
    }

    /// Gives every held message back to the queue and closes.
    async fn close(self, held: Vec<Delivery>) -> anyhow::Result<()> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        for d in held {
            d.nack(requeue).await?;
        }
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }
}

/// Up to `limit` dead-lettered messages, oldest first; all stay in the queue.
///
/// # Errors
/// When the broker cannot be reached.
pub async fn list(config: &Config, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let queue = DeadQueue::open(config).await?;
    let mut held = Vec::new();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(d) = queue.next().await? else { break };
        out.push(describe(&d));
        held.push(d);
    }
    queue.close(held).await?;
    Ok(out)
}

/// Publishes the selected messages again on the commands exchange with
/// their routing key; each is removed from the dead-letter queue once the
/// broker confirmed the publication. Only the messages there when it
/// starts are read, so a replayed message dead-lettered again at once is
/// not replayed twice.
///
/// # Errors
/// When the broker cannot be reached or refuses a publication (the
/// message stays in the queue).
pub async fn replay(config: &Config, selection: Selection) -> anyhow::Result<ReplayReport> {
    let queue = DeadQueue::open(config).await?;
    let publisher = Publisher::new(&queue.conn).await?;
    let mut report = ReplayReport::default();
    let mut held = Vec::new();
    for _ in 0..queue.depth().await? {
        let Some(d) = queue.next().await? else { break };
        let seen = describe(&d);
        if !selected(&seen, selection) || !is_command(&seen.routing_key) {
            held.push(d);
            continue;
        }
        if let Err(e) = republish(&publisher, &queue.topology, &d, &seen).await {
            held.push(d);
            report.kept = held.len();
            queue.close(held).await?;
            return Err(e.context(format!(
                "could not replay {:?}; it stays in the dead-letter queue",
                seen.transaction_id
            )));
        }
        d.ack(BasicAckOptions::default()).await?;
        report
            .replayed
            .push((seen.routing_key, seen.transaction_id));
    }
    report.kept = held.len();
    queue.close(held).await?;
    Ok(report)
}

async fn republish(
    publisher: &Publisher,
    topology: &Topology,
    d: &Delivery,
    seen: &DeadLetter,
) -> anyhow::Result<()> {
    let message_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
        .or_else(|| seen.transaction_id.clone())
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    publisher
        .publish(Outgoing {
            exchange: &topology.commands_exchange,
            routing_key: &seen.routing_key,
            body: &d.data,
            message_id: &message_id,
            headers: string_headers(&[("x-replayed-from", topology.dead_queue.clone())]),
        })
        .await?;
    Ok(())
}

fn is_command(routing_key: &str) -> bool {
    [ROUTE_ACTION, ROUTE_BATCH, ROUTE_SYNC].contains(&routing_key)
}

fn selected(seen: &DeadLetter, selection: Selection) -> bool {
    match selection {
        Selection::All => true,
        Selection::Transaction(id) => {
            seen.transaction_id
                .as_deref()
                .and_then(|t| Uuid::parse_str(t).ok())
                == Some(id)
        }
    }
}

/// What a delivery says about itself.
fn describe(d: &Delivery) -> DeadLetter {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let header = |name: &str| headers.inner().get(name).and_then(text);
    let mut routing_key = d.routing_key.to_string();
    if routing_key.is_empty() {
        routing_key = header("x-original-routing-key").unwrap_or_default();
    }
    let from_body = serde_json::from_slice::<serde_json::Value>(&d.data)
        .ok()
        .and_then(|v| v.get("transaction_id")?.as_str().map(str::to_owned));
    DeadLetter {
        routing_key,
        transaction_id: from_body
            .or_else(|| d.properties.message_id().as_ref().map(|m| m.to_string())),
        x_error: header("x-error"),
        x_death: deaths(headers.inner().get("x-death")),
        dead_lettered_at: header("x-dead-lettered-at"),
        body_bytes: d.data.len(),
    }
}

/// The entries of an `x-death` header.
pub fn deaths(value: Option<&AMQPValue>) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = value else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(Death {
                count: t.inner().get("count").and_then(integer).unwrap_or(0),
                reason: t.inner().get("reason").and_then(text),
                queue: t.inner().get("queue").and_then(text),
            }),
            _ => None,
        })
        .collect()
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn integer(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn x_death_entries_give_count_reason_and_queue() {
        let mut entry = FieldTable::default();
        entry.insert("count".into(), AMQPValue::LongLongInt(5));
        entry.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        entry.insert(
            "queue".into(),
            AMQPValue::LongString("haproxy.actions".into()),
        );
        let header = AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(entry),
            AMQPValue::Boolean(true),
        ]));
        assert_eq!(
            deaths(Some(&header)),
            vec![Death {
                count: 5,
                reason: Some("delivery_limit".into()),
                queue: Some("haproxy.actions".into()),
            }]
        );
        assert!(deaths(None).is_empty());
    }

    #[test]
    fn only_commands_are_replayed_and_a_transaction_id_selects_by_value() {
        assert!(is_command("action") && is_command("batch") && is_command("sync"));
        assert!(!is_command("") && !is_command("action.succeeded"));
        let id = Uuid::new_v4();
        let seen = DeadLetter {
            routing_key: "action".into(),
            transaction_id: Some(id.to_string().to_uppercase()),
            x_error: None,
            x_death: Vec::new(),
            dead_lettered_at: None,
            body_bytes: 0,
        };
        assert!(selected(&seen, Selection::Transaction(id)));
        assert!(!selected(&seen, Selection::Transaction(Uuid::new_v4())));
        assert!(selected(&seen, Selection::All));
    }
}
