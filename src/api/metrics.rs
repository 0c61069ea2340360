//! `/metrics` in Prometheus' text format, computed at scrape time from a
//! few cheap aggregate queries and passive queue declarations.

use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use super::ApiState;
use crate::db::api_queries::{self, Histogram, LastSync, StatusCount};
use crate::db::instances::{self, InstanceRow};
use crate::db::sweeps::SweepKind;
use crate::db::{self, DbError};
use crate::domain::action::{ActionStatus, SyncStatus};
use crate::domain::breaker::BreakerState;

/// Upper bounds of the action latency histogram (Prometheus' defaults).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Actions finished this long ago or less count in the histogram.
const LATENCY_WINDOW_SECS: f64 = 3600.0;
/// How long a scrape waits for the database or the broker.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

struct Snapshot {
    statuses: Vec<StatusCount>,
    latency: Histogram,
    instances: Vec<InstanceRow>,
    syncs: Vec<LastSync>,
    sweeps: Vec<(String, i64)>,
    /// Webhook endpoints by state and deliveries by status.
    webhooks: (Vec<(String, i64)>, Vec<(String, i64)>),
}

fn snapshot(c: &mut diesel::PgConnection) -> Result<Snapshot, DbError> {
    let statuses = api_queries::action_status_counts(c)?;
    let latency = api_queries::action_latency(c, &LATENCY_BUCKETS, LATENCY_WINDOW_SECS)?;
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
    Ok(Snapshot {
        statuses,
        latency,
        instances: all,
        syncs,
        sweeps: crate::db::sweeps::counters(c)?,
        webhooks: crate::db::webhooks::counts(c)?,
    })
}

