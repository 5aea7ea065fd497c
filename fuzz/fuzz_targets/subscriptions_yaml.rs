//! `herald.dev/subscriptions` (the YAML form, attribute filters and CESQL included), beside a
//! valid app port.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    let annotations = BTreeMap::from([
        ("herald.dev/app-port".to_owned(), "8080".to_owned()),
        ("herald.dev/subscriptions".to_owned(), yaml.to_owned()),
    ]);
    if let Ok(pod) = herald_core::contract::parse(&annotations) {
        assert!(pod.subscriptions.len() <= herald_core::limits::MAX_SUBSCRIPTIONS);
        let who = herald_core::consumer::Subscriber {
            namespace: "ns".into(),
            app_id: "app".into(),
        };
        for sub in &pod.subscriptions {
            // Every accepted subscription makes a consumer configuration without panicking.
            let _ = herald_core::consumer::spec(&who, sub);
        }
    }
});
