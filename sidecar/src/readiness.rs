//! The sidecar's readiness, which `/readyz` of the admin API ([`herald_runtime::admin`]) reports:
//! the broker connected, the events stream there, and every subscription's consumer bound; else
//! `503` with the reason.
//!
//! What it costs the broker: the connection state is read locally, live; the stream is asked for
//! at start, after every reconnect, when a publish is told the stream is missing
//! ([`Readiness::watch`]), while not ready, and otherwise once a minute (jittered) as a safety
//! net. A ready, idle sidecar makes one request a minute, not one a second.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use herald_core::broker::{BoxFuture, Broker, BrokerError, Pending, Store, StoreError};
use herald_core::wire::Message;
use herald_runtime::admin::{Ready, ReadyState};
use herald_runtime::shutdown::Shutdown;

/// How long a starting sidecar may be not ready before that is a warning.
const STARTUP_QUIET: Duration = Duration::from_secs(10);
/// How often a ready sidecar checks that the stream is still there when nothing said otherwise.
const RECHECK: Duration = Duration::from_secs(60);

/// Readiness, refreshed by [`Readiness::monitor`] and read by `/readyz`.
pub struct Readiness {
    state: ArcSwap<ReadyState>,
    /// Subscriptions whose consumer is not bound yet.
    unbound: std::sync::atomic::AtomicUsize,
    broker: Arc<dyn Broker>,
    stream: String,
    /// Something suggests the stream is gone: check now.
    recheck: tokio::sync::Notify,
}

impl Readiness {
    pub fn new(broker: Arc<dyn Broker>, stream: &str) -> Arc<Self> {
        Arc::new(Readiness {
            state: ArcSwap::from_pointee(ReadyState {
                ready: false,
                reason: "starting".into(),
            }),
            unbound: std::sync::atomic::AtomicUsize::new(0),
            broker,
            stream: stream.to_owned(),
            recheck: tokio::sync::Notify::new(),
        })
    }

    /// The store `publish` uses, reporting a missing stream here so readiness follows at once.
    pub fn watch(self: &Arc<Self>) -> Arc<dyn Store> {
        Arc::new(Watched {
            inner: self.broker.clone(),
            readiness: self.clone(),
        })
    }

    pub fn current(&self) -> ReadyState {
        // The connection state is read live: a lost connection must not wait for the next poll.
        if !self.broker.is_connected() {
            return ReadyState {
                ready: false,
                reason: "NATS is not connected".into(),
            };
        }
        let unbound = self.unbound.load(std::sync::atomic::Ordering::Relaxed);
        let state = self.state.load();
        if state.ready && unbound > 0 {
            return ReadyState {
                ready: false,
                reason: format!("binding {unbound} subscription consumer(s)"),
            };
        }
        state.as_ref().clone()
    }

    /// Readiness waits for this many more consumers to be bound.
    pub fn expect_consumers(&self, n: usize) {
        self.unbound
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// One expected consumer is bound.
    pub fn consumer_bound(&self) {
        self.unbound
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn probe(&self) -> ReadyState {
        if !self.broker.is_connected() {
            return ReadyState {
                ready: false,
                reason: "NATS is not connected".into(),
            };
        }
        match self.broker.stream(&self.stream).await {
            Ok(_) => ReadyState {
                ready: true,
                reason: "ready".into(),
            },
            Err(BrokerError::NoStream(_)) => ReadyState {
                ready: false,
                reason: format!(
                    "stream `{}` does not exist (herald's controller, or `herald dev`, creates it)",
                    self.stream
                ),
            },
            Err(e) => ReadyState {
                ready: false,
                reason: format!("cannot check stream `{}`: {e}", self.stream),
            },
        }
    }

    /// Follows the connection (read locally every second) and checks the stream when there is
    /// reason to (see the module's doc); while not ready, every 25 ms during start-up, then every
    /// 250 ms. Logs each change. A sidecar that is not ready yet while it starts is normal (NATS
    /// answers within milliseconds) and logged at debug level; it becomes a warning when it
    /// lasts [`STARTUP_QUIET`], and any later loss of readiness is one at once.
    pub async fn monitor(self: Arc<Self>, shutdown: Shutdown) {
        let started = std::time::Instant::now();
        let mut been_ready = false;
        let mut warned = false;
        let mut was_connected = false;
        let mut asked = false;
        let mut recheck_at = tokio::time::Instant::now();
        loop {
            let connected = self.broker.is_connected();
            let prev = self.state.load_full();
            let ask = !asked
                || !prev.ready
                || (connected && !was_connected)
                || tokio::time::Instant::now() >= recheck_at;
            was_connected = connected;
            let next = if ask || !connected {
                let next = self.probe().await;
                if connected {
                    asked = true;
                    recheck_at =
                        tokio::time::Instant::now() + crate::deliver::attempt::jitter(RECHECK);
                }
                next
            } else {
                prev.as_ref().clone()
            };
            let changed = *prev != next;
            if changed {
                self.state.store(Arc::new(next.clone()));
            }
            let starting = !been_ready && started.elapsed() < STARTUP_QUIET;
            if next.ready {
                if changed && !been_ready {
                    tracing::info!(after = ?started.elapsed(), "ready");
                } else if changed {
                    tracing::info!("ready");
                }
                been_ready = true;
            } else if starting {
                if changed {
                    tracing::debug!(reason = %next.reason, "not ready yet");
                }
            } else if been_ready && changed {
                tracing::warn!(reason = %next.reason, "not ready");
            } else if changed || !warned {
                tracing::warn!(reason = %next.reason, after = ?started.elapsed(), "still not ready");
                warned = true;
            }
            let wait = match (next.ready, starting) {
                // Ready: only the safety recheck and a reconnect matter here (`current` reads the
                // connection live, and a missing stream wakes this loop at once).
                (true, _) => Duration::from_secs(5),
                (false, true) => Duration::from_millis(25),
                (false, false) => Duration::from_millis(250),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.recheck.notified() => recheck_at = tokio::time::Instant::now(),
                _ = shutdown.wait() => {
                    self.state.store(Arc::new(ReadyState { ready: false, reason: "shutting down".into() }));
                    return;
                }
            }
        }
    }

    /// Resolves once ready (or never, if it never gets there).
    pub async fn wait_ready(&self) {
        while !self.current().ready {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Ready for Readiness {
    fn current(&self) -> ReadyState {
        Readiness::current(self)
    }
}

/// The broker's store, telling readiness when the stream is missing.
struct Watched {
    inner: Arc<dyn Broker>,
    readiness: Arc<Readiness>,
}

impl Store for Watched {
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<Pending, StoreError>> {
        Box::pin(async move {
            match self.inner.send(msg).await {
                Ok(pending) => {
                    let readiness = self.readiness.clone();
                    Ok(Pending(Box::pin(async move {
                        let r = pending.stored().await;
                        if matches!(r, Err(StoreError::NoStream(_))) {
                            readiness.recheck.notify_one();
                        }
                        r
                    })))
                }
                Err(e) => {
                    if matches!(e, StoreError::NoStream(_)) {
                        self.readiness.recheck.notify_one();
                    }
                    Err(e)
                }
            }
        })
    }
}
