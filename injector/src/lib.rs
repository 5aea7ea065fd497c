//! herald's control plane: the mutating admission webhook that adds the herald sidecar to pods
//! annotated `herald.dev/inject: "true"`, the stream controller (the `EventStream` resource,
//! run by one leader-elected replica), and the `herald-injector` binary around both.
//!
//! # Layout
//! - [`mutate`]: the decision and the JSON Patch, a pure function of the pod, what was looked up
//!   about it, and the injector's configuration (sidecar container, volumes, `HERALD_URL`,
//!   namespace defaults, warnings, denials).
//! - [`appid`]: the workload's app id, derived from the annotation, the owner, labels or names.
//! - [`review`]: the `admission.k8s.io/v1` AdmissionReview envelope around `mutate`.
//! - [`webhook`]: `POST /mutate` over HTTPS: lookups, answer, metrics and logs.
//! - [`cluster`]: the Kubernetes API lookups (a Job's CronJob, namespace defaults, the native
//!   sidecar probe), cached and bounded in time.
//! - [`crd`]: the `EventStream` custom resource (stream policy, delivery defaults, status) and
//!   its mapping to the sidecar's [`herald_sidecar::streams::StreamPolicy`].
//! - [`reconcile`]: the stream half of the controller: `HERALD` and `HERALD_DLQ` brought in
//!   line with an `EventStream`, and its status (conditions, usage) from what JetStream holds.
//! - [`inventory`]: from listed workloads and pods to what is subscribed and which pods missed
//!   their sidecar (pure, unit-tested).
//! - [`controller`]: the leader-elected pass: EventStream status and Events, delivery defaults
//!   to the sidecars' key-value bucket, missed injections, orphan consumers.
//! - [`tls`]: rustls (ring) with a certificate reloaded when its files change.
//! - [`limits`]: every limit on what reaches the control plane (connections, timeouts, body
//!   sizes); the annotation contract's limits are the sidecar's.
//! - [`config`]: flags and `HERALD_*` variables; [`metrics`]: what is measured; [`app`]:
//!   wiring, readiness and the drain.
//!
//! Annotation parsing and validation is the sidecar's own
//! ([`herald_sidecar::subscribe`]), so a pod the webhook admits is a pod the sidecar accepts.

pub mod app;
pub mod appid;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod crd;
pub mod inventory;
pub mod limits;
pub mod metrics;
pub mod mutate;
pub mod reconcile;
pub mod review;
pub mod tls;
pub mod webhook;
