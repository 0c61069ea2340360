//! The `show stat` parser on any text: never panics; each row comes from
//! one non-blank line after the header and names its proxy and itself.
#![no_main]

use haproxy_control_fuzz::domain::show_stat::{parse, split_addr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(rows) = parse(text) else {
        return;
    };
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(rows.len() < lines, "{} rows from {lines} lines", rows.len());
    for row in &rows {
        assert!(
            !row.proxy.is_empty() && !row.name.is_empty(),
            "a row without a proxy or server name: {row:?}"
        );
        if let Some(addr) = &row.addr {
            let _ = split_addr(addr);
        }
    }
});
