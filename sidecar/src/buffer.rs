//! The async durability mode (`herald-durability: async`): the API answers `202` once the event is
//! in this bounded in-memory buffer, and a worker stores it in JetStream, retrying transient
//! failures (the `Nats-Msg-Id` makes retries safe). Events still here when the pod dies are lost;
//! that is the contract the app opted into. A full buffer answers `503` with `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::error::PublishError;
use crate::event::{Event, TraceContext};
use crate::metrics::{DropLabels, DropReason, Durability, Metrics, StoredLabels};

/// Publishes the worker keeps in flight at once (acks are pipelined, so this bounds memory, not
/// throughput).
const WORKER_CONCURRENCY: usize = 256;

struct Job {
    event: Event,
    trace: TraceContext,
}

/// The sending side, held by the API.
#[derive(Clone)]
pub struct AsyncBuffer {
    tx: mpsc::Sender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// Owns the worker; [`Drainer::drain`] flushes at shutdown.
pub struct Drainer {
    close: watch::Sender<Option<Instant>>,
    worker: tokio::task::JoinHandle<()>,
}

impl AsyncBuffer {
    pub fn start(broker: Broker, capacity: usize, metrics: Arc<Metrics>) -> (AsyncBuffer, Drainer) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = watch::channel(None);
        let worker = tokio::spawn(worker(broker, rx, close_rx, metrics.clone()));
        (
            AsyncBuffer {
                tx,
                capacity,
                metrics,
            },
            Drainer { close, worker },
        )
    }

    pub fn try_enqueue(&self, event: Event, trace: TraceContext) -> Result<(), PublishError> {
        match self.tx.try_send(Job { event, trace }) {
            Ok(()) => {
                self.metrics.async_buffered.inc();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(PublishError::BufferFull(self.capacity)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::ShuttingDown),
        }
    }
}

impl Drainer {
    /// Stops taking events, stores what is buffered until `deadline`, and drops the rest.
    pub async fn drain(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.close.send_replace(Some(deadline));
        // The worker watches the deadline itself; the margin only guards against a stuck publish.
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), self.worker).await;
    }
}

async fn worker(
    broker: Broker,
    mut rx: mpsc::Receiver<Job>,
    mut close: watch::Receiver<Option<Instant>>,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(WORKER_CONCURRENCY));
    let mut tasks = JoinSet::new();
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = close.changed(), if close.borrow().is_none() => {
                // Refuse new events; `recv` still yields the buffered ones, then `None`.
                rx.close();
                continue;
            }
        };
        let Some(job) = job else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (broker, metrics, close) = (broker.clone(), metrics.clone(), close.clone());
        tasks.spawn(async move {
            store(&broker, job, &close, &metrics).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn store(
    broker: &Broker,
    job: Job,
    close: &watch::Receiver<Option<Instant>>,
    metrics: &Metrics,
) {
    let mut delay = Duration::from_millis(50);
    let outcome = loop {
        match broker.publish(&job.event, &job.trace).await {
            Ok(()) => break None,
            Err(e) if e.is_transient() => {
                let deadline = *close.borrow();
                if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                    break Some((DropReason::Shutdown, e));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => break Some((DropReason::Rejected, e)),
        }
    };
    metrics.async_buffered.dec();
    match outcome {
        None => {
            metrics
                .events_stored
                .get_or_create(&StoredLabels {
                    durability: Durability::Async,
                })
                .inc();
        }
        Some((reason, e)) => {
            metrics
                .async_dropped
                .get_or_create(&DropLabels { reason })
                .inc();
            tracing::error!(id = %job.event.id, source = %job.event.source, r#type = %job.event.ty, ?reason, error = %e, "async event dropped");
        }
    }
}
