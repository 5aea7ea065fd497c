//! A stored event, as anyone who can publish to NATS directly may have written it: any headers
//! and payload, through attribute filters, the structured form and the delivery request.
#![no_main]

use bytes::Bytes;
use herald_core::attrfilter;
use herald_core::contract::{DeliveryMode, Subscription};
use herald_core::delivery::{Target, request};
use herald_core::filter::TypeFilter;
use herald_core::wire::StoredAttributes;
use herald_jetstream::consume::NatsHeaders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut headers = async_nats::HeaderMap::new();
    for line in head.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        // What a NATS client can send: names without whitespace or ':', values without CR/LF.
        let (Ok(name), Ok(value)) = (
            name.parse::<async_nats::header::HeaderName>(),
            value.trim().parse::<async_nats::HeaderValue>(),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let headers = NatsHeaders(&headers);
    let payload = Bytes::copy_from_slice(body.as_bytes());
    let mut error = None;
    let _ = attrfilter::matches_all(filters(), &StoredAttributes(&headers), &mut error);
    for mode in [DeliveryMode::Binary, DeliveryMode::Structured] {
        let mut sub = Subscription::new(TypeFilter::parse("a.>").expect("a valid filter"));
        sub.mode = mode;
        let target = Target {
            sub,
            dest: herald_core::delivery::Destination::App(8080),
            reported: false,
        };
        let _ = request(&target, &headers, &payload, 1);
    }
});

/// Filters of every dialect, compiled once.
fn filters() -> &'static [attrfilter::AttrFilter] {
    static FILTERS: std::sync::OnceLock<Vec<attrfilter::AttrFilter>> = std::sync::OnceLock::new();
    FILTERS.get_or_init(|| {
        let yaml = "[{exact: {type: a.b}}, {any: [{prefix: {source: 'https://'}}, {suffix: {subject: .pdf}}]}, {not: {sql: \"INT(amount) > 10 AND region LIKE 'e%'\"}}]";
        let value: yaml_serde::Value = yaml_serde::from_str(yaml).expect("valid YAML");
        attrfilter::parse_list(&value).expect("valid filters")
    })
}