/// Messages waiting in each command queue; empty when the broker is away.
async fn queue_depths(st: &ApiState) -> Option<Vec<(String, u32)>> {
    if !st.amqp.status().connected() {
        return None;
    }
    let ch = st.amqp.create_channel().await.ok()?;
    let mut out = Vec::new();
    for queue in [
        &st.topology.actions_queue,
        &st.topology.batches_queue,
        &st.topology.sync_queue,
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
    Some(out)
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let pool = st.pool.clone();
    let (db, queues) = tokio::join!(
        tokio::time::timeout(SCRAPE_TIMEOUT, db::run(&pool, snapshot)),
        tokio::time::timeout(SCRAPE_TIMEOUT, queue_depths(&st)),
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
    let queues = queues.ok().flatten();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(db.as_ref(), queues.as_deref()),
    )
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn render(db: Option<&Snapshot>, queues: Option<&[(String, u32)]>) -> String {
    let mut out = String::new();
    head(
        &mut out,
        "haproxy_control_database_up",
        "gauge",
        "Whether PostgreSQL answered this scrape.",
    );
    let _ = writeln!(
        out,
        "haproxy_control_database_up {}",
        u8::from(db.is_some())
    );
    head(
        &mut out,
        "haproxy_control_broker_up",
        "gauge",
        "Whether RabbitMQ answered this scrape.",
    );
    let _ = writeln!(
        out,
        "haproxy_control_broker_up {}",
        u8::from(queues.is_some())
    );
    if let Some(s) = db {
        render_db(&mut out, s);
    }
    if let Some(queues) = queues {
        head(
            &mut out,
            "haproxy_control_queue_messages",
            "gauge",
            "Commands waiting in each command queue.",
        );
        for (queue, n) in queues {
            let _ = writeln!(
                out,
                "haproxy_control_queue_messages{{queue=\"{}\"}} {n}",
                label(queue)
            );
        }
    }
    out
}

fn render_db(out: &mut String, s: &Snapshot) {
    head(
        out,
        "haproxy_control_actions_total",
        "gauge",
        "Actions recorded, by status.",
    );
    for status in ActionStatus::ALL {
        let n = s
            .statuses
            .iter()
            .find(|c| c.status == status)
            .map_or(0, |c| c.n);
        let _ = writeln!(
            out,
            "haproxy_control_actions_total{{status=\"{status}\"}} {n}"
        );
    }

    let name = "haproxy_control_action_duration_seconds";
    head(
        out,
        name,
        "histogram",
        "Time from requested_at to finished_at of the actions finished in the last hour.",
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&s.latency.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.latency.count);
    let _ = writeln!(out, "{name}_sum {}", s.latency.sum);
    let _ = writeln!(out, "{name}_count {}", s.latency.count);

    render_sweeps(out, &s.sweeps);
    render_webhooks(out, &s.webhooks);

    head(
        out,
        "haproxy_control_breaker_open",
        "gauge",
        "1 while an instance's circuit breaker is open or half-open.",
    );
    for i in &s.instances {
        let open = u8::from(i.breaker_state != BreakerState::Closed);
        let _ = writeln!(
            out,
            "haproxy_control_breaker_open{{instance=\"{}\"}} {open}",
            label(&i.name)
        );
    }
    head(
        out,
        "haproxy_control_breaker_consecutive_failures",
        "gauge",
        "Consecutive failed calls to an instance's agent.",
    );
    for i in &s.instances {
        let _ = writeln!(
            out,
            "haproxy_control_breaker_consecutive_failures{{instance=\"{}\"}} {}",
            label(&i.name),
            i.consecutive_failures
        );
    }
    head(
        out,
        "haproxy_control_sync_last_failed",
        "gauge",
        "1 when an instance's last sync failed.",
    );
    for i in &s.instances {
        let failed = u8::from(i.last_sync_result == Some(SyncStatus::Failed));
        let _ = writeln!(
            out,
            "haproxy_control_sync_last_failed{{instance=\"{}\"}} {failed}",
            label(&i.name)
        );
    }

    head(
        out,
        "haproxy_control_sync_duration_seconds",
        "gauge",
        "Duration of an instance's last successful sync.",
    );
    for r in &s.syncs {
        let ms = r.counts["total_ms"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "haproxy_control_sync_duration_seconds{{instance=\"{}\"}} {}",
            label(&r.instance),
            ms / 1000.0
        );
    }
    head(
        out,
        "haproxy_control_sync_last_changes",
        "gauge",
        "What an instance's last successful sync found: state changes, new and removed servers.",
    );
    for r in &s.syncs {
        for kind in ["state_changes", "new", "removed"] {
            let n = r.counts[kind].as_i64().unwrap_or(0);
            let _ = writeln!(
                out,
                "haproxy_control_sync_last_changes{{instance=\"{}\",kind=\"{kind}\"}} {n}",
                label(&r.instance)
            );
        }
    }
}

fn render_webhooks(
    out: &mut String,
    (endpoints, deliveries): &(Vec<(String, i64)>, Vec<(String, i64)>),
) {
    head(
        out,
        "haproxy_control_webhook_endpoints",
        "gauge",
        "Webhook endpoints by state: active, or disabled (by the dispatcher after 410 or failing too long, or by an admin).",
    );
    for (state, n) in endpoints {
        let _ = writeln!(
            out,
            "haproxy_control_webhook_endpoints{{state=\"{state}\"}} {n}"
        );
    }
    head(
        out,
        "haproxy_control_webhook_deliveries",
        "gauge",
        "Webhook and callback deliveries kept (webhooks.retention_days) by status: pending, delivered, failed.",
    );
    for (status, n) in deliveries {
        let _ = writeln!(
            out,
            "haproxy_control_webhook_deliveries{{status=\"{status}\"}} {n}"
        );
    }
}

fn render_sweeps(out: &mut String, counters: &[(String, i64)]) {
    head(
        out,
        "haproxy_control_swept_total",
        "counter",
        "Items the sweeper took up, by kind: pending and running actions and batches whose command it published again, batches it completed.",
    );
    for kind in SweepKind::ALL {
        let kind = kind.as_str();
        let n = counters.iter().find(|(k, _)| k == kind).map_or(0, |c| c.1);
        let _ = writeln!(out, "haproxy_control_swept_total{{kind=\"{kind}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_database_or_broker_only_the_up_gauges_are_zero() {
        let text = render(None, None);
        assert!(text.contains("haproxy_control_database_up 0"));
        assert!(text.contains("haproxy_control_broker_up 0"));
        assert!(!text.contains("actions_total"));
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn every_sweep_kind_has_a_counter_even_at_zero() {
        let mut out = String::new();
        render_sweeps(&mut out, &[("running".to_owned(), 3)]);
        assert!(out.contains("haproxy_control_swept_total{kind=\"running\"} 3"));
        assert!(out.contains("haproxy_control_swept_total{kind=\"pending\"} 0"));
        assert!(out.contains("haproxy_control_swept_total{kind=\"batch_completed\"} 0"));
    }
}
