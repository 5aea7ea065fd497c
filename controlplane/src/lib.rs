//! herald's control plane: the mutating admission webhook that adds the herald sidecar to pods
//! annotated `herald.dev/inject: "true"`, and the stream controller (the `EventStream` resource,
//! run by one leader-elected replica), with the `herald-controlplane` binary around both
//! (`herald-injector`, its name in earlier releases, is kept as an alias for one release).
//!
//! # Layout
//! - [`webhook`]: `POST /mutate` over HTTPS: the pure decision and JSON Patch
//!   ([`webhook::mutate`]), the app id ([`webhook::appid`]), the AdmissionReview envelope
//!   ([`webhook::review`]), the Kubernetes lookups ([`webhook::lookups`]: a Job's CronJob,
//!   namespace defaults, the native sidecar probe), the reloaded certificate ([`webhook::tls`]).
//! - [`controller`]: the leader-elected pass: the `EventStream` resource ([`controller::crd`]),
//!   both streams reconciled through the broker seam ([`controller::reconcile`]), what the
//!   workloads subscribe to and which pods missed their sidecar ([`controller::inventory`], pure),
//!   read through reflectors ([`controller::watch`]), delivery defaults to the sidecars' bucket,
//!   orphan consumers, Events; herald's `Subscription` ([`controller::subscription`]) and Kyma's
//!   ([`controller::kyma`]), routed ([`controller::routing`], pure) and applied
//!   ([`controller::resources`]).
//! - [`sources`]: internal events, published by the leader: `EventSchedule` (cron) and
//!   `KubernetesSource` (changes of Kubernetes objects, read as a ServiceAccount).
//! - [`console`]: the web console and its JSON API (`--console-listen`): sign-in with Kubernetes
//!   tokens, every action authorised with SubjectAccessReview, triggers (Subscriptions), dead
//!   letters and their replay, streams.
//! - [`config`]: flags and `HERALD_*` variables; [`limits`]: every limit on what reaches the
//!   control plane; [`app`]: wiring, readiness and the drain. Each half measures itself
//!   ([`webhook::metrics`], [`controller::metrics`]).
//!
//! The annotation contract, its validation and its limits are `herald-core`'s, the same the
//! sidecar runs, so a pod the webhook admits is a pod the sidecar accepts.

pub mod app;
pub mod config;
pub mod console;
pub mod controller;
pub mod limits;
pub mod sources;
pub mod webhook;
