//! herald's pure core: everything herald decides, with nothing that runs. No async runtime, no
//! NATS client, no HTTP server: the webhook, the controller, the sidecar and the tools all depend
//! on it, and it depends on none of them.
//!
//! # Layout
//! The event and how it is stored:
//! - [`event`]: the CloudEvent model, validated, and its decoding from the HTTP binding (binary,
//!   structured, batch), keeping data bytes exact. [`legacy`]: Kyma's legacy event on top of it.
//! - [`subject`]: the reversible subject encoding. [`wire`]: the stored form (headers of the
//!   NATS binding, the deduplication id) and reading attributes back from it.
//!
//! What a workload asks for:
//! - [`contract`]: the annotation contract (keys, defaults, the YAML form, the downward API
//!   file), validated once for the webhook and the sidecar. [`filter`]: type filters.
//!   [`attrfilter`]: attribute filters (Subscriptions API dialects and CESQL).
//! - [`defaults`]: the cluster's delivery defaults (the configuration bucket's value).
//!   [`sinks`]: subscriptions to sinks, as the dispatcher gets them from the bucket.
//!   [`report`]: a resource subscription's delivery facts, published for its status.
//! - [`delivery`]: how a delivery attempt is classified, the retry budget, dead-letter subjects
//!   and headers, and the HTTP request an event becomes. [`deadletter`]: reading the dead-letter
//!   stream and replaying from it (the CLI's and the console's).
//!
//! What the broker holds, and the seam to it:
//! - [`policy`]: stream policy in herald's terms. [`consumer`]: consumer names and settings.
//! - [`broker`]: the traits herald needs from a broker (store an event durably, lease events of a
//!   subscription, streams and consumers, configuration keys). JetStream implements them in
//!   `herald-jetstream`; an in-memory broker in `herald-membroker` serves unit tests.
//!
//! Around them: [`limits`] (every limit on outside input, in one place; docs/SECURITY.md) and
//! [`settings`] (flags and `HERALD_*` variables, value parsers).

pub mod attrfilter;
pub mod broker;
pub mod consumer;
pub mod contract;
pub mod deadletter;
pub mod defaults;
pub mod delivery;
pub mod event;
pub mod filter;
pub mod legacy;
pub mod limits;
pub mod policy;
pub mod report;
pub mod settings;
pub mod sinks;
pub mod subject;
pub mod wire;
