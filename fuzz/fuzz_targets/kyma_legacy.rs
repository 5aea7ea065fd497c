//! Kyma's legacy publish body (`POST /{application}/v1/events`). The first line is the
//! application name from the path, the rest the body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (app, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"shop"[..], data),
    };
    let Ok(app) = std::str::from_utf8(app) else {
        return;
    };
    if let Ok(ev) = herald_core::legacy::to_event(app, &Bytes::copy_from_slice(body)) {
        // Through to the NATS headers the broker sends, where a bad value would panic.
        let msg = herald_core::wire::message(&ev, &Default::default());
        let _ = herald_jetstream::publish::header_map(&msg);
    }
});
