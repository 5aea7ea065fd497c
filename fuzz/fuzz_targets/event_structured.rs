//! Structured-mode CloudEvents (`application/cloudevents+json`): any body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(ev) = herald_core::event::from_structured(&body, &body) {
        let subject = herald_core::subject::event_subject(&ev.source, &ev.ty);
        assert!(subject.len() <= herald_core::limits::MAX_EVENT_SUBJECT_BYTES);
        let headers = herald_core::wire::headers(&ev, &Default::default());
        // What herald stores, it can write back as a structured event (structured delivery).
        let doc = herald_core::event::to_structured(headers.iter(), &ev.data);
        let doc = Bytes::from(doc);
        herald_core::event::from_structured(&doc, &doc)
            .expect("herald reads back the structured form it writes");
    }
});
