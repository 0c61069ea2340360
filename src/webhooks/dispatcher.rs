//! The dispatcher's two halves: [`EventHandler`] (events in, delivery rows
//! out) and [`Dispatcher::deliver`] (due rows out to their receivers).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::DISPATCHER_CONNECTIONS;
use super::sender::{Sender, Signed};
use super::signing::SigningKey;
use crate::config::WebhooksConfig;
use crate::db::webhooks::{self as store, AttemptRecord, Due, Enqueue, Next, Recorded};
use crate::db::{self, DbError, PgPool};
use crate::domain::event::{Event, EventType};
use crate::domain::webhook::{RetrySchedule, Verdict, is_final_for, matches_any, verdict};
use crate::queue::message::InvalidMessage;
use crate::queue::{Disposition, InfraRetryPolicy, MessageHandler, Publisher, Topology};

/// The dispatcher's tunables, resolved from `[webhooks]`.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub schedule: RetrySchedule,
    pub timeout: Duration,
    pub allow_private_targets: bool,
    pub disable_after: Duration,
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub retention: Duration,
    /// The callback secret (`whsec_…`), when configured.
    pub callback_secret: Option<String>,
}

impl DispatcherSettings {
    /// # Errors
    /// When the callback secret cannot be read or is malformed.
    pub fn from_config(c: &WebhooksConfig) -> Result<Self, String> {
        Ok(Self {
            schedule: c.schedule(),
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            allow_private_targets: c.allow_private_targets,
            disable_after: Duration::from_secs_f64((c.disable_after_hours * 3600.0).max(0.0)),
            concurrency: c.concurrency.max(1),
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(10)),
            retention: Duration::from_secs(c.retention_days.saturating_mul(86_400)),
            callback_secret: c.callback_secret()?,
        })
    }

    /// How long a claimed delivery is leased: two timeouts and a margin,
    /// so a live dispatcher always records before its lease ends.
    pub fn lease(&self) -> Duration {
        self.timeout.saturating_mul(2) + Duration::from_secs(5)
    }
}

/// What the dispatcher shares between its halves.
pub struct Dispatcher {
    pool: PgPool,
    publisher: Publisher,
    topology: Arc<Topology>,
    settings: DispatcherSettings,
    sender: Sender,
    /// [`DISPATCHER_CONNECTIONS`] permits: every database call holds one.
    connections: Semaphore,
    /// Woken when the consumer created deliveries.
    wake: Notify,
    /// This dispatcher's lease token.
    token: Uuid,
}

