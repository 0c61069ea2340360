//! `parse_batch` on any bytes: never panics; accepted targets are 1 to
//! 10,000 positive ids or one positive group id.
#![no_main]

use haproxy_control_fuzz::domain::action::BatchTargets;
use haproxy_control_fuzz::queue::message::{MAX_BATCH_IDS, MAX_MESSAGE_BYTES, parse_batch};
use haproxy_control_fuzz::{assert_actor, assert_reason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_batch(data) else {
        return;
    };
    assert!(data.len() <= MAX_MESSAGE_BYTES * 4);
    match &req.targets {
        BatchTargets::ServerIds(ids) | BatchTargets::ApplicationIds(ids) => {
            assert!(
                (1..=MAX_BATCH_IDS).contains(&ids.len()),
                "{} ids",
                ids.len()
            );
            assert!(ids.iter().all(|i| *i > 0), "{ids:?}");
        }
        BatchTargets::ApplicationGroup(g) => assert!(*g > 0, "group {g}"),
    }
    assert_actor(&req.actor);
    assert_reason(req.reason.as_deref());
});
