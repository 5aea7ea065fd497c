//! Every limit of the control plane on what reaches it from outside, in one place. The webhook
//! listens on all interfaces behind a Service, so any pod of the cluster can open connections to
//! it; and every pod creation in the cluster brings it a pod's annotations to validate. The
//! annotation contract's own limits (value sizes, subscriptions per pod, durations, CESQL length
//! and depth) are the sidecar's, [`herald_core::limits`], so a pod the webhook admits is a pod
//! the sidecar runs. docs/SECURITY.md lists them all.

use std::time::Duration;

pub use herald_core::limits::{
    DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    MAX_REQUEST_HEAD_BYTES, MAX_REQUEST_HEADERS,
};

/// Default open connections of the webhook; more are closed at once. The apiserver keeps a few
/// per replica; the rest of the budget is for whatever else connects.
pub const DEFAULT_WEBHOOK_MAX_CONNECTIONS: usize = 256;
/// The largest AdmissionReview read: the apiserver's own request limit is 3 MiB, so nothing the
/// apiserver sends is larger.
pub const MAX_ADMISSION_BODY_BYTES: usize = 3 << 20;
/// AdmissionReviews read and decided at once; others wait for a slot (within their body
/// timeout). Bounds the memory bodies can take: at most this many times the body limit.
pub const MAX_CONCURRENT_ADMISSIONS: usize = 16;
/// A client that has not finished its TLS handshake by then is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
