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

/// The console's limits (`--console-listen`; docs/CONSOLE.md). It is reached through
/// `kubectl port-forward` or a Service, and every request needs a token the apiserver accepts, but
/// what an authenticated user sends is still outside input.
pub mod console {
    use std::time::Duration;

    /// Open connections of the console listener; more are closed at once.
    pub const MAX_CONNECTIONS: usize = 64;
    /// The largest request body (a Subscription, a sign-in, a CESQL expression).
    pub const MAX_BODY_BYTES: usize = 64 << 10;
    /// The longest bearer token accepted (ServiceAccount tokens are about 1 KiB; OIDC tokens with
    /// many groups a few).
    pub const MAX_TOKEN_BYTES: usize = 16 << 10;
    /// A TokenReview's answer is reused this long.
    pub const TOKEN_TTL: Duration = Duration::from_secs(30);
    /// A SubjectAccessReview's answer is reused this long: a removed RoleBinding stops working
    /// within it.
    pub const DECISION_TTL: Duration = Duration::from_secs(10);
    /// Cached reviews of each kind; beyond it the cache is emptied (reviews cost, memory does not
    /// grow).
    pub const MAX_CACHED: usize = 10_000;
    /// Open browser sessions; sign-ins beyond it are refused until one ends.
    pub const MAX_SESSIONS: usize = 1_000;
    /// A session ends this long after sign-in, and after this long unused.
    pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
    pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
    /// Dead letters read (newest first) to list one subscription's: each is one request to
    /// JetStream. The answer says when the stream holds older ones that were not read.
    pub const MAX_DEADLETTER_SCAN: u64 = 5_000;
    /// Dead letters replayed by one request.
    pub const MAX_REPLAY: usize = 1_000;
    /// A sample event's data shown by the console is cut here.
    pub const MAX_SHOWN_DATA_BYTES: usize = 64 << 10;
}

/// The limits of EventSchedules and KubernetesSources (docs/SOURCES.md). Their specs are written
/// by anyone who may create them in a namespace.
pub mod sources {
    /// The data of a schedule's event (the resource itself is limited by the apiserver to about
    /// 1.5 MB).
    pub const MAX_SCHEDULE_DATA_BYTES: usize = 64 << 10;
    /// Extension attributes of a schedule or a source.
    pub const MAX_EXTENSIONS: usize = 32;
    /// Resources one KubernetesSource watches (the schema says it too).
    pub const MAX_RESOURCES: usize = 16;
    /// Objects one resource of a KubernetesSource may match; beyond it the source is
    /// `Ready=False` (`TooManyObjects`): its checkpoint holds every object's uid, name and version.
    pub const MAX_OBJECTS: usize = 10_000;
    /// The checkpoint of one source, under the NATS default payload limit of 1 MiB.
    pub const MAX_CHECKPOINT_BYTES: usize = 900 << 10;
}
