//! One drain signal for the whole process: SIGTERM, SIGINT or `POST /shutdown` trigger it, every
//! server and worker watches it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

/// Holds when shutdown was triggered, so every stage of the drain shares one grace period.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Option<Instant>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers shutdown; later calls keep the first time.
    pub fn trigger(&self) {
        self.tx.send_if_modified(|t| {
            if t.is_some() {
                return false;
            }
            *t = Some(Instant::now());
            true
        });
    }

    pub fn is_triggered(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// When shutdown was triggered.
    pub fn triggered_at(&self) -> Option<Instant> {
        *self.tx.borrow()
    }

    /// Resolves once shutdown was triggered (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|v| v.is_some()).await;
    }

    /// A signal that fires with this one and can also be fired alone (one subscription removed by
    /// a reload stops while the rest of the process runs on).
    pub fn child(&self) -> Shutdown {
        let child = Shutdown::new();
        let (parent, c) = (self.clone(), child.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = parent.wait() => c.trigger(),
                _ = c.wait() => {}
            }
        });
        child
    }

    /// Triggers on SIGTERM or SIGINT.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            this.trigger();
        });
        Ok(())
    }
}
