//! Bounded waits (issue 11, point 3): a server's lock held by a session
//! that froze does not stall the worker, and a dropped lock session leaves
//! no advisory lock on its pooled connection.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use serde_json::{Value, json};
use uuid::Uuid;

use haproxy_control::db::locks::AdvisoryLocks;
use haproxy_control::domain::action::server_lock_key;

use crate::harness::lb::SpiedLb as Lb;
use crate::harness::{TestSystem, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn drain(txn: Uuid, server: &str) -> Value {
    json!({
        "transaction_id": txn,
        "action": "drain",
        "target": {"instance": "lb-1", "backend": "web", "server": server},
        "actor": "user:alice",
        "reason": "bounded waits",
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Granted advisory locks in the test's database, of backend `pid` when
/// given.
fn advisory_locks(sys: &TestSystem, pid: Option<i32>) -> i64 {
    let mut conn = sys.db.connect().expect("connect");
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks \
         WHERE locktype = 'advisory' AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND ($1 IS NULL OR pid = $1)",
    )
    .bind::<diesel::sql_types::Nullable<Integer>, _>(pid)
    .get_result::<Count>(&mut conn)
    .expect("pg_locks")
    .n
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} failed");
}

#[tokio::test]
async fn a_frozen_lock_holder_delays_only_its_server_and_the_command_finishes_once_it_is_gone() {
    let lb = Lb::with_spares([("web", 4)]).await;
    let sys = TestSystem::start().await;
    sys.register_agent("lb-1", &lb.agent).await;
    let s1 = sys.server_id("lb-1", "web", "s1").await;

    // A session takes s1's lock, then its client freezes (SIGSTOP): the
    // lock stays held by a peer that will never release it by itself.
    let mut psql = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &sys.db.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = psql.stdin.take().expect("psql stdin");
    writeln!(stdin, "SELECT pg_advisory_lock({});", server_lock_key(s1)).expect("psql write");
    stdin.flush().expect("psql flush");
    eventually(WAIT, "psql to hold s1's lock", || {
        let held = advisory_locks(&sys, None) == 1;
        async move { held.then_some(()) }
    })
    .await;
    signal(&psql, "-STOP");

    let mut config = sys.config();
    config.database.lock_timeout_ms = 1_000;
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log = log_dir.path().join("worker.log");
    let mut worker = sys.spawn_worker_process(&config, &log);

    let blocked = Uuid::new_v4();
    sys.publish_action(&drain(blocked, "s1")).await;
    let others: Vec<Uuid> = (2..=4).map(|_| Uuid::new_v4()).collect();
    for (i, txn) in others.iter().enumerate() {
        sys.publish_action(&drain(*txn, &format!("s{}", i + 2)))
            .await;
    }
    for txn in &others {
        sys.wait_event("action.succeeded", *txn, WAIT).await;
    }

    // s1's command times out on the lock, is retried and does not succeed.
    let expected = format!("timed out waiting for the lock of server {s1}");
    eventually(WAIT, "the worker to log s1's lock timeout", || {
        let logged = std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&expected));
        async move { logged.then_some(()) }
    })
    .await;
    assert_eq!(
        lb.spy.count("set server web/s1 "),
        0,
        "s1 was changed while locked"
    );
    assert_eq!(lb.spy.count("set server"), 3, "the other servers each once");
    let row = sys.action(blocked).await;
    assert!(
        row.as_ref().is_none_or(|r| r.status != "success"),
        "s1's command succeeded while its lock was held"
    );

    // The holder comes back and ends its session: the command goes through.
    signal(&psql, "-CONT");
    drop(stdin);
    let _ = psql.wait();
    sys.wait_event("action.succeeded", blocked, WAIT).await;
    assert_eq!(lb.spy.count("set server web/s1 "), 1);
    assert_eq!(lb.spy.count("set server"), 4);

    let _ = worker.kill();
    let _ = worker.wait();
}

#[tokio::test]
async fn a_dropped_lock_session_leaves_no_advisory_lock_even_one_it_did_not_record() {
    let sys = TestSystem::start().await;
    let pool = haproxy_control::db::pool(&sys.db.url, 1).expect("pool");

    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    // A lock taken behind the session's back, as a statement cancelled
    // between the two locks of lock_server_and_backend would leave one.
    let (locks, pid) = AdvisoryLocks::open(&pool, |s| {
        s.lock_server(1)?;
        let pid: Pid = diesel::sql_query(
            "SELECT pg_backend_pid() AS pid FROM (SELECT pg_advisory_lock(4242)) AS l",
        )
        .get_result(s.conn())?;
        Ok(pid.pid)
    })
    .await
    .expect("locks");
    assert_eq!(advisory_locks(&sys, Some(pid)), 2);

    drop(locks);
    eventually(WAIT, "the session's locks to be gone", || {
        let left = advisory_locks(&sys, Some(pid));
        async move { (left == 0).then_some(()) }
    })
    .await;

    // The same with a session whose locks were released by `finish`, then
    // one more taken on its connection before it was dropped.
    let (mut locks, pid) = AdvisoryLocks::open(&pool, |s| {
        s.lock_server(1)?;
        let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(s.conn())?;
        Ok(pid.pid)
    })
    .await
    .expect("locks");
    locks
        .run(|c| {
            diesel::sql_query("SELECT pg_advisory_lock(4243)").execute(c)?;
            Ok(())
        })
        .await
        .expect("lock behind the session's back");
    assert_eq!(advisory_locks(&sys, Some(pid)), 2);
    locks.release().await;
    assert_eq!(advisory_locks(&sys, Some(pid)), 0);
}
