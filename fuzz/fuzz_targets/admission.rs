//! The webhook's decision on any AdmissionReview: parse, mutate, answer. When it injects, its
//! JSON Patch applies to the pod it was computed from.
#![no_main]

use std::collections::BTreeMap;

use herald_controlplane::webhook::mutate::{Context, Decision, InjectorConfig, mutate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = herald_controlplane::webhook::review::parse(data) else {
        return;
    };
    let cfg = InjectorConfig {
        sidecar_image: "herald:fuzz".into(),
        nats_url: "nats://nats:4222".into(),
        native_sidecar: data.len() % 2 == 0,
        resources: InjectorConfig::default_resources(),
        nats_credentials: None,
    };
    let ctx = Context {
        cronjob: None,
        namespace_annotations: BTreeMap::from([(
            "herald.dev/max-in-flight".to_owned(),
            "4".to_owned(),
        )]),
    };
    let Some(pod) = &req.object else { return };
    if let Decision::Inject(injection) = mutate(pod, &ctx, &cfg) {
        let mut value = serde_json::to_value(pod).expect("a parsed pod serializes");
        json_patch::patch(&mut value, &injection.patch).expect("the patch applies to its pod");
    }
    let _ = herald_controlplane::webhook::review::answer(&req, &ctx, &cfg);
});
