//! The shutdown window: after SIGTERM the publish API stays up while the app may still publish.
//!
//! On Kubernetes 1.28 the kubelet sends SIGTERM to the app and to its native sidecar at the same
//! moment (1.29 and later stop sidecars after the app's containers have exited), and an app that
//! publishes from its own shutdown handler must still find the sidecar answering. So at SIGTERM
//! the sidecar turns unready and stops taking deliveries at once, but closes the publish API only
//! at the first of:
//! - **the app is gone**: nothing else in the pod holds a TCP socket (below);
//! - **the app says it is done**: `POST /shutdown`;
//! - **the window has passed**: `herald.dev/shutdown-window` (default 10 s in a pod).
//!
//! "Nothing else holds a socket": the containers of a pod share one network namespace, so
//! `/proc/net/tcp` and `/proc/net/tcp6` list the app's sockets beside the sidecar's. A socket is
//! the sidecar's when its inode is one of `/proc/self/fd`'s; one with inode 0 belongs to no
//! process any more (TIME_WAIT, a connection its process left behind). Any other socket in a live
//! state (listening, connected, connecting, closing) means another process of the pod is still
//! there. Two checks 100 ms apart must agree. An app with no TCP socket at all looks gone at once:
//! such an app (a batch job) has exited before its sidecar is stopped. Where `/proc` cannot be
//! read, or outside a pod (the host's namespace always has other sockets), the window runs to its
//! end; another sidecar in the pod (a service mesh proxy) keeps it open to its end too.

use std::collections::HashSet;
use std::time::Duration;

use herald_runtime::shutdown::Shutdown;

/// Time between two looks at the pod's sockets.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Looks in a row that must find no other socket.
const GONE_AFTER: u32 = 2;

/// How the window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// No other process of the pod holds a socket.
    AppGone,
    /// `POST /shutdown`.
    AppDone,
    /// The window passed.
    Elapsed,
}

impl End {
    pub fn describe(self) -> &'static str {
        match self {
            End::AppGone => "the app is gone",
            End::AppDone => "the app asked for the shutdown",
            End::Elapsed => "the shutdown window has passed",
        }
    }
}

/// Waits for the app to be gone, for `done`, or for `window`, whichever comes first.
pub async fn wait(window: Duration, done: &Shutdown) -> End {
    wait_with(window, done, others_present).await
}

/// [`wait`] with `present` telling whether the app is there (`None`: cannot tell).
async fn wait_with(
    window: Duration,
    done: &Shutdown,
    mut present: impl FnMut() -> Option<bool>,
) -> End {
    let deadline = tokio::time::Instant::now() + window;
    let mut empty = 0;
    loop {
        if present() == Some(false) {
            empty += 1;
            if empty >= GONE_AFTER {
                return End::AppGone;
            }
        } else {
            empty = 0;
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = tokio::time::sleep_until(deadline) => return End::Elapsed,
            _ = done.wait() => return End::AppDone,
        }
    }
}

/// Whether a process other than this one holds a live TCP socket in this network namespace;
/// `None` when it cannot be told.
fn others_present() -> Option<bool> {
    let mut tables = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(path) {
            Ok(t) => tables.push(t),
            // A kernel without IPv6 has no tcp6.
            Err(_) if path.ends_with('6') => {}
            Err(_) => return None,
        }
    }
    let own = own_sockets().ok()?;
    Some(foreign_sockets(&tables, &own))
}

/// The inodes of this process's sockets.
fn own_sockets() -> std::io::Result<HashSet<u64>> {
    let mut own = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse().ok())
        {
            own.insert(inode);
        }
    }
    Ok(own)
}

