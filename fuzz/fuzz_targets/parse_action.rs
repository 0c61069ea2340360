//! `parse_action` on any bytes: never panics, and whatever it accepts is
//! safe to act on — names that can go to the runtime socket, positive ids,
//! bounded text.
#![no_main]

use haproxy_control_fuzz::domain::action::Target;
use haproxy_control_fuzz::queue::message::{MAX_MESSAGE_BYTES, parse_action};
use haproxy_control_fuzz::{assert_actor, assert_reason, is_identifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_action(data) else {
        return;
    };
    assert!(data.len() <= MAX_MESSAGE_BYTES);
    match &req.target {
        Target::ServerId(id) => assert!(*id > 0, "server_id {id}"),
        Target::Names {
            instance,
            backend,
            server,
        } => {
            for name in [instance.as_str(), backend.as_str(), server.as_str()] {
                assert!(is_identifier(name), "name {name:?} accepted");
            }
        }
    }
    if let Some(id) = req.batch_id {
        assert!(id > 0, "batch_id {id}");
    }
    assert_actor(&req.actor);
    assert_reason(req.reason.as_deref());
});
