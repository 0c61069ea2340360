//! Prometheus metrics by the maintained `prometheus-client` crate: counters
//! and histograms incremented where things happen (this process's), and the
//! gauges that must come from the database or the broker, read at most every
//! few seconds and cached ([`database`]). Every process serves them: the API
//! on its `/metrics`, the worker and the scheduler with `--metrics-listen`
//! ([`server`]).
//!
//! Names carry the prefix `haproxy_control_`; counters get `_total` from the
//! encoder (so their names here must not end in it).

pub mod database;
pub mod server;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::AdminState;
use crate::domain::action::ActionStatus;

/// The `Content-Type` of what [`encode`] writes (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (s) of the action latency histogram (Prometheus' defaults).
const ACTION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (s) of the agent-call histogram.
const AGENT_CALL_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];
/// Upper bounds of the action group histogram (commands in a group).
const GROUP_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Upper bounds (s) of the sync histogram.
const SYNC_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `ready`, `drain` or `maint`.
    pub action: String,
    /// The final status: `success`, `failed`, `superseded` or `rejected`.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentCallLabels {
    /// `health`, `backends`, `set_state`, `set_states` or `shutdown_sessions`.
    pub operation: String,
    /// `ok`, or the failure: `unreachable`, `tls`, `server_error`,
    /// `client_error`, `decode`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToLabel {
    /// `open` or `closed`.
    pub to: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The event's type (its routing key).
    pub r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutingKeyLabel {
    /// The message's routing key (`action`, `batch`, `sync`, …).
    pub routing_key: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success`, `failed` or `skipped`.
    pub result: String,
}

fn agent_call_histogram() -> Histogram {
    Histogram::new(AGENT_CALL_BUCKETS)
}

/// This process's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    actions: Family<ActionLabels, Counter>,
    action_duration: Histogram,
    action_retries: Counter,
    action_group_size: Histogram,
    action_group_left: Counter,
    agent_calls: Family<AgentCallLabels, Counter>,
    agent_call_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    breaker_transitions: Family<ToLabel, Counter>,
    events_published: Family<TypeLabel, Counter>,
    dead_letters: Family<RoutingKeyLabel, Counter>,
    sync_runs: Family<ResultLabel, Counter>,
    sync_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            actions: Family::default(),
            action_duration: Histogram::new(ACTION_BUCKETS),
            action_retries: Counter::default(),
            action_group_size: Histogram::new(GROUP_BUCKETS),
            action_group_left: Counter::default(),
            agent_calls: Family::default(),
            agent_call_duration: Family::new_with_constructor(agent_call_histogram),
            breaker_transitions: Family::default(),
            events_published: Family::default(),
            dead_letters: Family::default(),
            sync_runs: Family::default(),
            sync_duration: Histogram::new(SYNC_BUCKETS),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Registers (clones sharing the values of) every metric here.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "actions",
            "Actions that reached a final status in this process, by action and status",
            self.actions.clone(),
        );
        r.register(
            "action_duration_seconds",
            "Time from an action's requested_at to its final status, in this process",
            self.action_duration.clone(),
        );
        r.register(
            "action_retries",
            "Agent calls of actions sent again after a transient failure",
            self.action_retries.clone(),
        );
        r.register(
            "action_group_size",
            "Action commands that went through the path together, per group of two or more",
            self.action_group_size.clone(),
        );
        r.register(
            "action_group_left",
            "Action commands of a group left to the one-by-one path (a check would end them before the call, or another command of the group has their server)",
            self.action_group_left.clone(),
        );
        r.register(
            "agent_calls",
            "Calls to agents, by operation and result",
            self.agent_calls.clone(),
        );
        r.register(
            "agent_call_duration_seconds",
            "Duration of calls to agents, by operation",
            self.agent_call_duration.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker transitions this process made, by the state entered",
            self.breaker_transitions.clone(),
        );
        r.register(
            "events_published",
            "Events published (and confirmed by the broker), by type",
            self.events_published.clone(),
        );
        r.register(
            "dead_letters",
            "Messages this process moved to the dead-letter queue, by routing key",
            self.dead_letters.clone(),
        );
        r.register(
            "sync_runs",
            "Sync runs of one instance that ended in this process, by result",
            self.sync_runs.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Duration of sync runs of one instance that were attempted (agent call and reconcile)",
            self.sync_duration.clone(),
        );
    }

    /// An action reached its final `status` `elapsed` after it was requested.
    pub fn action_finished(&self, action: AdminState, status: ActionStatus, elapsed: Duration) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.action_duration.observe(elapsed.as_secs_f64());
    }

    /// A group of `size` commands of which `grouped` went through together.
    pub fn action_group(&self, size: usize, grouped: usize) {
        self.action_group_size.observe(grouped as f64);
        self.action_group_left
            .inc_by(u64::try_from(size.saturating_sub(grouped)).unwrap_or(u64::MAX));
    }

    pub fn action_retried(&self) {
        self.action_retries.inc();
    }

    /// One call to an agent ended with `result` after `elapsed`.
    pub fn agent_call(&self, operation: &str, result: &str, elapsed: Duration) {
        self.agent_calls
            .get_or_create(&AgentCallLabels {
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.agent_call_duration
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A breaker entered `to` (`open` or `closed`).
    pub fn breaker_transition(&self, to: &str) {
        self.breaker_transitions
            .get_or_create(&ToLabel { to: to.to_owned() })
            .inc();
    }

    pub fn event_published(&self, kind: &str) {
        self.events_published
            .get_or_create(&TypeLabel {
                r#type: kind.to_owned(),
            })
            .inc();
    }

    pub fn dead_lettered(&self, routing_key: &str) {
        self.dead_letters
            .get_or_create(&RoutingKeyLabel {
                routing_key: routing_key.to_owned(),
            })
            .inc();
    }

    /// A sync run ended with `result`; `elapsed` when it reached the agent.
    pub fn sync_finished(&self, result: &str, elapsed: Option<Duration>) {
        self.sync_runs
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        if let Some(elapsed) = elapsed {
            self.sync_duration.observe(elapsed.as_secs_f64());
        }
    }
}

/// A registry with the prefix `haproxy_control` holding this process's
/// metrics, for one scrape (registering is cheap: the values are shared).
pub fn registry() -> Registry {
    let mut r = Registry::with_prefix("haproxy_control");
    global().register(&mut r);
    r
}

/// `registry` in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics could not be encoded");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_the_prefix_and_total_and_labels() {
        let m = Metrics::default();
        m.action_finished(
            AdminState::Drain,
            ActionStatus::Success,
            Duration::from_millis(20),
        );
        m.action_finished(
            AdminState::Drain,
            ActionStatus::Success,
            Duration::from_millis(30),
        );
        m.agent_call("set_state", "ok", Duration::from_millis(2));
        m.sync_finished("failed", None);
        m.breaker_transition("open");
        m.event_published("action.succeeded");
        m.dead_lettered("action");
        let mut r = Registry::with_prefix("haproxy_control");
        m.register(&mut r);
        let text = encode(&r);
        for line in [
            "haproxy_control_actions_total{action=\"drain\",status=\"success\"} 2",
            "haproxy_control_action_duration_seconds_count 2",
            "haproxy_control_action_duration_seconds_bucket{le=\"0.025\"} 1",
            "haproxy_control_agent_calls_total{operation=\"set_state\",result=\"ok\"} 1",
            "haproxy_control_agent_call_duration_seconds_count{operation=\"set_state\"} 1",
            "haproxy_control_sync_runs_total{result=\"failed\"} 1",
            "haproxy_control_sync_duration_seconds_count 0",
            "haproxy_control_breaker_transitions_total{to=\"open\"} 1",
            "haproxy_control_events_published_total{type=\"action.succeeded\"} 1",
            "haproxy_control_dead_letters_total{routing_key=\"action\"} 1",
            "haproxy_control_action_retries_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}
