//! The injection itself, as a pure function of the pod and the injector's configuration: no I/O,
//! so every fixture and edge case is a plain unit test.
//!
//! The patch only appends: the sidecar goes first in `initContainers` (native sidecar) or in
//! `containers`, the downward API volume is appended to `volumes`, and `HERALD_URL` is appended to
//! each other container's `env`. Lists that are absent are created; nothing already in the pod is
//! replaced or reordered (inserting at index 0 moves the others, it does not change them).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::appid::{self, AppId, Origin};
use herald_sidecar::subscribe::{self, INJECT};

/// Name of the injected container; also how a pod that already has the sidecar is recognized.
pub const SIDECAR_NAME: &str = "herald";
/// The downward API volume with the pod's annotations.
pub const PODINFO_VOLUME: &str = "herald-podinfo";
/// Where the sidecar reads the annotations (`--annotations-file` default is `<this>/annotations`).
pub const PODINFO_DIR: &str = "/etc/herald/podinfo";
/// The publish API every app container is told about.
pub const HERALD_URL: &str = "http://127.0.0.1:8250";
const ADMIN_PORT: i32 = 9250;

/// What the injector adds, besides what it derives from the pod.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    pub sidecar_image: String,
    pub nats_url: String,
    /// An `initContainers` entry with `restartPolicy: Always` (the cluster supports native
    /// sidecars), else a plain container.
    pub native_sidecar: bool,
    pub resources: ResourceRequirements,
    /// A Secret in the pod's namespace holding a NATS credentials file for the sidecar.
    pub nats_credentials: Option<NatsCredentials>,
}

/// A NATS credentials file (JWT and NKey seed, as `nsc` writes it) in a Secret. Secrets are
/// namespaced, so each app namespace holds its own copy under the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsCredentials {
    pub secret: String,
    pub key: String,
}

/// What the webhook looked up in the cluster for this pod.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The CronJob owning the pod's Job.
    pub cronjob: Option<String>,
    /// The namespace's `herald.dev/*` annotations; those in [`NAMESPACE_DEFAULTS`] apply to
    /// pods that do not set them.
    pub namespace_annotations: BTreeMap<String, String>,
}

/// Annotations a namespace can set for all its pods. Identity and subscriptions are per
/// workload, so `app-id`, `app-port`, `subscribe` and `subscriptions` are not among them.
pub const NAMESPACE_DEFAULTS: [&str; 3] = [
    subscribe::MAX_IN_FLIGHT,
    subscribe::PATH,
    subscribe::PUBLISH_ALLOW,
];
/// The volume with the NATS credentials, and where the sidecar reads them.
pub const CREDENTIALS_VOLUME: &str = "herald-nats-credentials";
pub const CREDENTIALS_DIR: &str = "/etc/herald/nats";

impl InjectorConfig {
    /// Requests sized for a sidecar that idles at about 7 MiB; the memory limit leaves room for
    /// the async buffer and a burst of deliveries.
    pub fn default_resources() -> ResourceRequirements {
        let q = |s: &str| Quantity(s.to_owned());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), q("10m")),
                ("memory".to_owned(), q("32Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), q("128Mi"))])),
            ..Default::default()
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Not asked for (no `herald.dev/inject: "true"`): allowed, untouched.
    Skip,
    /// Asked for, and the sidecar is already there (a reinvocation): allowed, untouched.
    AlreadyInjected,
    /// Asked for but impossible; allowed untouched (an outage of herald never blocks a
    /// workload), reported with the reason.
    CannotInject(NotInjected, String),
    Inject(Injection),
    /// Bad annotations: every bad key with its rule.
    Deny(String),
}

/// Why a pod that asked for the sidecar is admitted without it (a metric label).
#[derive(
    Debug, Clone, Copy, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
pub enum NotInjected {
    /// No app id could be derived.
    NoAppId,
    /// A volume of the pod already has one of herald's names.
    VolumeConflict,
    /// The namespace's defaults could not be read.
    NamespaceLookup,
    /// No pod or no spec in the request, or the patch could not be built.
    Malformed,
}

#[derive(Debug, Clone)]
pub struct Injection {
    pub patch: json_patch::Patch,
    pub app_id: AppId,
    /// Advice for the person creating the pod (kubectl prints admission warnings).
    pub warnings: Vec<String>,
}

/// Whether the pod asks for the sidecar at all (so the webhook makes no lookups for the rest).
pub fn wants_injection(pod: &Pod) -> bool {
    asks_for_sidecar(&pod.metadata)
}

/// Whether a pod or pod template with this metadata asks for the sidecar: the controller judges
/// templates and running pods by the same rule as the webhook.
pub fn asks_for_sidecar(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(INJECT))
        .is_some_and(|v| v.trim() != "false")
}

