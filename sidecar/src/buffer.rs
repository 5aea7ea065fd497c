//! The async durability mode (`herald-durability: async`): the API answers `202` once the event is
//! in this bounded in-memory buffer, and a worker stores it in JetStream, retrying transient
//! failures (the `Nats-Msg-Id` makes retries safe). Events still here when the pod dies are lost;
//! that is the contract the app opted into. A full buffer answers `503` with `Retry-After`: full
//! means its event count or its byte budget (data and attributes of what it holds) is reached, so
//! large events cannot grow the sidecar past its memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// What the job counts against the byte budget.
    bytes: u64,
}

/// The bytes an event holds in memory, near enough.
fn size_of(event: &Event) -> u64 {
    let attributes: usize = event
        .attributes
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    (event.data.len()
        + event.id.len()
        + event.source.len()
        + event.ty.len()
        + event.datacontenttype.as_ref().map_or(0, String::len)
        + attributes) as u64
}

/// The sending side, held by the API.
#[derive(Clone)]
pub struct AsyncBuffer {
    tx: mpsc::Sender<Job>,
    capacity: usize,
    max_bytes: u64,
    bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

/// Owns the worker; [`Drainer::drain`] flushes at shutdown.
pub struct Drainer {
    close: watch::Sender<Option<Instant>>,
    worker: tokio::task::JoinHandle<()>,
}

impl AsyncBuffer {
    pub fn start(
        broker: Broker,
        capacity: usize,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> (AsyncBuffer, Drainer) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = watch::channel(None);
        let bytes = Arc::new(AtomicU64::new(0));
        let worker = tokio::spawn(worker(broker, rx, close_rx, bytes.clone(), metrics.clone()));
        (
            AsyncBuffer {
                tx,
                capacity,
                max_bytes,
                bytes,
                metrics,
            },
            Drainer { close, worker },
        )
    }

    pub fn try_enqueue(&self, event: Event, trace: TraceContext) -> Result<(), PublishError> {
        let size = size_of(&event);
        let held = self.bytes.fetch_add(size, Ordering::AcqRel);
        if held.saturating_add(size) > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(PublishError::BufferFull(format!(
                "it holds {held} bytes of events and this one has {size}; the limit is {} bytes",
                self.max_bytes
            )));
        }
        match self.tx.try_send(Job {
            event,
            trace,
            bytes: size,
        }) {
            Ok(()) => {
                self.metrics.async_buffered.inc();
                Ok(())
            }
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => PublishError::BufferFull(format!(
                        "{} events are waiting, the limit",
                        self.capacity
                    )),
                    mpsc::error::TrySendError::Closed(_) => PublishError::ShuttingDown,
                })
            }
        }
    }
}

impl Drainer {
    /// Stops taking events, stores what is buffered until `deadline`, and drops the rest.
    pub async fn drain(self, grace: Duration) {
        let deadline = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(Instant::now);
        self.close.send_replace(Some(deadline));
        // The worker watches the deadline itself; the margin only guards against a stuck publish.
        let _ =
            tokio::time::timeout(grace.saturating_add(Duration::from_secs(1)), self.worker).await;
    }
}

async fn worker(
    broker: Broker,
    mut rx: mpsc::Receiver<Job>,
    mut close: watch::Receiver<Option<Instant>>,
    bytes: Arc<AtomicU64>,
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
        let (broker, metrics, close, bytes) = (
            broker.clone(),
            metrics.clone(),
            close.clone(),
            bytes.clone(),
        );
        tasks.spawn(async move {
            let size = job.bytes;
            store(&broker, job, &close, &metrics).await;
            bytes.fetch_sub(size, Ordering::AcqRel);
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
                if deadline
                    .is_some_and(|d| Instant::now().checked_add(delay).is_none_or(|t| t >= d))
                {
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
