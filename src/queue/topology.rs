//! CONTRACT.md's RabbitMQ topology, declared idempotently by every role.

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::message::{ActionMessage, BatchMessage, Command, SyncMessage};

/// Exchange and queue names (all configurable through one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub commands_exchange: String,
    pub actions_queue: String,
    pub batches_queue: String,
    pub sync_queue: String,
    pub events_exchange: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    /// Rollout ticks (routing key `rollout`).
    pub rollouts_queue: String,
    /// Rollout update hooks (routing key `rollout.hook`): long-running, so
    /// apart from the ticks.
    pub rollout_hooks_queue: String,
    /// Where a tick waits [`ROLLOUT_TICK_MS`] before it is routed back to
    /// `rollouts_queue` (message TTL, dead-lettered to the commands exchange).
    /// A quorum queue like the others (`haproxy.rollouts.delay`): the
    /// classic `haproxy.rollouts.wait` of earlier versions lived on one
    /// node of a cluster, so while that node was down a process that lost
    /// its connection could not re-declare the topology on another node
    /// and never recovered. A queue's type cannot change, hence the name.
    pub rollout_wait_queue: String,
    /// The webhook dispatcher's queue, bound to `events_exchange` with `#`;
    /// declared by the dispatcher only ([`Topology::declare_webhooks`]), so
    /// nothing piles up where no dispatcher runs.
    pub webhooks_queue: String,
    pub delivery_limit: u32,
}

/// Routing key of rollout ticks.
pub const ROUTE_ROLLOUT: &str = "rollout";
/// Routing key of rollout update hooks.
pub const ROUTE_ROLLOUT_HOOK: &str = "rollout.hook";
/// How long a rollout tick waits between two looks at its rollout. Fixed:
/// it is an argument of the wait queue, which RabbitMQ does not let change.
pub const ROLLOUT_TICK_MS: i64 = 500;

/// Routing keys of commands (each kind's own, from `queue::message`).
pub const ROUTE_ACTION: &str = ActionMessage::ROUTING_KEY;
pub const ROUTE_BATCH: &str = BatchMessage::ROUTING_KEY;
pub const ROUTE_SYNC: &str = SyncMessage::ROUTING_KEY;

impl Topology {
    /// The contract's names, each preceded by `prefix` (empty in production).
    pub fn with_prefix(prefix: &str, delivery_limit: u32) -> Self {
        let n = |name: &str| format!("{prefix}{name}");
        Self {
            commands_exchange: n("haproxy.commands"),
            actions_queue: n("haproxy.actions"),
            batches_queue: n("haproxy.batches"),
            sync_queue: n("haproxy.sync"),
            events_exchange: n("haproxy.events"),
            dead_exchange: n("haproxy.dead"),
            dead_queue: n("haproxy.dead-letter"),
            rollouts_queue: n("haproxy.rollouts"),
            rollout_hooks_queue: n("haproxy.rollout-hooks"),
            rollout_wait_queue: n("haproxy.rollouts.delay"),
            webhooks_queue: n("haproxy.webhooks"),
            delivery_limit,
        }
    }

    fn command_queue_args(&self) -> FieldTable {
        let mut args = self.quorum_args();
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Quorum, a delivery limit, dead-lettered at least once.
    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange.as_str().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args
    }

    /// Declares every exchange, queue and binding. Safe to repeat.
    ///
    /// # Errors
    /// When the broker refuses a declaration (e.g. a queue exists with other
    /// arguments).
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.exchange_declare(
            self.commands_exchange.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dead_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(self.dead_queue.as_str().into(), durable_queue, dead_args)
            .await?;
        ch.queue_bind(
            self.dead_queue.as_str().into(),
            self.dead_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        let mut wait_args = FieldTable::default();
        // Quorum queues expire messages and dead-letter them (at most once,
        // as classic ones) from RabbitMQ 3.10.
        wait_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        wait_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(ROLLOUT_TICK_MS),
        );
        wait_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.commands_exchange.as_str().into()),
        );
        wait_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(ROUTE_ROLLOUT.into()),
        );
        ch.queue_declare(
            self.rollout_wait_queue.as_str().into(),
            durable_queue,
            wait_args,
        )
        .await?;
        for (queue, key) in [
            (&self.actions_queue, ROUTE_ACTION),
            (&self.batches_queue, ROUTE_BATCH),
            (&self.sync_queue, ROUTE_SYNC),
            (&self.rollouts_queue, ROUTE_ROLLOUT),
            (&self.rollout_hooks_queue, ROUTE_ROLLOUT_HOOK),
        ] {
            ch.queue_declare(
                queue.as_str().into(),
                durable_queue,
                self.command_queue_args(),
            )
            .await?;
            ch.queue_bind(
                queue.as_str().into(),
                self.commands_exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares the webhook dispatcher's quorum queue and binds it to every
    /// event. Safe to repeat.
    ///
    /// # Errors
    /// When the broker refuses a declaration.
    pub async fn declare_webhooks(&self, ch: &Channel) -> Result<(), lapin::Error> {
        // No overflow limit: an event is never refused at the exchange
        // because this queue is long.
        let args = self.quorum_args();
        ch.queue_declare(
            self.webhooks_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            self.webhooks_queue.as_str().into(),
            self.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }

    /// A private tap on the events: an exclusive, auto-deleted queue
    /// (`queue`, or a name the broker picks when empty) bound to the events
    /// exchange with `pattern`, consumed without acks under `tag`. It goes
    /// with its channel.
    ///
    /// # Errors
    /// When the broker refuses a declaration, the binding or the consumer.
    pub async fn tap_events(
        &self,
        ch: &Channel,
        queue: &str,
        pattern: &str,
        tag: &str,
    ) -> Result<lapin::Consumer, lapin::Error> {
        let private = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let declared = ch
            .queue_declare(queue.into(), private, FieldTable::default())
            .await?;
        ch.queue_bind(
            declared.name().clone(),
            self.events_exchange.as_str().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        ch.basic_consume(
            declared.name().clone(),
            tag.into(),
            no_ack,
            FieldTable::default(),
        )
        .await
    }

    /// Deletes every queue and exchange (tests clean up with it).
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        for q in [
            &self.actions_queue,
            &self.batches_queue,
            &self.sync_queue,
            &self.dead_queue,
            &self.rollouts_queue,
            &self.rollout_hooks_queue,
            &self.rollout_wait_queue,
            &self.webhooks_queue,
        ] {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in [
            &self.commands_exchange,
            &self.events_exchange,
            &self.dead_exchange,
        ] {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn default_names_are_the_contract_names() {
        let t = Topology::with_prefix("", 5);
        assert_eq!(t.commands_exchange, "haproxy.commands");
        assert_eq!(t.actions_queue, "haproxy.actions");
        assert_eq!(t.batches_queue, "haproxy.batches");
        assert_eq!(t.sync_queue, "haproxy.sync");
        assert_eq!(t.events_exchange, "haproxy.events");
        assert_eq!(t.dead_exchange, "haproxy.dead");
        assert_eq!(t.dead_queue, "haproxy.dead-letter");
        assert_eq!(t.webhooks_queue, "haproxy.webhooks");
        assert_eq!(
            Topology::with_prefix("t1.", 5).actions_queue,
            "t1.haproxy.actions"
        );
    }
}
