//! herald's sidecar: the localhost CloudEvents publish API in front of NATS JetStream, and the
//! `herald` command line built on it.
//!
//! # Layout
//! A request travels top to bottom:
//! - [`http_server`]: the accept loop shared by both listeners (keep-alive, graceful drain).
//! - [`api`]: the publish API: routes, body limits, content modes, durability, and the one
//!   place errors become HTTP responses.
//! - [`event`]: the CloudEvent model and its decoding from binary, structured and batch mode,
//!   keeping data bytes exact. [`legacy`]: Kyma's `/{app}/v1/events` API on top of it.
//! - [`filter`]: type filters (`order.*.v1`, `shop/order.>`) for the publish allowlist.
//! - [`broker`]: the NATS connection (reconnects forever), JetStream publish with ack, and
//!   NATS failures classified into [`error::PublishError`] kinds. [`subject`]: the reversible
//!   subject encoding. [`buffer`]: the async durability mode.
//! - [`streams`]: stream policy → JetStream config, shared with the controller.
//!
//! Delivery, from JetStream to the app:
//! - [`subscribe`]: the annotation contract (keys, defaults, validation, the downward API file),
//!   shared with the injector.
//! - [`consumer`]: one durable pull consumer per (namespace, app id, filter).
//! - [`attrfilter`]: attribute filters (the Subscriptions API dialects and CESQL), checked on
//!   each event before delivery.
//! - [`defaults`]: the cluster's delivery defaults, from the controller's key-value bucket.
//! - [`deliver`]: pull within max in flight, HTTP delivery (binary or structured), retry budget,
//!   dead letters, drain.
//! - [`live`]: the running subscriptions, and hot reload of the annotations file.
//! - [`deadletter`]: `herald deadletter list|replay`.
//!
//! Around both:
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`; [`metrics`]: what is measured.
//! - [`limits`]: every limit on outside input (events, annotations, listeners, durations), in
//!   one place; docs/SECURITY.md lists them.
//! - [`config`]: flags and `HERALD_*` variables; [`app`]: wiring and exit codes;
//!   [`shutdown`]: the drain signal; [`natsd`]: a throwaway nats-server for `herald dev`
//!   and the tests; [`bench`](mod@bench): `herald bench publish`.

pub mod admin;
pub mod api;
pub mod app;
pub mod attrfilter;
pub mod bench;
pub mod broker;
pub mod buffer;
pub mod config;
pub mod consumer;
pub mod deadletter;
pub mod defaults;
pub mod deliver;
pub mod error;
pub mod event;
pub mod filter;
pub mod http_server;
pub mod legacy;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod natsd;
pub mod shutdown;
pub mod streams;
pub mod subject;
pub mod subscribe;
