//! The downward API annotations file (`key="value"` lines, Go-quoted values), then the
//! annotation contract on what it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(annotations) = herald_core::contract::parse_downward_api(text) {
        let _ = herald_core::contract::parse(&annotations);
    }
});
