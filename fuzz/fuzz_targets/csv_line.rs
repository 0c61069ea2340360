//! HAProxy's CSV dialect: any fields, written the way HAProxy writes them
//! (a field holding a comma or a quote is quoted, quotes doubled), split
//! back into the same fields; a line without quotes splits at every comma.
#![no_main]

use haproxy_control_fuzz::domain::csv::split_line;
use libfuzzer_sys::fuzz_target;

fn quote(field: &str) -> String {
    if field.contains([',', '"']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fuzz_target!(|input: (String, Vec<String>)| {
    let (line, fields) = input;
    if !line.contains('"') {
        assert_eq!(split_line(&line).join(","), line);
    }
    if !fields.is_empty() {
        let written: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        assert_eq!(split_line(&written.join(",")), fields, "{written:?}");
    }
});
