//! herald's injector: the mutating admission webhook that adds the herald sidecar to pods
//! annotated `herald.dev/inject: "true"`.
//!
//! # Layout
//! - [`mutate`]: the decision and the JSON Patch, a pure function of the pod and the injector's
//!   configuration (sidecar container, downward API volume, `HERALD_URL`, warnings, denials).
//! - [`appid`]: the workload's app id, derived from the annotation, the owner, labels or names.
//! - [`review`]: the `admission.k8s.io/v1` AdmissionReview envelope around `mutate`.
//!
//! Annotation parsing and validation is the sidecar's own
//! ([`herald_sidecar::subscribe`]), so a pod the webhook admits is a pod the sidecar accepts.

pub mod appid;
pub mod mutate;
pub mod review;
