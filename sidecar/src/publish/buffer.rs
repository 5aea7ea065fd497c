//! The async durability mode (`herald-durability: async`): the API answers `202` once the event is
//! in this bounded in-memory buffer, and a worker stores it in JetStream, retrying transient
//! failures (the `Nats-Msg-Id` makes retries safe). Events still here when the pod dies are lost;
//! that is the contract the app opted into. A full buffer answers `503` with `Retry-After`: full
//! means its event count or its byte budget (data and attributes of what it holds) is reached, so
//! large events cannot grow the sidecar past its memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use herald_core::broker::Store;
use herald_core::event::{Event, TraceContext};
use herald_core::wire;

use crate::metrics::{DropLabels, DropReason, Durability, Metrics, StoredLabels};
use crate::publish::error::PublishError;

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
    held: Arc<Held>,
    metrics: Arc<Metrics>,
}

/// What the buffer holds, from the `202` until the event is stored or dropped: waiting in the
/// channel or being stored (retries included). Both limits apply to all of it.
#[derive(Default)]
struct Held {
    events: AtomicUsize,
    bytes: AtomicU64,
}

impl Held {
    fn release(&self, bytes: u64) {
        self.events.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Owns the worker; [`Drainer::drain`] flushes at shutdown.
pub struct Drainer {
    close: watch::Sender<Option<Instant>>,
    worker: tokio::task::JoinHandle<()>,
}

impl AsyncBuffer {
    pub fn start(
        store: Arc<dyn Store>,
        capacity: usize,
        max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> (AsyncBuffer, Drainer) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = watch::channel(None);
        let held = Arc::new(Held::default());
        let worker = tokio::spawn(
            worker(store, rx, close_rx, held.clone(), metrics.clone())
                .instrument(tracing::info_span!("async_buffer")),
        );
        (
            AsyncBuffer {
                tx,
                capacity,
                max_bytes,
                held,
                metrics,
            },
            Drainer { close, worker },
        )
    }

    pub fn try_enqueue(&self, event: Event, trace: TraceContext) -> Result<(), PublishError> {
        let size = size_of(&event);
        if self.held.events.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.held.events.fetch_sub(1, Ordering::AcqRel);
            return Err(PublishError::BufferFull(format!(
                "{} events are waiting, the limit",
                self.capacity
            )));
        }
        let held = self.held.bytes.fetch_add(size, Ordering::AcqRel);
        if held.saturating_add(size) > self.max_bytes {
            self.held.release(size);
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
                self.held.release(size);
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
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    mut close: watch::Receiver<Option<Instant>>,
    held: Arc<Held>,
    metrics: Arc<Metrics>,
) {
    let permits = Arc::new(Semaphore::new(WORKER_CONCURRENCY));
    let mut tasks = JoinSet::new();
    // Whether the drain has begun. Tracked here rather than read from the deadline: the deadline
    // may be set while this loop is busy, and the channel must be closed all the same.
    let mut closed = false;
    loop {
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = close.changed(), if !closed => {
                // Refuse new events; `recv` still yields the buffered ones, then `None`.
                closed = true;
                rx.close();
                continue;
            }
        };
        let Some(job) = job else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (store, metrics, close, held) =
            (store.clone(), metrics.clone(), close.clone(), held.clone());
        tasks.spawn(
            async move {
                let size = job.bytes;
                store_one(store.as_ref(), job, &close, &metrics).await;
                held.release(size);
                drop(permit);
            }
            .in_current_span(),
        );
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn store_one(
    store: &dyn Store,
    job: Job,
    close: &watch::Receiver<Option<Instant>>,
    metrics: &Metrics,
) {
    let mut delay = Duration::from_millis(50);
    let outcome = loop {
        let sent = async {
            store
                .send(wire::message(&job.event, &job.trace))
                .await?
                .stored()
                .await
        };
        match sent.await.map_err(PublishError::from) {
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