impl Dispatcher {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        pool: PgPool,
        publisher: Publisher,
        topology: Arc<Topology>,
        settings: DispatcherSettings,
    ) -> Result<Self, String> {
        let sender = Sender::new(settings.timeout, settings.allow_private_targets)?;
        Ok(Self {
            pool,
            publisher,
            topology,
            settings,
            sender,
            connections: Semaphore::new(DISPATCHER_CONNECTIONS as usize),
            wake: Notify::new(),
            token: Uuid::new_v4(),
        })
    }

    /// Runs `f` on one of the dispatcher's connections.
    async fn db<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut diesel::PgConnection) -> Result<T, DbError> + Send + 'static,
    {
        let _permit = self
            .connections
            .acquire()
            .await
            .map_err(|e| DbError::Task(e.to_string()))?;
        db::run(&self.pool, f).await
    }

    /// The delivery loop, until `shutdown` turns true; attempts in flight
    /// then finish (each within the timeout) and are recorded.
    pub async fn deliver(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut in_flight = JoinSet::new();
        let mut last_prune = tokio::time::Instant::now();
        tracing::info!(
            concurrency = self.settings.concurrency,
            lease_secs = self.settings.lease().as_secs_f64(),
            "webhook delivery loop started"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.publish_disabled_notices().await;
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = tokio::time::Instant::now();
                self.prune().await;
            }
            let free = slots.available_permits();
            let claimed = if free > 0 {
                self.claim(free).await
            } else {
                Vec::new()
            };
            let full = claimed.len() == free && free > 0;
            for due in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                in_flight.spawn(async move {
                    me.attempt(due).await;
                    drop(permit);
                });
            }
            if full {
                // More may be due: look again as soon as a slot frees.
                tokio::select! {
                    _ = in_flight.join_next(), if !in_flight.is_empty() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
        tracing::info!("webhook delivery loop stopped");
    }

    async fn claim(&self, n: usize) -> Vec<Due> {
        let token = self.token;
        let lease = self.settings.lease().as_secs_f64();
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        match self
            .db(move |c| store::claim_due(c, token, limit, lease))
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "claiming due webhook deliveries failed; trying again");
                tokio::time::sleep(self.settings.poll_interval).await;
                Vec::new()
            }
        }
    }

    /// One attempt of one delivery, recorded.
    async fn attempt(&self, due: Due) {
        let attempt = due.attempts.saturating_add(1);
        let keys = match self.keys(&due) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(delivery_id = due.id, error = %e, "webhook delivery cannot be signed");
                Vec::new()
            }
        };
        let attempted_at = chrono::Utc::now();
        let webhook_id = due.event_id.to_string();
        let sent = if keys.is_empty() {
            None
        } else {
            Some(
                self.sender
                    .send(
                        &due.url,
                        &Signed {
                            webhook_id: &webhook_id,
                            keys: &keys,
                            body: due.body.as_bytes(),
                        },
                    )
                    .await,
            )
        };
        let (next, record) = match &sent {
            Some(sent) => {
                let position = u32::try_from(attempt - due.schedule_from)
                    .unwrap_or(1)
                    .max(1);
                let next = match verdict(&self.settings.schedule, position, sent.outcome, jitter())
                {
                    Verdict::Delivered => Next::Delivered,
                    Verdict::Gone if due.endpoint_id.is_some() => Next::Gone,
                    Verdict::Gone | Verdict::GiveUp => Next::Failed,
                    Verdict::RetryIn(d) => Next::RetryIn(d.as_secs_f64()),
                };
                (
                    next,
                    AttemptRecord {
                        attempt,
                        attempted_at,
                        status_code: sent.outcome.status.map(i32::from),
                        duration_ms: i32::try_from(sent.duration.as_millis()).unwrap_or(i32::MAX),
                        error: sent.error.clone(),
                    },
                )
            }
            None => (
                Next::Failed,
                AttemptRecord {
                    attempt,
                    attempted_at,
                    status_code: None,
                    duration_ms: 0,
                    error: Some(
                        "no signing secret: webhooks.callback_secret is not configured".into(),
                    ),
                },
            ),
        };
        tracing::info!(
            delivery_id = due.id, event_id = %due.event_id, endpoint_id = due.endpoint_id,
            attempt, status = record.status_code, duration_ms = record.duration_ms,
            error = record.error.as_deref().unwrap_or(""), next = ?next,
            "webhook attempt"
        );
        let token = self.token;
        let disable_after = self.settings.disable_after.as_secs_f64();
        let recorded = self
            .db(move |c| store::record_attempt(c, &due, token, &record, next, disable_after))
            .await;
        match recorded {
            Ok(Recorded::EndpointDisabled(id)) => {
                tracing::warn!(endpoint_id = id, "webhook endpoint disabled");
                self.wake.notify_one();
            }
            Ok(Recorded::LeaseLost) => {
                tracing::warn!("a webhook attempt outlived its lease; another dispatcher has it");
            }
            Ok(Recorded::Written) => {}
            // The lease ends and the delivery is attempted again.
            Err(e) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
        }
    }

    fn keys(&self, due: &Due) -> Result<Vec<SigningKey>, String> {
        if due.endpoint_id.is_some() {
            return due.secrets.iter().map(|s| SigningKey::parse(s)).collect();
        }
        match &self.settings.callback_secret {
            Some(s) => Ok(vec![SigningKey::parse(s)?]),
            None => Ok(Vec::new()),
        }
    }

    /// Publishes `webhook.disabled` for endpoints the dispatcher disabled
    /// (an outbox: the flag is set only after the broker confirmed).
    async fn publish_disabled_notices(&self) {
        let pending = match self.db(store::to_notify).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading disabled webhook endpoints failed");
                return;
            }
        };
        for endpoint in pending {
            let Some(disabled_at) = endpoint.disabled_at else {
                continue;
            };
            let event = disabled_event(&endpoint, disabled_at);
            if let Err(e) = self.publisher.publish_event(&self.topology, &event).await {
                tracing::warn!(error = %e, endpoint_id = endpoint.id, "publishing webhook.disabled failed; trying again");
                return;
            }
            let id = endpoint.id;
            if let Err(e) = self
                .db(move |c| store::mark_notified(c, id, disabled_at))
                .await
            {
                tracing::warn!(error = %e, endpoint_id = id, "recording webhook.disabled as published failed");
            }
        }
    }

    async fn prune(&self) {
        let secs = self.settings.retention.as_secs_f64();
        match self.db(move |c| store::prune(c, secs, 5_000)).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "old webhook deliveries pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
        }
    }
}

/// A uniform number in 0..1 for the retry jitter.
fn jitter() -> f64 {
    let bytes = Uuid::new_v4().as_u128();
    // 53 random bits.
    (bytes >> 75) as f64 / (1u64 << 53) as f64
}

