//! What herald's processes share to run, apart from what they decide (`herald-core`) and which
//! broker they use (`herald-jetstream`): the sidecar and the control plane are both built on it.
//!
//! # Layout
//! - [`http_server`]: the accept loop every listener shares, bounded ([`listeners`] reads the
//!   bounds from flags): connection cap, header and idle timeout, head size, graceful drain.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, and the client `herald wait` uses.
//! - [`shutdown`]: the drain signal (SIGTERM, SIGINT, or a request), with child signals.
//! - [`watch`]: file changes, the kubelet's `..data` swap included.
//! - [`logging`]: text or JSON logs. [`labels`]: lower snake case Prometheus label values.
//! - [`cli`]: command-line parsing with herald's exit codes. [`ports`]: the ports file a process
//!   started on port 0 writes once it listens.

pub mod admin;
pub mod cli;
pub mod http_server;
pub mod labels;
pub mod listeners;
pub mod logging;
pub mod ports;
pub mod shutdown;
pub mod watch;
