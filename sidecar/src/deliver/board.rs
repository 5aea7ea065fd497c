//! The delivery facts of resource subscriptions ([`herald_core::report`]): each attempt of a
//! reported subscription is recorded here, and [`StatusBoard::run`] publishes what changed to the
//! configuration bucket, at most once per key per [`PUBLISH_EVERY`], for the controller to copy
//! into the resource's status. Subscriptions from annotations are not reported: nothing reads
//! their facts, and a sidecar must not write the bucket per delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::broker::ConfigStore;
use herald_core::defaults::BUCKET;
use herald_core::delivery::Outcome;
use herald_core::report::{DeliveryReport, FailureReport, PUBLISH_EVERY, rfc3339, status_key};
use herald_runtime::shutdown::Shutdown;

/// How long the board waits after a change before publishing, so a burst is one write.
const TICK: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Entry {
    report: DeliveryReport,
    dirty: bool,
    written: Option<Instant>,
}

/// Latest facts per consumer name.
#[derive(Default)]
pub struct StatusBoard {
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken by a record, so an idle sidecar's board sleeps instead of ticking.
    changed: tokio::sync::Notify,
}

impl StatusBoard {
    pub fn new() -> Arc<Self> {
        Arc::new(StatusBoard::default())
    }

    /// Records one attempt's outcome for `consumer`.
    pub fn record(&self, consumer: String, outcome: &Outcome) {
        let now = chrono::Utc::now();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let e = entries.entry(consumer).or_default();
        match outcome {
            Outcome::Delivered => e.report.last_delivery = Some(rfc3339(now)),
            Outcome::Retry { status, reason, .. } => {
                e.report.last_failure = Some(FailureReport::new(now, *status, reason));
            }
            Outcome::Permanent { status, reason } => {
                e.report.last_failure = Some(FailureReport::new(now, Some(*status), reason));
            }
        }
        e.dirty = true;
        drop(entries);
        self.changed.notify_one();
    }

    /// What is due for publishing, marked as written.
    fn due(&self, all: bool) -> Vec<(String, DeliveryReport)> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        entries
            .iter_mut()
            .filter(|(_, e)| {
                e.dirty
                    && (all
                        || e.written
                            .is_none_or(|w| now.duration_since(w) >= PUBLISH_EVERY))
            })
            .map(|(k, e)| {
                e.dirty = false;
                e.written = Some(now);
                (k.clone(), e.report.clone())
            })
            .collect()
    }

    /// Whether something changed that is not published yet.
    fn pending(&self) -> bool {
        self.entries
            .lock()
            .map(|e| e.values().any(|e| e.dirty))
            .unwrap_or(false)
    }

    /// Publishes until `shutdown`, then once more for what is left (bounded, so a NATS outage
    /// cannot hold the exit). Idle (nothing recorded), it waits without waking up.
    pub async fn run(self: Arc<Self>, config: Arc<dyn ConfigStore>, shutdown: Shutdown) {
        loop {
            if !self.pending() {
                tokio::select! {
                    _ = self.changed.notified() => {}
                    _ = shutdown.wait() => return,
                }
            }
            let stopping = tokio::select! {
                _ = tokio::time::sleep(TICK) => false,
                _ = shutdown.wait() => true,
            };
            let publish = async {
                for (consumer, report) in self.due(stopping) {
                    let Ok(value) = serde_json::to_vec(&report) else {
                        continue;
                    };
                    if let Err(e) = config
                        .put(BUCKET, &status_key(&consumer), value.into())
                        .await
                    {
                        // The next change writes again; facts are best effort.
                        tracing::debug!(error = %e, %consumer, "cannot publish delivery facts");
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), publish).await;
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_facts_are_due_once_and_not_again_until_they_change() {
        let b = StatusBoard::new();
        b.record("c1".into(), &Outcome::Delivered);
        b.record(
            "c1".into(),
            &Outcome::Retry {
                status: Some(503),
                retry_after: None,
                reason: "busy".into(),
            },
        );
        let due = b.due(false);
        assert_eq!(due.len(), 1);
        let r = &due[0].1;
        assert!(r.last_delivery.is_some());
        let f = r.last_failure.as_ref().unwrap();
        assert_eq!((f.status, f.reason.as_str()), (Some(503), "busy"));
        assert!(b.due(false).is_empty(), "nothing changed");
        b.record("c1".into(), &Outcome::Delivered);
        assert!(
            b.due(false).is_empty(),
            "changed, but written less than 15 s ago"
        );
        assert_eq!(b.due(true).len(), 1, "the last flush takes it anyway");
    }
}
