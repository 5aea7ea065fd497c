//! The stream half of the controller: bring `HERALD` and `HERALD_DLQ` in line with an
//! `EventStream` spec, and compute the status from what JetStream then holds.
//!
//! Never a crash loop: every failure becomes a condition. A field JetStream cannot change on an
//! existing stream (storage, retention) leaves the stream as it is, serving, and sets `Degraded`
//! with what to do; NATS being unreachable sets `Ready=False`. The Kubernetes side (reading the
//! resource, patching the status, Events) is the caller's, so this part is tested against a real
//! nats-server alone. It speaks the broker seam ([`Admin`]).

use herald_core::broker::{Admin, StreamError};
use herald_core::policy::{Ensured, human_bytes};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::crd::{EventStreamSpec, EventStreamStatus};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const STORAGE_NEARLY_FULL: &str = "StorageNearlyFull";

/// How long one reconcile waits for the broker before reporting it unreachable. A NATS client
/// queues requests while it reconnects, so without a bound a reconcile would wait for the outage.
const NATS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one reconcile did, besides the new status.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    pub status: EventStreamStatus,
    /// What happened to each stream (events, dead letters), when the spec was valid and NATS
    /// answered.
    pub ensured: Option<(Ensured, Ensured)>,
    /// `Some(true)` when storage use just passed the warning percent, `Some(false)` when it just
    /// dropped below it: the moments a Kubernetes Event is due.
    pub storage_warning_changed: Option<bool>,
    /// Bytes held as a share of max bytes, when the stream has a limit and answered.
    pub used_ratio: Option<f64>,
}

/// Reconciles the streams of `spec` (generation `generation`), given the previous status.
pub async fn streams(
    broker: &dyn Admin,
    spec: &EventStreamSpec,
    generation: Option<i64>,
    previous: &EventStreamStatus,
    names: (&str, &str),
    now: Time,
) -> Reconciled {
    let mut conds = Conditions {
        previous: &previous.conditions,
        out: Vec::new(),
        generation,
        now,
    };
    let mut status = EventStreamStatus {
        observed_generation: generation,
        ..Default::default()
    };
    let mut ensured = None;
    let degraded = match spec.policies(names.0, names.1) {
        Err(e) => {
            conds.set(READY, false, "InvalidSpec", &e);
            status.last_error = Some(e.clone());
            Some(("InvalidSpec", e))
        }
        Ok((events, dlq)) => {
            let both = async {
                (
                    broker.ensure_stream(&events).await,
                    broker.ensure_stream(&dlq).await,
                )
            };
            match tokio::time::timeout(NATS_TIMEOUT, both).await {
                Err(_) => {
                    let message = format!(
                        "NATS did not answer within {}s; the streams could not be checked",
                        NATS_TIMEOUT.as_secs()
                    );
                    conds.set(READY, false, "NatsError", &message);
                    status.last_error = Some(message.clone());
                    Some(("NatsError", message))
                }
                Ok((Ok(a), Ok(b))) => {
                    ensured = Some((a, b));
                    conds.set(READY, true, "StreamsReady", "both streams match the spec");
                    None
                }
                Ok((Err(e), _) | (_, Err(e))) => {
                    let message = e.to_string();
                    status.last_error = Some(message.clone());
                    match e {
                        // The stream still serves with its old configuration.
                        StreamError::Immutable { .. } => {
                            conds.set(
                                READY,
                                true,
                                "ServingPreviousConfiguration",
                                "the streams serve, but not with every field of the spec (see Degraded)",
                            );
                            Some(("ImmutableField", message))
                        }
                        StreamError::Broker { .. } => {
                            conds.set(READY, false, "NatsError", &message);
                            Some(("NatsError", message))
                        }
                    }
                }
            }
        }
    };
    match &degraded {
        Some((reason, message)) => conds.set(DEGRADED, true, reason, message),
        None => conds.set(
            DEGRADED,
            false,
            "AsSpecified",
            "the streams are as the spec says",
        ),
    }

    // What JetStream holds, when it answers.
    let mut storage_warning_changed = None;
    let mut used_ratio = None;
    let info = async { broker.stream(names.0).await.ok() };
    let nats_up = !matches!(degraded, Some(("NatsError", _)));
    let info = if nats_up {
        tokio::time::timeout(NATS_TIMEOUT, info)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    if let Some(info) = info {
        status.messages = info.messages;
        status.bytes = info.bytes;
        status.consumers = info.consumers;
        let max = info.max_bytes;
        if max > 0 {
            used_ratio = Some(info.bytes as f64 / max as f64);
            let percent = info.bytes.saturating_mul(100) / max as u64;
            status.percent_used = Some(format!("{percent}%"));
            let full = percent >= u64::from(spec.storage_warning_percent);
            let message = format!(
                "the events stream holds {} of {} ({percent}%); the warning is at {}%",
                human_bytes(info.bytes),
                human_bytes(max as u64),
                spec.storage_warning_percent
            );
            let was = previous
                .conditions
                .iter()
                .any(|c| c.type_ == STORAGE_NEARLY_FULL && c.status == "True");
            if full != was {
                storage_warning_changed = Some(full);
            }
            let reason = if full { "AboveWarning" } else { "BelowWarning" };
            conds.set(STORAGE_NEARLY_FULL, full, reason, &message);
        }
    } else {
        // Unknown this time: keep the last figures and the warning as they were.
        status.messages = previous.messages;
        status.bytes = previous.bytes;
        status.consumers = previous.consumers;
        status.percent_used = previous.percent_used.clone();
        conds.out.extend(
            previous
                .conditions
                .iter()
                .filter(|c| c.type_ == STORAGE_NEARLY_FULL)
                .cloned(),
        );
    }
    status.conditions = conds.out;
    Reconciled {
        status,
        ensured,
        storage_warning_changed,
        used_ratio,
    }
}

/// Builds conditions, keeping each one's transition time while its status stays the same.
struct Conditions<'a> {
    previous: &'a [Condition],
    out: Vec<Condition>,
    generation: Option<i64>,
    now: Time,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" }.to_owned();
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.out.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }
}
