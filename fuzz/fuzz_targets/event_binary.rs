//! Binary-mode CloudEvents: `ce-*` headers and a body, as the publish API receives them. The
//! input is a request head (`name: value` lines) and, after an empty line, the body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // What hyper would have refused never reaches herald.
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(ev) = herald_core::event::from_binary(&headers, Bytes::copy_from_slice(body)) {
        // An accepted event always becomes a storable NATS message.
        let subject = herald_core::subject::event_subject(&ev.source, &ev.ty);
        assert!(subject.len() <= herald_core::limits::MAX_EVENT_SUBJECT_BYTES);
        // Through to the NATS headers the broker sends, where a bad value would panic.
        let msg = herald_core::wire::message(&ev, &Default::default());
        let _ = herald_jetstream::publish::header_map(&msg);
    }
});
