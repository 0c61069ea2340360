//! `parse_sync` on any bytes: never panics; an accepted instance id is
//! positive and the actor is one the audit trail can hold.
#![no_main]

use haproxy_control_fuzz::assert_actor;
use haproxy_control_fuzz::queue::message::{MAX_MESSAGE_BYTES, parse_sync};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_sync(data) else {
        return;
    };
    assert!(data.len() <= MAX_MESSAGE_BYTES);
    if let Some(id) = req.instance_id {
        assert!(id > 0, "instance_id {id}");
    }
    assert_actor(&req.actor);
});