/// `webhook.disabled`: its id derives from (endpoint, disabled_at), so a
/// re-publication carries the same id. The URL is not in it (it may hold a
/// token in its query).
pub fn disabled_event(endpoint: &store::EndpointRow, at: chrono::DateTime<chrono::Utc>) -> Event {
    let mut e = Event::new(
        EventType::WebhookDisabled,
        &format!("{}|{}", endpoint.id, at.timestamp_micros()),
        at,
        "haproxy-control",
        None,
    );
    e.webhook_id = Some(endpoint.id);
    e.error = endpoint.disabled_reason.clone();
    e
}

/// An event as the dispatcher needs it: routing fields, and the body
/// exactly as published.
#[derive(Debug)]
pub struct RoutedEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub transaction_id: Option<Uuid>,
    pub body: String,
}

#[derive(serde::Deserialize)]
struct EventHead {
    event_id: Uuid,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    transaction_id: Option<Uuid>,
}

/// The consumer half: one event in, its delivery rows committed, then ack.
pub struct EventHandler {
    dispatcher: Arc<Dispatcher>,
}

impl EventHandler {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self { dispatcher }
    }
}

/// Waits between in-process retries when the database is away.
const INFRA_RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

impl MessageHandler for EventHandler {
    type Request = RoutedEvent;
    type InfraError = DbError;

    const INFRA_RETRY: InfraRetryPolicy = InfraRetryPolicy {
        retries: &INFRA_RETRY_BACKOFF,
        pause_before_requeue: Duration::from_secs(1),
    };

    fn parse(&self, data: &[u8]) -> Result<RoutedEvent, InvalidMessage> {
        let body = std::str::from_utf8(data)
            .map_err(|_| InvalidMessage("an event body must be UTF-8 JSON".into()))?;
        let head: EventHead = serde_json::from_str(body)
            .map_err(|e| InvalidMessage(format!("not an event (event_id, type): {e}")))?;
        if head.kind.is_empty() || head.kind.len() > 255 {
            return Err(InvalidMessage(
                "an event's type must be 1 to 255 characters".into(),
            ));
        }
        Ok(RoutedEvent {
            event_id: head.event_id,
            event_type: head.kind,
            transaction_id: head.transaction_id,
            body: body.to_owned(),
        })
    }

    fn span(&self, e: &RoutedEvent) -> tracing::Span {
        tracing::info_span!("webhook_event", event_id = %e.event_id, event_type = %e.event_type)
    }

    async fn process(&self, e: &RoutedEvent) -> Result<Disposition, DbError> {
        self.enqueue(&[e]).await?;
        Ok(Disposition::Ack)
    }

    /// A group the consumer had ready: the same, in one database call.
    async fn process_group(
        &self,
        events: &[&RoutedEvent],
    ) -> Result<Vec<Option<Disposition>>, DbError> {
        self.enqueue(events).await?;
        Ok(vec![Some(Disposition::Ack); events.len()])
    }
}

impl EventHandler {
    /// Stores each event's deliveries (one per matching endpoint, and its
    /// transaction's callback when the event is final for it), committed
    /// when this returns; the endpoints and callbacks are read once for
    /// all the events.
    async fn enqueue(&self, events: &[&RoutedEvent]) -> Result<(), DbError> {
        let owned: Vec<RoutedEvent> = events
            .iter()
            .map(|e| RoutedEvent {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                transaction_id: e.transaction_id,
                body: e.body.clone(),
            })
            .collect();
        let created = self
            .dispatcher
            .db(move |c| {
                let patterns = store::active_patterns(c)?;
                let ids: Vec<Uuid> = owned.iter().filter_map(|e| e.transaction_id).collect();
                let callbacks = if ids.is_empty() {
                    std::collections::HashMap::new()
                } else {
                    store::callbacks(c, &ids)?
                };
                let mut created = 0;
                for e in &owned {
                    let endpoints: Vec<i64> = patterns
                        .iter()
                        .filter(|(_, p)| matches_any(p.iter().map(String::as_str), &e.event_type))
                        .map(|(id, _)| *id)
                        .collect();
                    let callback = e
                        .transaction_id
                        .and_then(|t| callbacks.get(&t))
                        .filter(|(kind, _)| is_final_for(*kind, &e.event_type))
                        .map(|(_, url)| url.as_str());
                    created += store::enqueue(
                        c,
                        &Enqueue {
                            event_id: e.event_id,
                            event_type: &e.event_type,
                            body: &e.body,
                            endpoints: &endpoints,
                            callback_url: callback,
                        },
                    )?;
                }
                Ok(created)
            })
            .await?;
        if created > 0 {
            self.dispatcher.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
