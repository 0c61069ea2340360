//! The gauges that must come from PostgreSQL or RabbitMQ: breakers, last
//! syncs, rollouts, the sweeper's counters, queue depths. A scrape reads them
//! at most every [`Gauges::max_age`] and otherwise serves the cached values,
//! so scrapes cost the database a few indexed queries every few seconds,
//! never a scan of the actions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::db::api_queries::{self, LastSync};
use crate::db::instances::{self, InstanceRow};
use crate::db::sweeps::SweepKind;
use crate::db::{self, DbError, PgPool};
use crate::domain::action::SyncStatus;
use crate::domain::breaker::BreakerState;
use crate::domain::rollout::RolloutStatus;
use crate::queue::Topology;

/// How long a refresh waits for the database or the broker.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the database said.
#[derive(Debug, Default)]
pub struct DbSnapshot {
    pub instances: Vec<InstanceRow>,
    pub syncs: Vec<LastSync>,
    pub sweeps: Vec<(String, i64)>,
    pub rollouts: Vec<(RolloutStatus, i64)>,
    /// Webhook endpoints by state and deliveries by status.
    pub webhook_endpoints: Vec<(String, i64)>,
    pub webhook_deliveries: Vec<(String, i64)>,
}

/// What RabbitMQ holds: messages waiting in each queue the workers consume,
/// and in the dead-letter queue.
#[derive(Debug, Default)]
pub struct Queues {
    pub waiting: Vec<(String, u32)>,
    /// `None` when that queue could not be read.
    pub dead_letters: Option<u32>,
}

/// One reading of everything; `None` for what did not answer.
#[derive(Debug, Default)]
pub struct Reading {
    pub db: Option<DbSnapshot>,
    pub queues: Option<Queues>,
}

fn read_db(c: &mut diesel::PgConnection) -> Result<DbSnapshot, DbError> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = instances::list(c, after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        all.extend(page);
    }
    let mut syncs = Vec::new();
    let mut after = 0;
    loop {
        let page = api_queries::last_syncs(c, after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.instance_id;
        syncs.extend(page);
    }
    let (webhook_endpoints, webhook_deliveries) = crate::db::webhooks::counts(c)?;
    Ok(DbSnapshot {
        instances: all,
        syncs,
        sweeps: crate::db::sweeps::counters(c)?,
        rollouts: crate::db::rollouts::count_active_by_status(c)?,
        webhook_endpoints,
        webhook_deliveries,
    })
}

/// Messages waiting in each queue; `None` when the broker is away.
async fn read_queues(amqp: &lapin::Connection, t: &Topology) -> Option<Queues> {
    if !amqp.status().connected() {
        return None;
    }
    let ch = amqp.create_channel().await.ok()?;
    let mut out = Vec::new();
    for queue in [
        &t.actions_queue,
        &t.batches_queue,
        &t.sync_queue,
        &t.rollouts_queue,
        &t.rollout_hooks_queue,
        &t.dead_queue,
    ] {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => out.push((queue.clone(), q.message_count())),
            // A missing queue closes the channel; the rest are skipped.
            Err(_) => break,
        }
    }
    let _ = ch.close(200, "metrics read".into()).await;
    let dead_letters = out
        .iter()
        .position(|(q, _)| q == &t.dead_queue)
        .map(|at| out.remove(at).1);
    Some(Queues {
        waiting: out,
        dead_letters,
    })
}

/// The cached gauges of one process and what they are read from.
pub struct Gauges {
    pool: PgPool,
    amqp: Arc<lapin::Connection>,
    topology: Arc<Topology>,
    max_age: Duration,
    cached: Mutex<Option<(Instant, Arc<Reading>)>>,
    /// One refresh at a time; concurrent scrapes wait for it.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauges")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Gauges {
    pub fn new(
        pool: PgPool,
        amqp: Arc<lapin::Connection>,
        topology: Arc<Topology>,
        max_age: Duration,
    ) -> Self {
        Self {
            pool,
            amqp,
            topology,
            max_age,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    fn fresh(&self) -> Option<Arc<Reading>> {
        let cached = self.cached.lock().ok()?;
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, r)| r.clone())
    }

