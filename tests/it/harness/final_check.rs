//! The check every fault and load scenario ends with: every accepted
//! command was applied exactly once, has its final status, its history row
//! and its event; nothing is left unacked or pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Child;
use std::time::Duration;

use haproxy_control::db;
use uuid::Uuid;

use super::{SocketSpy, TestSystem, eventually};

/// What the accepted actions came to.
#[derive(Debug, Default)]
pub struct Settled {
    /// Actions by final status.
    pub statuses: BTreeMap<String, usize>,
    /// Successful actions that changed their server's state.
    pub changed: usize,
}

impl Settled {
    pub fn status(&self, status: &str) -> usize {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

#[derive(diesel::QueryableByName)]
struct ActionFact {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    transaction_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    changed: bool,
}

/// A SQL array literal of the transaction ids.
fn uuid_array(txns: &[Uuid]) -> String {
    let list: Vec<String> = txns.iter().map(Uuid::to_string).collect();
    format!("'{{{}}}'::uuid[]", list.join(","))
}

/// The final status of each action among `txns` (none for those not final
/// yet) and whether it changed its server's state.
async fn action_facts(sys: &TestSystem, txns: &[Uuid]) -> Vec<ActionFact> {
    let sql = format!(
        "SELECT a.transaction_id, a.status, \
                a.events @> '[{{\"type\": \"server.state_changed\"}}]'::jsonb AS changed \
         FROM haproxy_actions a WHERE a.transaction_id = ANY({}) \
         AND a.status IN ('success', 'failed', 'superseded', 'rejected')",
        uuid_array(txns)
    );
    db::run(&sys.pool, move |c| {
        use diesel::RunQueryDsl;
        Ok(diesel::sql_query(sql).load::<ActionFact>(c)?)
    })
    .await
    .expect("action facts query")
}

fn final_event(status: &str) -> &'static str {
    match status {
        "success" => "action.succeeded",
        "failed" => "action.failed",
        "superseded" => "action.superseded",
        "rejected" => "action.rejected",
        other => panic!("{other} is not a final status"),
    }
}

/// The event ids seen per (type, transaction id).
fn events_by_transaction(sys: &TestSystem) -> HashMap<(String, String), HashSet<String>> {
    let mut index: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for e in sys.events() {
        let (Some(kind), Some(txn)) = (e["type"].as_str(), e["transaction_id"].as_str()) else {
            continue;
        };
        index
            .entry((kind.to_owned(), txn.to_owned()))
            .or_default()
            .insert(e["event_id"].as_str().unwrap_or_default().to_owned());
    }
    index
}

/// The events an action must have published: its final event, and
/// `server.state_changed` when it changed its server.
fn expected_events(fact: &ActionFact) -> Vec<(String, String)> {
    let txn = fact.transaction_id.to_string();
    let mut out = vec![(final_event(&fact.status).to_owned(), txn.clone())];
    if fact.changed {
        out.push(("server.state_changed".to_owned(), txn));
    }
    out
}

/// Waits until the system has settled, stops `workers` (SIGKILL: anything
/// still unacked then goes back to its queue, where this check sees it),
/// and asserts, for the actions `txns` the test published (directly or
/// through batches):
/// - each has exactly one row, in a final status, and no action row of the
///   test is left `pending` or `running`; no batch is left incomplete, no
///   sync run left `running`;
/// - each successful action that changed its server has exactly one history
///   row (source `action`), and no other action has one;
/// - each has its final event on `haproxy.events` (and `server.state_changed`
///   when it changed its server), one `event_id` per fact however often it
///   was re-published;
/// - every successful action reached HAProxy exactly once: as many
///   `set server` commands went through `spies` as actions succeeded (the
///   scenarios send no command that fails after reaching HAProxy);
/// - the actions, batches and sync queues are empty with no consumer left,
///   so nothing was left unacked; nothing was dead-lettered.
pub async fn final_check(
    sys: &TestSystem,
    txns: &[Uuid],
    spies: &[&SocketSpy],
    workers: &mut Vec<Child>,
    within: Duration,
) -> Settled {
    let facts = eventually(within, "every action to be final", || async {
        let facts = action_facts(sys, txns).await;
        (facts.len() >= txns.len()).then_some(facts)
    })
    .await;
    eventually(within, "batches complete and no sync running", || async {
        let open = sys
            .count(
                "SELECT (SELECT count(*) FROM haproxy_batches WHERE completed_at IS NULL) \
                 + (SELECT count(*) FROM haproxy_sync_runs WHERE status = 'running') AS n",
            )
            .await;
        (open == 0).then_some(())
    })
    .await;
    let queues = [
        sys.topology.actions_queue.clone(),
        sys.topology.batches_queue.clone(),
        sys.topology.sync_queue.clone(),
    ];
    eventually(within, "the command queues to drain", || async {
        for q in &queues {
            if sys.depth(q).await != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let expected: Vec<(String, String)> = facts.iter().flat_map(expected_events).collect();
    let index = eventually(within, "every action's events", || async {
        let index = events_by_transaction(sys);
        expected
            .iter()
            .all(|key| index.contains_key(key))
            .then_some(index)
    })
    .await;

    // Settled: what is still delivered and not acked would be a message
    // handled again after everything is final. Give acks a moment, stop the
    // workers, and see that nothing comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in workers.iter_mut() {
        let _ = w.kill();
        let _ = w.wait();
    }
    workers.clear();
    eventually(within, "the workers' consumers to be gone", || async {
        for q in &queues {
            if sys
                .queue_state(q)
                .await
                .is_none_or(|(_, consumers)| consumers != 0)
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    for q in &queues {
        assert_eq!(
            sys.depth(q).await,
            0,
            "{q}: a message was left unacked after everything was final"
        );
    }
    let dead = sys.dead_letters().await;
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");

    let mut settled = Settled::default();
    for f in &facts {
        *settled.statuses.entry(f.status.clone()).or_default() += 1;
        if f.changed {
            settled.changed += 1;
        }
    }
    assert_eq!(facts.len(), txns.len(), "one final row per accepted action");
    assert_eq!(
        sys.count("SELECT count(*) AS n FROM haproxy_actions").await,
        i64::try_from(txns.len()).expect("count"),
        "no action row other than the accepted ones"
    );
    assert_eq!(
        sys.count(
            "SELECT count(*) AS n FROM haproxy_actions WHERE status NOT IN \
             ('success', 'failed', 'superseded', 'rejected')"
        )
        .await,
        0,
        "an action was left pending or running"
    );
    let changed = i64::try_from(settled.changed).expect("count");
    assert_eq!(
        sys.count(
            "SELECT count(*) AS n FROM haproxy_server_status_history WHERE source = 'action'"
        )
        .await,
        changed,
        "one history row per action that changed its server"
    );
    assert_eq!(
        sys.count(
            "SELECT count(DISTINCT h.action_id) AS n FROM haproxy_server_status_history h \
             JOIN haproxy_actions a ON a.id = h.action_id WHERE h.source = 'action' \
             AND a.status = 'success' \
             AND a.events @> '[{\"type\": \"server.state_changed\"}]'::jsonb"
        )
        .await,
        changed,
        "each action that changed its server has its own history row"
    );
    for key in &expected {
        let ids = &index[key];
        assert_eq!(
            ids.len(),
            1,
            "{key:?} published with several event ids: {ids:?}"
        );
    }
    let set_server: usize = spies.iter().map(|s| s.count("set server")).sum();
    assert_eq!(
        set_server,
        settled.status("success"),
        "each successful action reached HAProxy exactly once ({settled:?})"
    );
    settled
}

#[derive(diesel::QueryableByName)]
struct StoredState {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    admin_state: String,
}

/// The admin state HAProxy's `srv_admin_state` bits stand for.
fn state_of_bits(bits: u32) -> &'static str {
    match bits {
        0 => "ready",
        8 => "drain",
        1 => "maint",
        _ => "other",
    }
}

/// The live servers of `instance` whose admin state in PostgreSQL is not
/// the one HAProxy shows, as `backend/server: haproxy X, stored Y`.
pub async fn differences_from_haproxy(
    sys: &TestSystem,
    instance: &str,
    haproxy: &super::TestHaproxy,
) -> Vec<String> {
    let instance = instance.to_owned();
    let stored: BTreeMap<String, String> = db::run(&sys.pool, move |c| {
        use diesel::RunQueryDsl;
        Ok(diesel::sql_query(
            "SELECT b.backend_name || '/' || s.server_name AS name, s.admin_state \
             FROM haproxy_servers s JOIN haproxy_backends b ON b.id = s.backend_id \
             JOIN haproxy_instances i ON i.id = b.haproxy_id \
             WHERE i.name = $1 AND s.removed_at IS NULL",
        )
        .bind::<diesel::sql_types::Text, _>(instance)
        .load::<StoredState>(c)?)
    })
    .await
    .expect("stored states")
    .into_iter()
    .map(|r| (r.name, r.admin_state))
    .collect();
    let live: BTreeMap<String, String> = haproxy
        .admin_bits()
        .await
        .into_iter()
        .map(|(name, bits)| (name, state_of_bits(bits).to_owned()))
        .collect();
    assert_eq!(live.len(), stored.len(), "as many servers stored as live");
    live.iter()
        .filter(|(name, state)| stored.get(*name) != Some(*state))
        .map(|(name, state)| format!("{name}: haproxy {state}, stored {:?}", stored.get(name)))
        .collect()
}

/// Asserts that PostgreSQL holds, for every live server of `instance`, the
/// admin state HAProxy shows.
pub async fn assert_db_matches_haproxy(
    sys: &TestSystem,
    instance: &str,
    haproxy: &super::TestHaproxy,
) {
    let differing = differences_from_haproxy(sys, instance, haproxy).await;
    assert!(
        differing.is_empty(),
        "{} servers differ: {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );
}
