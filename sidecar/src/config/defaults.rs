//! Following the configuration bucket through the broker seam, so a change reaches running
//! subscriptions without a restart: the cluster's delivery defaults ([`herald_core::defaults`])
//! and the app's resource subscriptions, which the controller distributes ([`follow_resources`]).

use std::time::Duration;

use bytes::Bytes;
use herald_core::broker::ConfigStore;
use herald_core::defaults::{BUCKET, DELIVERY_KEY, Defaults};
use herald_runtime::shutdown::Shutdown;
use tokio::sync::watch;

/// How long to wait before opening the bucket again after it was missing or the broker failed,
/// doubling up to [`RETRY_MAX`] while it stays missing: without a controller (`herald dev`) the
/// bucket never comes, and an idle sidecar should not ask every few seconds.
const RETRY: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(120);

/// Follows `key` of the configuration bucket until `shutdown`: `on_value` gets the current value
/// and then each change (`None`: absent or deleted); `on_missing` is called each time the bucket
/// cannot be opened (it does not exist without a controller, or the broker cannot be asked),
/// before the next try.
pub async fn follow_key(
    config: std::sync::Arc<dyn ConfigStore>,
    key: &str,
    mut on_value: impl FnMut(Option<&Bytes>),
    mut on_missing: impl FnMut(),
    shutdown: Shutdown,
) {
    let mut retry = RETRY;
    while !shutdown.is_triggered() {
        let mut watch = match config.watch(BUCKET, key).await {
            Ok(w) => {
                retry = RETRY;
                w
            }
            Err(e) => {
                on_missing();
                tracing::debug!(error = %e, ?retry, key, "the configuration bucket cannot be read");
                let wait = crate::deliver::attempt::jitter(retry);
                retry = (retry * 2).min(RETRY_MAX);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                next = watch.next() => match next {
                    Some(Ok(value)) => on_value(value.as_ref()),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, key, "watching the configuration bucket failed; watching again");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Follows the delivery defaults until `shutdown`. `tx` holds `None` until the first answer: the
/// current value, or the built-in defaults when the bucket or key does not exist (no controller,
/// as under `herald dev`) or the broker cannot be asked; then each change. A value that does not
/// validate is logged with its field and ignored, so the last good defaults stay.
pub async fn follow(
    config: std::sync::Arc<dyn ConfigStore>,
    tx: watch::Sender<Option<Defaults>>,
    shutdown: Shutdown,
) {
    let settle = || {
        tx.send_if_modified(|d| {
            d.is_none()
                .then(|| *d = Some(Defaults::default()))
                .is_some()
        });
    };
    follow_key(config, DELIVERY_KEY, |v| apply(&tx, v), settle, shutdown).await;
}

/// Follows the app's own key (`herald_core::defaults::subscriptions_key`), where the controller
/// puts the subscriptions that `Subscription` resources give the app. `tx` holds `None` until the
/// first answer, then `Some(value)`: `Some(None)` when there is none (or no bucket).
pub async fn follow_resources(
    config: std::sync::Arc<dyn ConfigStore>,
    key: String,
    tx: watch::Sender<Option<Option<Bytes>>>,
    shutdown: Shutdown,
) {
    let missing = || {
        tx.send_if_modified(|v| v.is_none().then(|| *v = Some(None)).is_some());
    };
    let value = |v: Option<&Bytes>| {
        tx.send_if_modified(|cur| {
            let next = Some(v.cloned());
            let changed = *cur != next;
            *cur = next;
            changed
        });
    };
    follow_key(config, &key, value, missing, shutdown).await;
}

/// A value of the key (`None`: absent or deleted, so the built-in defaults).
fn apply(tx: &watch::Sender<Option<Defaults>>, value: Option<&Bytes>) {
    let next = match value {
        Some(bytes) => match Defaults::from_json(bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the cluster delivery defaults are invalid; the last good ones stay");
                if tx.borrow().is_none() {
                    tx.send_replace(Some(Defaults::default()));
                }
                return;
            }
        },
        None => Defaults::default(),
    };
    let changed = tx.send_if_modified(|d| {
        let changed = *d != Some(next);
        *d = Some(next);
        changed
    });
    if changed {
        tracing::info!(defaults = ?next, "cluster delivery defaults");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_membroker::MemBroker;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn defaults_follow_the_bucket_and_bad_values_keep_the_last_good_ones() {
        let broker = MemBroker::new();
        let (tx, mut rx) = watch::channel(None);
        let stop = Shutdown::new();
        let task = tokio::spawn(follow(Arc::new(broker.clone()), tx, stop.clone()));
        // No bucket (no controller): the built-in defaults, then retried.
        rx.wait_for(Option::is_some).await.unwrap();
        assert_eq!(*rx.borrow_and_update(), Some(Defaults::default()));
        broker.ensure_bucket(BUCKET, 1).await.unwrap();
        broker
            .put(
                BUCKET,
                DELIVERY_KEY,
                Bytes::from_static(br#"{"maxAttempts": 3}"#),
            )
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().unwrap().max_attempts, 3);
        broker
            .put(
                BUCKET,
                DELIVERY_KEY,
                Bytes::from_static(br#"{"maxAttempts": 0}"#),
            )
            .await
            .unwrap();
        broker
            .put(
                BUCKET,
                DELIVERY_KEY,
                Bytes::from_static(br#"{"maxInFlight": 7}"#),
            )
            .await
            .unwrap();
        rx.changed().await.unwrap();
        let d = rx.borrow_and_update().unwrap();
        assert_eq!((d.max_attempts, d.max_in_flight), (10, 7), "{d:?}");
        stop.trigger();
        task.await.unwrap();
    }
}
