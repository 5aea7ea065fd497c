//! herald's sidecar: the localhost CloudEvents publish API in front of the broker, delivery to the
//! app, and the `herald` command line. What herald decides lives in `herald-core`, the broker in
//! `herald-jetstream`, what processes share in `herald-runtime`; this crate is the sidecar's own
//! flows, and nothing else depends on it.
//!
//! # Layout
//! By flow:
//! - [`publish`]: app → broker. The API (routes, body limits, content modes, durability, the one
//!   place errors become HTTP responses), the async buffer, the error kinds.
//! - [`deliver`]: broker → app. Leasing within max in flight, attribute filters, the HTTP attempt
//!   ([`deliver::attempt`]), the retry budget, dead letters ([`deliver::deadletter`]), drain.
//! - [`config`]: flags and variables → the pod's configuration; [`config::live`] keeps it live
//!   (annotations file, cluster defaults and resource subscriptions from the bucket:
//!   [`config::defaults`]).
//! - [`dispatch`]: `herald dispatch`, the same delivery engine for subscriptions to sinks
//!   (Services without a sidecar), run by the control plane.
//!
//! Around them:
//! - [`serve`]: process wiring (the one place that picks the broker) and exit codes;
//!   [`readiness`]: what `/readyz` says; [`metrics`]: what is measured.
//! - [`cli`]: the command line and its dispatch; `stream info`, `deadletter`.
//!
//! `herald bench` is a subcommand of the binary, built from `herald-bench`.

pub mod cli;
pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod metrics;
pub mod publish;
pub mod readiness;
pub mod serve;