/// Decides and builds the patch.
pub fn mutate(pod: &Pod, ctx: &Context, cfg: &InjectorConfig) -> Decision {
    if !wants_injection(pod) {
        return Decision::Skip;
    }
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut inherited = Vec::new();
    for key in NAMESPACE_DEFAULTS {
        if let Some(v) = ctx.namespace_annotations.get(key)
            && !annotations.contains_key(key)
        {
            annotations.insert(key.to_owned(), v.clone());
            inherited.push((key, v.clone()));
        }
    }
    // The same validation the sidecar runs, so a pod is refused at admission rather than
    // crash-looping later. An `inject` value other than true/false is reported here too.
    let pod_config = match subscribe::parse(&annotations) {
        Ok(c) => c,
        Err(errors) => {
            let problems: Vec<String> = errors
                .0
                .iter()
                .map(|e| {
                    if inherited.iter().any(|(k, _)| *k == e.key) {
                        format!("{e} (set on namespace {namespace})")
                    } else {
                        e.to_string()
                    }
                })
                .collect();
            return Decision::Deny(format!(
                "herald annotations are invalid: {}",
                problems.join("; ")
            ));
        }
    };
    let Some(spec) = &pod.spec else {
        return Decision::CannotInject(NotInjected::Malformed, "the pod has no spec".into());
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if init
        .iter()
        .chain(&spec.containers)
        .any(|c| c.name == SIDECAR_NAME)
    {
        return Decision::AlreadyInjected;
    }
    let Some(app_id) = appid::derive(&pod.metadata, ctx.cronjob.as_deref()) else {
        return Decision::CannotInject(
            NotInjected::NoAppId,
            "no app id: set herald.dev/app-id (the pod has no owner, name, generateName or app.kubernetes.io/name label)"
                .into(),
        );
    };
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == PODINFO_VOLUME || v.name == CREDENTIALS_VOLUME)
    {
        return Decision::CannotInject(
            NotInjected::VolumeConflict,
            format!("the pod already has a volume named {}", v.name),
        );
    }

    let mut ops: Vec<Value> = Vec::new();
    // HERALD_URL first, while the container indices are still the pod's own.
    let url = serde_json::to_value(EnvVar {
        name: "HERALD_URL".into(),
        value: Some(HERALD_URL.into()),
        ..Default::default()
    })
    .unwrap_or(Value::Null);
    for (list, containers) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in containers.iter().enumerate() {
            match &c.env {
                None => ops.push(
                    json!({"op": "add", "path": format!("/spec/{list}/{i}/env"), "value": [url]}),
                ),
                Some(env) if env.iter().any(|e| e.name == "HERALD_URL") => {}
                Some(_) => ops.push(
                    json!({"op": "add", "path": format!("/spec/{list}/{i}/env/-"), "value": url}),
                ),
            }
        }
    }
    let mut volumes = vec![podinfo_volume()];
    if let Some(creds) = &cfg.nats_credentials {
        volumes.push(credentials_volume(creds));
    }
    for (i, volume) in volumes.iter().enumerate() {
        let volume = serde_json::to_value(volume).unwrap_or(Value::Null);
        if i == 0 && spec.volumes.is_none() {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    }
    // Namespace defaults become pod annotations, so the sidecar reads them from the downward
    // API like the pod's own (and a later change of the namespace does not change running pods).
    for (key, value) in &inherited {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", escape_pointer(key)),
            "value": value,
        }));
    }
    let sidecar = serde_json::to_value(sidecar(&app_id, cfg)).unwrap_or(Value::Null);
    // First, so it is running before anything that may publish (migrations in init containers
    // included, for a native sidecar).
    let list = if cfg.native_sidecar {
        "initContainers"
    } else {
        "containers"
    };
    let absent = cfg.native_sidecar && spec.init_containers.is_none();
    if absent {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
    } else {
        ops.push(json!({"op": "add", "path": format!("/spec/{list}/0"), "value": sidecar}));
    }

    let mut warnings = Vec::new();
    let runs_to_completion = matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure"))
        || appid::controlling_job(&pod.metadata).is_some();
    if runs_to_completion && !cfg.native_sidecar {
        warnings.push(format!(
            "herald: this cluster has no native sidecars, so the herald sidecar is a plain container: the app must POST {HERALD_URL}/shutdown when it is done, or the pod never completes"
        ));
    }
    if app_id.origin == Origin::Job {
        warnings.push(format!(
            "herald: app id `{}` comes from the Job name; if the Job is one run of a CronJob, set herald.dev/app-id so every run shares one identity",
            app_id.id
        ));
    }
    if pod_config.app_port.is_some() && pod_config.subscriptions.is_empty() {
        warnings.push(
            "herald: herald.dev/app-port is set but nothing is subscribed (herald.dev/subscribe or herald.dev/subscriptions)".into(),
        );
    }
    match serde_json::from_value::<json_patch::Patch>(Value::Array(ops)) {
        Ok(patch) => Decision::Inject(Injection {
            patch,
            app_id,
            warnings,
        }),
        Err(e) => Decision::CannotInject(
            NotInjected::Malformed,
            format!("building the patch failed: {e}"),
        ),
    }
}

