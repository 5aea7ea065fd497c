//! CESQL: parse any expression; evaluate what parses on an event whose attributes follow the
//! expression as `name=value` lines.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let source = lines.next().unwrap_or_default();
    let event: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(e) = herald_cesql::Expression::parse(source) {
        let _ = e.evaluate(&event);
        let _ = e.test(&event);
        let _ = e.result_type();
    }
});
