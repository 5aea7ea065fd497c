//! The stream reconcile against a real nats-server: create, update, a change JetStream cannot
//! make, and the storage warning raised and cleared.

use herald_controlplane::controller::crd::{EventStreamSpec, EventStreamStatus};
use herald_controlplane::controller::reconcile::{
    self, DEGRADED, READY, Reconciled, STORAGE_NEARLY_FULL,
};
use herald_core::policy::Ensured;
use herald_tests::Nats;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const NAMES: (&str, &str) = ("HERALD", "HERALD_DLQ");

fn spec(yaml: &str) -> EventStreamSpec {
    yaml_serde::from_str(yaml).unwrap()
}

fn at(t: &str) -> Time {
    serde_json::from_value(serde_json::Value::from(t)).unwrap()
}

async fn events_config(
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::stream::Config {
    let mut s = js.get_stream("HERALD").await.unwrap();
    s.info().await.unwrap().config.clone()
}

fn condition<'a>(r: &'a Reconciled, t: &str) -> (&'a str, &'a str, &'a str) {
    let c = r
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition in {:?}", r.status));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn create_update_and_a_change_jetstream_cannot_make() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let broker = nats.broker().await;
    let none = EventStreamStatus::default();
    let t0 = at("2026-11-23T10:00:00Z");

    let r = reconcile::streams(&broker, &spec("{}"), Some(1), &none, NAMES, t0.clone()).await;
    assert_eq!(r.ensured, Some((Ensured::Created, Ensured::Created)));
    assert_eq!(condition(&r, READY).0, "True");
    assert_eq!(condition(&r, DEGRADED).0, "False");
    assert_eq!(r.status.observed_generation, Some(1));
    assert_eq!(r.status.percent_used.as_deref(), Some("0%"));

    // Again: nothing to do, and the transition times stay.
    let again = reconcile::streams(
        &broker,
        &spec("{}"),
        Some(1),
        &r.status,
        NAMES,
        at("2026-11-23T10:05:00Z"),
    )
    .await;
    assert_eq!(
        again.ensured,
        Some((Ensured::Unchanged, Ensured::Unchanged))
    );
    assert_eq!(again.status.conditions[0].last_transition_time, t0);

    let r = reconcile::streams(
        &broker,
        &spec("maxBytes: 2GiB\ndeadLetter: {maxAge: 24h}\n"),
        Some(2),
        &again.status,
        NAMES,
        t0.clone(),
    )
    .await;
    assert_eq!(r.ensured, Some((Ensured::Updated, Ensured::Updated)));
    let info = events_config(&js).await;
    assert_eq!(info.max_bytes, 2 << 30);

    // Retention cannot change on an existing stream: the stream keeps serving as it was.
    let r = reconcile::streams(
        &broker,
        &spec("retention: limits\n"),
        Some(3),
        &r.status,
        NAMES,
        t0.clone(),
    )
    .await;
    assert_eq!(r.ensured, None);
    let (status, reason, message) = condition(&r, DEGRADED);
    assert_eq!((status, reason), ("True", "ImmutableField"));
    assert!(
        message.contains("retention cannot be changed on an existing stream")
            && message.contains("back up and delete the stream"),
        "{message}"
    );
    assert_eq!(condition(&r, READY).0, "True");
    let info = events_config(&js).await;
    assert_eq!(
        info.retention,
        async_nats::jetstream::stream::RetentionPolicy::Interest
    );
    assert_eq!(r.status.last_error.as_deref(), Some(message));
}

#[tokio::test]
async fn storage_warning_is_raised_and_cleared() {
    let nats = Nats::start();
    let js = nats.jetstream().await;
    let broker = nats.broker().await;
    // Limits retention keeps what is published without a consumer; 10 KiB fills quickly.
    let small = spec("retention: limits\nmaxBytes: 10KiB\nstorageWarningPercent: 50\n");
    let t = at("2026-11-23T10:00:00Z");
    let r = reconcile::streams(
        &broker,
        &small,
        Some(1),
        &EventStreamStatus::default(),
        NAMES,
        t.clone(),
    )
    .await;
    assert_eq!(condition(&r, STORAGE_NEARLY_FULL).0, "False");
    assert_eq!(r.storage_warning_changed, None);

    let payload = vec![b'x'; 1024];
    for i in 0..6 {
        js.publish(format!("herald.shop.order{i}"), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let full = reconcile::streams(&broker, &small, Some(1), &r.status, NAMES, t.clone()).await;
    let (status, reason, message) = condition(&full, STORAGE_NEARLY_FULL);
    assert_eq!((status, reason), ("True", "AboveWarning"));
    assert!(message.contains("the warning is at 50%"), "{message}");
    assert_eq!(full.storage_warning_changed, Some(true));
    assert_eq!(full.status.messages, 6);

    // Still full: no new transition, so no second Event.
    let still = reconcile::streams(&broker, &small, Some(1), &full.status, NAMES, t.clone()).await;
    assert_eq!(still.storage_warning_changed, None);

    js.get_stream("HERALD")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let cleared = reconcile::streams(&broker, &small, Some(1), &still.status, NAMES, t).await;
    assert_eq!(condition(&cleared, STORAGE_NEARLY_FULL).0, "False");
    assert_eq!(cleared.storage_warning_changed, Some(false));
}

#[tokio::test]
async fn an_unreachable_nats_is_a_condition_not_a_crash() {
    let nats = Nats::start();
    let broker = nats.broker().await;
    drop(nats);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reconcile::streams(
            &broker,
            &spec("{}"),
            Some(1),
            &EventStreamStatus::default(),
            NAMES,
            at("2026-11-23T10:00:00Z"),
        ),
    )
    .await
    .expect("reconcile returns while NATS is down");
    let (status, reason, _) = condition(&r, READY);
    assert_eq!((status, reason), ("False", "NatsError"));
    assert_eq!(condition(&r, DEGRADED).1, "NatsError");
    assert!(r.status.last_error.is_some());
}
