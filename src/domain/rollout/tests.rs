use super::*;

fn timings() -> Timings {
    Timings {
        drain_timeout_secs: 300,
        drain_poll_ms: 1000,
        on_timeout: OnTimeout::Halt,
        maint_during_update: true,
        healthy_for_secs: 10,
        health_timeout_secs: 300,
        soak_secs: 0,
        max_unavailable_per_backend: 1,
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
}

fn view(step: Step) -> ServerView {
    ServerView {
        step,
        step_started_at: Some(at(0)),
        healthy_since: None,
        action: ActionOutcome::Succeeded,
        live: Some(Live {
            admin_state: AdminState::Drain,
            op_state: OpState::Up,
            sessions: 0,
        }),
        hook_exit_code: None,
        hook_finished: false,
    }
}

#[test]
fn steps_and_statuses_round_trip_through_text() {
    for s in Step::ALL {
        assert_eq!(s.as_str().parse::<Step>(), Ok(s));
    }
    for s in RolloutStatus::ALL {
        assert_eq!(s.as_str().parse::<RolloutStatus>(), Ok(s));
    }
    assert!("draining ".parse::<Step>().is_err());
}

#[test]
fn wave_sizes_are_counts_or_percentages_within_bounds() {
    use serde_json::json;
    assert_eq!(WaveSize::parse(&json!(1)), Ok(WaveSize::Count(1)));
    assert_eq!(WaveSize::parse(&json!("25%")), Ok(WaveSize::Percent(25)));
    for bad in [
        json!(0),
        json!("0%"),
        json!("150%"),
        json!("x"),
        json!(-1),
        json!(1.5),
    ] {
        assert!(WaveSize::parse(&bad).is_err(), "{bad}");
    }
    assert_eq!(WaveSize::Percent(25).servers(6), 2);
    assert_eq!(WaveSize::Percent(100).servers(6), 6);
    assert_eq!(WaveSize::Count(10).servers(6), 6);
}

#[test]
fn waves_interleave_backends() {
    let plan = plan_waves(vec![(1, 10), (2, 10), (3, 10), (4, 20), (5, 20)], 2);
    let order: Vec<(i64, i32)> = plan.iter().map(|p| (p.server_id, p.wave)).collect();
    assert_eq!(order, vec![(1, 0), (4, 0), (2, 1), (5, 1), (3, 2)]);
}

#[test]
fn a_step_waits_for_its_action_and_fails_when_it_ended_otherwise() {
    let t = timings();
    let mut v = view(Step::Draining);
    v.action = ActionOutcome::Waiting;
    assert_eq!(advance(&v, &t, at(1)), Move::Stay);
    v.action = ActionOutcome::Missing;
    assert_eq!(advance(&v, &t, at(1)), Move::Reenter);
    v.action = ActionOutcome::Ended("rejected: last ready server".into());
    assert!(matches!(advance(&v, &t, at(1)), Move::Fail(_)));
}

#[test]
fn draining_waits_for_sessions_then_halts_or_shuts_them_down() {
    let mut t = timings();
    let mut v = view(Step::Draining);
    assert_eq!(advance(&v, &t, at(1)), Move::To(Step::Drained));
    v.live = Some(Live {
        admin_state: AdminState::Drain,
        op_state: OpState::Up,
        sessions: 2,
    });
    assert_eq!(advance(&v, &t, at(10)), Move::Stay);
    assert!(matches!(advance(&v, &t, at(300)), Move::Fail(e) if e.starts_with("drain_timeout")));
    t.on_timeout = OnTimeout::ShutdownSessions;
    assert_eq!(advance(&v, &t, at(300)), Move::ShutdownSessions);
    v.live = None;
    assert_eq!(
        advance(&v, &t, at(900)),
        Move::Stay,
        "no reading, no decision"
    );
}

#[test]
fn the_hook_decides_the_update() {
    let t = timings();
    let mut v = view(Step::Updating);
    assert_eq!(advance(&v, &t, at(1)), Move::Stay);
    v.hook_finished = true;
    v.hook_exit_code = Some(0);
    assert_eq!(advance(&v, &t, at(1)), Move::To(Step::Updated));
    v.hook_exit_code = Some(2);
    assert!(matches!(advance(&v, &t, at(1)), Move::Fail(e) if e.contains("exited with 2")));
    v.hook_exit_code = None;
    assert!(matches!(advance(&v, &t, at(1)), Move::Fail(e) if e.contains("killed")));
}

#[test]
fn the_health_gate_wants_the_check_up_long_enough() {
    let t = timings();
    let mut v = view(Step::Updated);
    assert_eq!(advance(&v, &t, at(1)), Move::HealthySince(at(1)));
    v.healthy_since = Some(at(1));
    assert_eq!(advance(&v, &t, at(5)), Move::Stay);
    assert_eq!(advance(&v, &t, at(11)), Move::To(Step::Healthy));
    v.live = Some(Live {
        admin_state: AdminState::Drain,
        op_state: OpState::Down,
        sessions: 0,
    });
    assert_eq!(advance(&v, &t, at(12)), Move::NotHealthy);
    v.healthy_since = None;
    assert_eq!(advance(&v, &t, at(12)), Move::Stay);
    assert!(matches!(advance(&v, &t, at(300)), Move::Fail(e) if e.starts_with("health_timeout")));
    v.live = Some(Live {
        admin_state: AdminState::Drain,
        op_state: OpState::NoCheck,
        sessions: 0,
    });
    assert_eq!(advance(&v, &t, at(12)), Move::To(Step::Healthy));
}

#[test]
fn entry_actions_follow_maint_during_update() {
    assert_eq!(
        Step::Drained.entry_action(true),
        Some((AdminState::Maint, "maint"))
    );
    assert_eq!(Step::Drained.entry_action(false), None);
    assert_eq!(Step::Updated.entry_action(false), None);
    assert_eq!(
        Step::Healthy.entry_action(false),
        Some((AdminState::Ready, "ready"))
    );
    let t = Uuid::new_v4();
    assert_ne!(
        step_transaction_id(t, 1, "drain", 0),
        step_transaction_id(t, 1, "drain", 1)
    );
}

#[test]
fn a_server_starts_only_within_the_backends_budget_and_never_as_the_last_ready() {
    let t = timings();
    let load = |out, ready_up| BackendLoad { out, ready_up };
    assert!(may_start(load(0, 2), &t, true));
    assert!(!may_start(load(1, 2), &t, true), "one out already");
    assert!(!may_start(load(0, 1), &t, true), "the last ready one");
    assert!(may_start(load(0, 1), &t, false), "another one is ready");
    assert!(!may_start(load(0, 0), &t, false));
}

mod ticks {
    use super::super::tick::{RolloutChange, TickInput, TickServer, plan};
    use super::*;

    fn server(backend_id: i64, wave: i32, step: Step) -> TickServer {
        TickServer {
            backend_id,
            wave,
            view: view(step),
            is_ready_up: step == Step::Pending || step == Step::Ready,
        }
    }

    fn input(servers: Vec<TickServer>) -> TickInput {
        TickInput {
            status: RolloutStatus::Running,
            current_wave: 0,
            waves: 2,
            wave_done_at: None,
            timings: timings(),
            now: at(100),
            servers,
            outside_ready: std::collections::HashMap::new(),
        }
    }

    #[test]
    fn the_current_wave_starts_within_the_budget_of_each_backend() {
        let mut i = input(vec![
            server(1, 0, Step::Pending),
            server(1, 0, Step::Pending),
            server(1, 1, Step::Pending),
            server(2, 0, Step::Pending),
            server(2, 0, Step::Pending),
        ]);
        i.waves = 2;
        let p = plan(&i);
        let started: Vec<usize> = p
            .moves
            .iter()
            .filter(|(_, m)| *m == Move::To(Step::Draining))
            .map(|(i, _)| *i)
            .collect();
        // One per backend (max_unavailable_per_backend 1), wave 0 only.
        assert_eq!(started, vec![0, 3]);
        assert!(p.keep_ticking);
    }

    #[test]
    fn a_failure_halts_and_a_done_wave_moves_on_then_completes() {
        let mut i = input(vec![
            server(1, 0, Step::Updating),
            server(1, 1, Step::Pending),
        ]);
        i.servers[0].view.hook_finished = true;
        i.servers[0].view.hook_exit_code = Some(1);
        let p = plan(&i);
        assert_eq!(p.status, Some(RolloutStatus::Halted));
        assert!(matches!(p.changes[..], [RolloutChange::Halted(_)]));
        assert!(
            p.moves.iter().all(|(_, m)| *m != Move::To(Step::Draining)),
            "nothing starts once halted"
        );

        let i = input(vec![server(1, 0, Step::Ready), server(1, 1, Step::Pending)]);
        let p = plan(&i);
        assert_eq!(p.current_wave, Some(1));
        assert_eq!(p.changes, vec![RolloutChange::WaveCompleted(0)]);

        let mut last = input(vec![server(1, 0, Step::Ready), server(1, 1, Step::Ready)]);
        last.current_wave = 1;
        let p = plan(&last);
        assert_eq!(p.status, Some(RolloutStatus::Completed));
        assert!(!p.keep_ticking);
    }

    #[test]
    fn soak_waits_before_the_next_wave() {
        let mut i = input(vec![server(1, 0, Step::Ready), server(1, 1, Step::Pending)]);
        i.timings.soak_secs = 30;
        let p = plan(&i);
        assert_eq!(p.current_wave, None, "soaking");
        assert_eq!(p.wave_done_at, Some(Some(at(100))));
        i.wave_done_at = Some(at(100));
        i.now = at(129);
        assert_eq!(plan(&i).current_wave, None);
        i.now = at(130);
        assert_eq!(plan(&i).current_wave, Some(1));
    }

    #[test]
    fn aborting_puts_not_yet_updated_servers_back_and_ends_when_none_is_in_a_step() {
        let mut i = input(vec![
            server(1, 0, Step::Draining),
            server(1, 0, Step::Pending),
            server(2, 0, Step::Updating),
        ]);
        i.status = RolloutStatus::Aborting;
        let p = plan(&i);
        assert!(p.moves.contains(&(0, Move::To(Step::Healthy))), "{p:?}");
        assert!(!p.moves.iter().any(|(i, _)| *i == 1), "pending stays");
        assert_eq!(p.status, None, "the update still runs");
        let mut done = input(vec![server(1, 0, Step::Ready), server(1, 0, Step::Pending)]);
        done.status = RolloutStatus::Aborting;
        let p = plan(&done);
        assert_eq!(p.status, Some(RolloutStatus::Aborted));
        assert!(!p.keep_ticking);
    }
}