/// Whether the `/proc/net/tcp`-format `tables` hold a live socket owned by a process whose sockets
/// are not `own`. Lines that do not parse are skipped (the kernel's format, but read defensively).
fn foreign_sockets(tables: &[String], own: &HashSet<u64>) -> bool {
    tables.iter().flat_map(|t| t.lines().skip(1)).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(state), Some(inode)) = (fields.get(3), fields.get(9)) else {
            return false;
        };
        let Ok(inode) = inode.parse::<u64>() else {
            return false;
        };
        // 06 TIME_WAIT and 07 CLOSE hold no process; inode 0: nobody owns it any more.
        inode != 0 && !matches!(*state, "06" | "07") && !own.contains(&inode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn table(rows: &[(&str, u64)]) -> String {
        let mut t = String::from(HEADER);
        for (i, (state, inode)) in rows.iter().enumerate() {
            t.push_str(&format!(
                "\n   {i}: 0100007F:203A 00000000:0000 {state} 00000000:00000000 00:00000000 00000000 65532        0 {inode} 1 0000000000000000 100 0 0 10 0"
            ));
        }
        t
    }

    #[test]
    fn only_live_sockets_of_other_processes_count() {
        let own = HashSet::from([100, 101]);
        // The sidecar's listener and NATS connection only.
        assert!(!foreign_sockets(
            &[table(&[("0A", 100), ("01", 101)])],
            &own
        ));
        // Left behind by an app that exited: TIME_WAIT, and orphaned with inode 0.
        assert!(!foreign_sockets(
            &[table(&[("06", 0), ("04", 0), ("08", 0)])],
            &own
        ));
        // The app's listener, in either table.
        assert!(foreign_sockets(&[table(&[("0A", 200)])], &own));
        assert!(foreign_sockets(
            &[table(&[("01", 100)]), table(&[("01", 300)])],
            &own
        ));
        // A closing socket its process still holds.
        assert!(foreign_sockets(&[table(&[("08", 400)])], &own));
        // Garbage is skipped, not trusted.
        assert!(!foreign_sockets(
            &["header\n garbage\n 0: x y 0A z".into()],
            &own
        ));
    }

    #[test]
    fn this_process_sees_its_own_sockets() {
        // Where /proc is there: a listener of this test is this process's own.
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let own = own_sockets().expect("/proc/self/fd");
        assert!(!own.is_empty());
        drop(listener);
    }

    /// A scripted presence: each look takes the next answer, the last one repeats.
    fn script(answers: &'static [Option<bool>]) -> impl FnMut() -> Option<bool> {
        let mut i = 0;
        move || {
            let a = answers[i.min(answers.len() - 1)];
            i += 1;
            a
        }
    }

    async fn timed(
        window: Duration,
        done: &Shutdown,
        answers: &'static [Option<bool>],
    ) -> (End, Duration) {
        let started = tokio::time::Instant::now();
        let end = wait_with(window, done, script(answers)).await;
        (end, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_ends_at_the_first_of_app_gone_app_done_and_its_end() {
        let done = Shutdown::new();
        let secs = Duration::from_secs;
        // The app holds its sockets throughout: the whole window.
        assert_eq!(
            timed(secs(3), &done, &[Some(true)]).await,
            (End::Elapsed, secs(3))
        );
        // Cannot tell (no /proc): the whole window.
        assert_eq!(
            timed(secs(3), &done, &[None]).await,
            (End::Elapsed, secs(3))
        );
        // Gone at the third look, confirmed at the fourth.
        assert_eq!(
            timed(secs(3), &done, &[Some(true), Some(true), Some(false)]).await,
            (End::AppGone, Duration::from_millis(300))
        );
        // One empty look is not enough.
        assert_eq!(
            timed(
                secs(3),
                &done,
                &[Some(false), Some(true), Some(false), Some(false)]
            )
            .await,
            (End::AppGone, Duration::from_millis(300))
        );
        // No window: closed at once.
        assert_eq!(
            timed(Duration::ZERO, &done, &[Some(true)]).await,
            (End::Elapsed, Duration::ZERO)
        );
        done.trigger();
        assert_eq!(
            timed(secs(3), &done, &[Some(true)]).await,
            (End::AppDone, Duration::ZERO)
        );
    }
}
