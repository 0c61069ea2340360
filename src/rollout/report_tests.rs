use chrono::{TimeZone, Utc};
use uuid::Uuid;

use super::*;

fn rollout(status: RolloutStatus, current_wave: i32, waves: i32) -> RolloutRow {
    let at = Utc
        .with_ymd_and_hms(2026, 12, 2, 5, 0, 0)
        .single()
        .expect("time");
    RolloutRow {
        id: 7,
        transaction_id: Uuid::nil(),
        actor: "cli:alice".into(),
        reason: Some("deploy 1.4.2".into()),
        status,
        spec: serde_json::Value::Null,
        total: 3,
        waves,
        current_wave,
        wave_done_at: None,
        tick_seq: 1,
        halted_reason: None,
        created_at: at,
        updated_at: at,
        finished_at: None,
    }
}

fn server(id: i64, wave: i32, step: Step) -> RolloutServerRow {
    RolloutServerRow {
        id,
        rollout_id: 7,
        server_id: id + 100,
        backend_id: 1,
        wave,
        position: i32::try_from(id).expect("small"),
        step,
        failed_step: None,
        attempt: 0,
        step_started_at: None,
        healthy_since: None,
        hook_runs: 0,
        hook_started_at: None,
        hook_finished_at: None,
        hook_exit_code: None,
        hook_output: None,
        error: None,
        started_at: None,
        finished_at: None,
    }
}

fn names() -> Names {
    Names(
        [(1, "lb-1/web/s1"), (2, "lb-1/web/s2"), (3, "lb-1/api/s1")]
            .into_iter()
            .map(|(id, n)| (id, n.to_owned()))
            .collect(),
    )
}

fn snapshot(status: RolloutStatus, steps: [Step; 3]) -> Snapshot {
    Snapshot {
        rollout: rollout(status, 1, 2),
        servers: vec![
            server(1, 0, steps[0]),
            server(2, 0, steps[1]),
            server(3, 1, steps[2]),
        ],
    }
}

#[test]
fn the_headline_names_status_wave_and_servers_done() {
    let s = snapshot(
        RolloutStatus::Running,
        [Step::Ready, Step::Skipped, Step::Draining],
    );
    assert_eq!(
        headline(&s),
        "rollout 7 running: wave 2/2, 2/3 servers done, by cli:alice (deploy 1.4.2)"
    );
    let mut past_the_end = s.rollout.clone();
    past_the_end.current_wave = 5;
    assert_eq!(wave_label(&past_the_end), "wave 2/2");
}

#[test]
fn a_failed_server_shows_its_step_hook_and_error() {
    let mut s = snapshot(
        RolloutStatus::Halted,
        [Step::Ready, Step::Failed, Step::Pending],
    );
    s.rollout.halted_reason = Some("update_failed: the hook exited with 3".into());
    let failed = &mut s.servers[1];
    failed.failed_step = Some(Step::Updating);
    failed.attempt = 1;
    failed.hook_started_at = Some(s.rollout.created_at);
    failed.hook_finished_at = Some(s.rollout.created_at);
    failed.hook_exit_code = Some(3);
    failed.error = Some("update_failed: the hook exited with 3".into());
    let text = status_text(&s, &names());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "halted: update_failed: the hook exited with 3");
    assert!(lines[2].starts_with("SERVER_ID"), "{text}");
    let row: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(
        row[..6],
        ["102", "lb-1/web/s2", "1", "failed(updating)", "1", "3"]
    );
    assert!(lines[4].ends_with("update_failed: the hook exited with 3"));
    assert!(lines[5].contains("lb-1/api/s1") && lines[5].ends_with(" -"));
}

#[test]
fn changes_name_new_steps_and_status_once() {
    let names = names();
    let first = snapshot(
        RolloutStatus::Running,
        [Step::Draining, Step::Pending, Step::Pending],
    );
    assert_eq!(
        changes(None, &first, &names),
        [
            "rollout 7 running: wave 2/2",
            "lb-1/web/s1 (wave 1): draining"
        ]
    );
    assert!(changes(Some(&first), &first, &names).is_empty());
    let mut next = snapshot(
        RolloutStatus::Halted,
        [Step::Failed, Step::Pending, Step::Pending],
    );
    next.rollout.halted_reason = Some("drain_timeout".into());
    next.servers[0].error = Some("drain_timeout".into());
    assert_eq!(
        changes(Some(&first), &next, &names),
        [
            "rollout 7 halted: wave 2/2",
            "halted: drain_timeout",
            "lb-1/web/s1 (wave 1): failed: drain_timeout"
        ]
    );
}

#[test]
fn waves_count_done_failed_and_busy_servers() {
    let s = snapshot(
        RolloutStatus::Running,
        [Step::Ready, Step::Failed, Step::Pending],
    );
    let w = waves(&s);
    assert_eq!(w.len(), 2);
    assert_eq!((w[0].total, w[0].done, w[0].failed), (2, 1, 1));
    assert_eq!(w[0].message(), "1 failed");
    assert!(w[0].started && !w[1].started && !w[1].is_done());
    let all = snapshot(
        RolloutStatus::Completed,
        [Step::Ready, Step::Ready, Step::Ready],
    );
    assert!(waves(&all).iter().all(WaveProgress::is_done));
    assert_eq!(in_progress_line(&all, &names()), "in progress: none");
}

#[test]
fn in_progress_names_a_few_servers_then_counts() {
    let mut s = snapshot(
        RolloutStatus::Running,
        [Step::Updating, Step::Draining, Step::Pending],
    );
    assert_eq!(
        in_progress_line(&s, &names()),
        "in progress: lb-1/web/s1 updating, lb-1/web/s2 draining"
    );
    s.servers = (1..=10).map(|i| server(i, 0, Step::Healthy)).collect();
    let line = in_progress_line(&s, &names());
    assert!(line.ends_with("server 108 healthy and 2 more"), "{line}");
}

#[test]
fn the_list_shows_one_rollout_per_line() {
    let text = list_table(&[rollout(RolloutStatus::Completed, 2, 3)]);
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "7",
            "completed",
            "3/3",
            "3",
            "cli:alice",
            "2026-12-02T05:00:00Z",
            "deploy",
            "1.4.2"
        ]
    );
}
