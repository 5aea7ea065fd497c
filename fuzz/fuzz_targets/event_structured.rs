//! Structured-mode CloudEvents (`application/cloudevents+json`): any body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(ev) = herald_sidecar::event::from_structured(&body, &body) {
        let subject = herald_sidecar::subject::event_subject(&ev.source, &ev.ty);
        assert!(subject.len() <= herald_sidecar::limits::MAX_EVENT_SUBJECT_BYTES);
        let headers = herald_sidecar::broker::nats_headers(&ev, &Default::default());
        // What herald stores, it can write back as a structured event (structured delivery).
        let pairs = headers.iter().flat_map(|(n, vs)| {
            vs.iter()
                .map(move |v| (AsRef::<str>::as_ref(n), v.as_str()))
        });
        let doc = herald_sidecar::event::to_structured(pairs, &ev.data);
        let doc = Bytes::from(doc);
        herald_sidecar::event::from_structured(&doc, &doc)
            .expect("herald reads back the structured form it writes");
    }
});