/// A JSON Pointer token (RFC 6901): `~` is `~0` and `/` is `~1`, so `herald.dev/path` is
/// `herald.dev~1path`.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn credentials_volume(creds: &NatsCredentials) -> Volume {
    Volume {
        name: CREDENTIALS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(creds.secret.clone()),
            items: Some(vec![KeyToPath {
                key: creds.key.clone(),
                path: "nats.creds".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn podinfo_volume() -> Volume {
    Volume {
        name: PODINFO_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "annotations".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sidecar(app_id: &AppId, cfg: &InjectorConfig) -> Container {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(if path == "/readyz" { 5 } else { 10 }),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let mut env_vars = vec![
        env("HERALD_APP_ID", &app_id.id),
        field("HERALD_NAMESPACE", "metadata.namespace"),
        field("HERALD_POD_NAME", "metadata.name"),
        env("HERALD_NATS_URL", &cfg.nats_url),
        env("HERALD_LOG_FORMAT", "json"),
    ];
    let mut mounts = vec![VolumeMount {
        name: PODINFO_VOLUME.into(),
        mount_path: PODINFO_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    if cfg.nats_credentials.is_some() {
        env_vars.push(env(
            "HERALD_NATS_CREDS",
            &format!("{CREDENTIALS_DIR}/nats.creds"),
        ));
        mounts.push(VolumeMount {
            name: CREDENTIALS_VOLUME.into(),
            mount_path: CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.sidecar_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["sidecar".into()]),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("herald-admin".into()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Liveness and startup only need the process to serve; readiness also needs NATS and the
        // stream, which must not hold the app back from starting (it gets 503s until then).
        startup_probe: Some(Probe {
            period_seconds: Some(1),
            ..probe("/healthz", 30)
        }),
        liveness_probe: Some(probe("/healthz", 3)),
        readiness_probe: Some(probe("/readyz", 3)),
        resources: Some(cfg.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        restart_policy: cfg.native_sidecar.then(|| "Always".to_owned()),
        // A plain container has no startup ordering of its own: the kubelet starts containers in
        // order and waits for each postStart hook, so this hook holds the app back until the
        // sidecar serves, as a native sidecar's startup probe does.
        lifecycle: (!cfg.native_sidecar).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "herald".into(),
                        "wait".into(),
                        "--timeout".into(),
                        "60s".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
