//! Following the cluster's delivery defaults ([`herald_core::defaults`]) in the configuration
//! bucket, through the broker seam, so a change reaches running subscriptions without a restart.

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

/// Follows the key until `shutdown`. `tx` holds `None` until the first answer: the current
/// value, or the built-in defaults when the bucket or key does not exist (no controller, as
/// under `herald dev`) or the broker cannot be asked; then each change. A value that does not
/// validate is logged with its field and ignored, so the last good defaults stay.
pub async fn follow(
    config: std::sync::Arc<dyn ConfigStore>,
    tx: watch::Sender<Option<Defaults>>,
    shutdown: Shutdown,
) {
    let settle = |tx: &watch::Sender<Option<Defaults>>| {
        tx.send_if_modified(|d| {
            d.is_none()
                .then(|| *d = Some(Defaults::default()))
                .is_some()
        })
    };
    let mut retry = RETRY;
    while !shutdown.is_triggered() {
        let mut watch = match config.watch(BUCKET, DELIVERY_KEY).await {
            Ok(w) => {
                retry = RETRY;
                w
            }
            Err(e) => {
                settle(&tx);
                tracing::debug!(error = %e, ?retry, "no cluster delivery defaults; the built-in ones apply");
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
                    Some(Ok(value)) => apply(&tx, value.as_ref()),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching the cluster delivery defaults failed; watching again");
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
