//! Batch-mode CloudEvents (`application/cloudevents-batch+json`): any body.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    if let Ok(items) = herald_core::event::from_batch(&body) {
        assert!(items.len() <= herald_core::limits::MAX_BATCH_EVENTS);
    }
});