    /// The cached reading, read again first when older than `max_age`.
    pub async fn current(&self) -> Arc<Reading> {
        if let Some(r) = self.fresh() {
            return r;
        }
        let _one = self.refreshing.lock().await;
        if let Some(r) = self.fresh() {
            return r;
        }
        let pool = self.pool.clone();
        let (db, queues) = tokio::join!(
            tokio::time::timeout(READ_TIMEOUT, db::run(&pool, read_db)),
            tokio::time::timeout(READ_TIMEOUT, read_queues(&self.amqp, &self.topology)),
        );
        let db = match db {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: database unavailable");
                None
            }
            Err(_) => {
                tracing::warn!("metrics: the database did not answer in time");
                None
            }
        };
        let reading = Arc::new(Reading {
            db,
            queues: queues.ok().flatten(),
        });
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), reading.clone()));
        }
        reading
    }
}

impl Collector for Reading {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "database_up",
            "Whether PostgreSQL answered the last reading of these gauges.",
            i64::from(self.db.is_some()),
        )?;
        gauge(
            &mut e,
            "broker_up",
            "Whether RabbitMQ answered the last reading of these gauges.",
            i64::from(self.queues.is_some()),
        )?;
        if let Some(s) = &self.db {
            encode_db(&mut e, s)?;
        }
        if let Some(q) = &self.queues {
            encode_queues(&mut e, q)?;
        }
        Ok(())
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric with a series per label set.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn by_instance<'a, T: 'static>(
    instances: &'a [InstanceRow],
    value: impl Fn(&InstanceRow) -> T + 'a,
) -> impl Iterator<Item = (Vec<(&'static str, String)>, ConstGauge<T>)> + 'a {
    instances.iter().map(move |i| {
        (
            vec![("instance", i.name.clone())],
            ConstGauge::new(value(i)),
        )
    })
}

fn encode_db(e: &mut DescriptorEncoder, s: &DbSnapshot) -> Result<(), std::fmt::Error> {
    family(
        e,
        "breaker_open",
        "1 while an instance's circuit breaker is open or half-open.",
        MetricType::Gauge,
        by_instance(&s.instances, |i| {
            i64::from(i.breaker_state != BreakerState::Closed)
        }),
    )?;
    family(
        e,
        "breaker_consecutive_failures",
        "Consecutive failed calls to an instance's agent.",
        MetricType::Gauge,
        by_instance(&s.instances, |i| i64::from(i.consecutive_failures)),
    )?;
    family(
        e,
        "sync_last_failed",
        "1 when an instance's last sync failed.",
        MetricType::Gauge,
        by_instance(&s.instances, |i| {
            i64::from(i.last_sync_result == Some(SyncStatus::Failed))
        }),
    )?;
    family(
        e,
        "sync_last_duration_seconds",
        "Duration of an instance's last successful sync.",
        MetricType::Gauge,
        s.syncs.iter().map(|r| {
            let ms = r.counts["total_ms"].as_f64().unwrap_or(0.0);
            (
                vec![("instance", r.instance.clone())],
                ConstGauge::new(ms / 1000.0),
            )
        }),
    )?;
    family(
        e,
        "sync_last_changes",
        "What an instance's last successful sync found: state changes, new and removed servers.",
        MetricType::Gauge,
        s.syncs.iter().flat_map(|r| {
            ["state_changes", "new", "removed"].into_iter().map(|kind| {
                let n = r.counts[kind].as_i64().unwrap_or(0);
                (
                    vec![("instance", r.instance.clone()), ("kind", kind.to_owned())],
                    ConstGauge::new(n),
                )
            })
        }),
    )?;
    family(
        e,
        "swept",
        "Items the sweeper took up, by kind (shared by every scheduler: read from the database).",
        MetricType::Counter,
        SweepKind::ALL.into_iter().map(|kind| {
            let kind = kind.as_str();
            let n = s.sweeps.iter().find(|(k, _)| k == kind).map_or(0, |c| c.1);
            (
                vec![("kind", kind.to_owned())],
                ConstCounter::new(u64::try_from(n).unwrap_or(0)),
            )
        }),
    )?;
    family(
        e,
        "rollouts",
        "Rollouts in each status that is not final (running, paused, halted, aborting).",
        MetricType::Gauge,
        RolloutStatus::ALL
            .into_iter()
            .filter(|st| st.is_active())
            .map(|status| {
                let n = s
                    .rollouts
                    .iter()
                    .find(|(st, _)| *st == status)
                    .map_or(0, |c| c.1);
                (vec![("status", status.to_string())], ConstGauge::new(n))
            }),
    )?;
    family(
        e,
        "webhook_endpoints",
        "Webhook endpoints by state: active, disabled (by the dispatcher after a 410 or failing for webhooks.disable_after_hours), paused (by an admin).",
        MetricType::Gauge,
        with_label("state", &s.webhook_endpoints),
    )?;
    family(
        e,
        "webhook_deliveries",
        "Webhook and callback deliveries kept (webhooks.retention_days) by status: pending, delivered, failed.",
        MetricType::Gauge,
        with_label("status", &s.webhook_deliveries),
    )
}

fn with_label<'a>(
    label: &'static str,
    counts: &'a [(String, i64)],
) -> impl Iterator<Item = (Vec<(&'static str, String)>, ConstGauge<i64>)> + 'a {
    counts
        .iter()
        .map(move |(value, n)| (vec![(label, value.clone())], ConstGauge::new(*n)))
}

fn encode_queues(e: &mut DescriptorEncoder, q: &Queues) -> Result<(), std::fmt::Error> {
    family(
        e,
        "queue_messages",
        "Messages waiting in each queue the workers consume.",
        MetricType::Gauge,
        q.waiting.iter().map(|(queue, n)| {
            (
                vec![("queue", queue.clone())],
                ConstGauge::new(i64::from(*n)),
            )
        }),
    )?;
    if let Some(n) = q.dead_letters {
        gauge(
            e,
            "dead_letter_messages",
            "Messages in the dead-letter queue (nothing was applied for them).",
            i64::from(n),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(reading: Reading) -> String {
        let mut r = Registry::with_prefix("haproxy_control");
        r.register_collector(Box::new(reading));
        super::super::encode(&r)
    }

    #[test]
    fn without_database_or_broker_only_the_up_gauges_are_zero() {
        let text = text(Reading::default());
        assert!(text.contains("haproxy_control_database_up 0"), "{text}");
        assert!(text.contains("haproxy_control_broker_up 0"));
        assert!(!text.contains("breaker_open"));
    }

    #[test]
    fn every_sweep_kind_and_unfinished_rollout_status_has_a_series_even_at_zero() {
        let text = text(Reading {
            db: Some(DbSnapshot {
                sweeps: vec![("running".to_owned(), 3)],
                rollouts: vec![(RolloutStatus::Halted, 2)],
                ..DbSnapshot::default()
            }),
            queues: None,
        });
        for line in [
            "haproxy_control_swept_total{kind=\"running\"} 3",
            "haproxy_control_swept_total{kind=\"pending\"} 0",
            "haproxy_control_swept_total{kind=\"batch_completed\"} 0",
            "haproxy_control_rollouts{status=\"halted\"} 2",
            "haproxy_control_rollouts{status=\"running\"} 0",
            "haproxy_control_database_up 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(
            !text.contains("status=\"completed\""),
            "final statuses are not gauges"
        );
    }

    #[test]
    fn dead_letters_are_their_own_gauge_when_the_queue_was_read() {
        let read = text(Reading {
            db: None,
            queues: Some(Queues {
                waiting: vec![("haproxy.actions".to_owned(), 4)],
                dead_letters: Some(7),
            }),
        });
        assert!(
            read.contains("haproxy_control_dead_letter_messages 7"),
            "{read}"
        );
        assert!(read.contains("haproxy_control_queue_messages{queue=\"haproxy.actions\"} 4"));
        assert!(read.contains("haproxy_control_broker_up 1"));
        let unread = text(Reading {
            db: None,
            queues: Some(Queues::default()),
        });
        assert!(!unread.contains("dead_letter_messages"));
    }
}
