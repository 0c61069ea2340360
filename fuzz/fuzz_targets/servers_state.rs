//! The `show servers state` parser on any text: never panics; names are
//! single non-empty tokens.
#![no_main]

use haproxy_control_fuzz::domain::servers_state::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(rows) = parse(text) else {
        return;
    };
    for row in &rows {
        for name in [&row.backend, &row.server, &row.addr] {
            assert!(
                !name.is_empty() && !name.chars().any(char::is_whitespace),
                "{row:?}"
            );
        }
    }
});
