//! The injection itself, as a pure function of the pod and the injector's configuration: no I/O,
//! so every fixture and edge case is a plain unit test.
//!
//! The patch only appends: the sidecar goes first in `initContainers` (native sidecar) or in
//! `containers`, the downward API volume is appended to `volumes`, and `HERALD_URL` is appended to
//! each other container's `env`. Lists that are absent are created; nothing already in the pod is
//! replaced or reordered (inserting at index 0 moves the others, it does not change them).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::appid::{self, AppId, Origin};
use herald_core::contract::{self as subscribe, INJECT};

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
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum NotInjected {
    /// No app id could be derived.
    NoAppId,
    /// A volume of the pod already has one of herald's names.
    VolumeConflict,
    /// The namespace's defaults could not be read.
    NamespaceLookup,
    /// No pod or no spec in the request.
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

    let mut ops: Vec<PatchOperation> = Vec::new();
    // HERALD_URL first, while the container indices are still the pod's own.
    let url = to_value(&EnvVar {
        name: "HERALD_URL".into(),
        value: Some(HERALD_URL.into()),
        ..Default::default()
    });
    for (list, containers) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let index = i.to_string();
            match &c.env {
                None => ops.push(add(
                    ["spec", list, &index, "env"],
                    Value::Array(vec![url.clone()]),
                )),
                Some(env) if env.iter().any(|e| e.name == "HERALD_URL") => {}
                Some(_) => ops.push(add(["spec", list, &index, "env", "-"], url.clone())),
            }
        }
    }
    let mut volumes = vec![podinfo_volume()];
    if let Some(creds) = &cfg.nats_credentials {
        volumes.push(credentials_volume(creds));
    }
    for (i, volume) in volumes.iter().enumerate() {
        let volume = to_value(volume);
        if i == 0 && spec.volumes.is_none() {
            ops.push(add(["spec", "volumes"], Value::Array(vec![volume])));
        } else {
            ops.push(add(["spec", "volumes", "-"], volume));
        }
    }
    // Namespace defaults become pod annotations, so the sidecar reads them from the downward
    // API like the pod's own (and a later change of the namespace does not change running pods).
    // The pointer escapes the key's `/` (RFC 6901).
    for (key, value) in &inherited {
        ops.push(add(
            ["metadata", "annotations", &**key],
            Value::String(value.clone()),
        ));
    }
    let sidecar = to_value(&sidecar(&app_id, cfg));
    // First, so it is running before anything that may publish (migrations in init containers
    // included, for a native sidecar).
    let list = if cfg.native_sidecar {
        "initContainers"
    } else {
        "containers"
    };
    let absent = cfg.native_sidecar && spec.init_containers.is_none();
    if absent {
        ops.push(add(["spec", "initContainers"], Value::Array(vec![sidecar])));
    } else {
        ops.push(add(["spec", list, "0"], sidecar));
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
    Decision::Inject(Injection {
        patch: Patch(ops),
        app_id,
        warnings,
    })
}

/// An `add` at the path of these (unescaped) tokens.
fn add<'t>(tokens: impl IntoIterator<Item = &'t str>, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens),
        value,
    })
}

/// A Kubernetes object as JSON. Serializing these types cannot fail (string keys, no maps of
/// other keys, no non-finite floats), so `Null` is unreachable, and the apiserver would reject it.
fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
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
        // Liveness only needs the process to serve; readiness also needs NATS and the stream,
        // which must not hold the app back from starting (it gets 503s until then). No startup
        // probe: the postStart hook below holds the next container back until the sidecar
        // serves, to the millisecond, where a probe would add up to its period.
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
        // The kubelet starts containers in order and does not start the next one (the app, or
        // the next init container) until this one's postStart hook has returned, for a native
        // sidecar and a plain container alike: `herald wait` returns as soon as the sidecar
        // serves (it polls /healthz every 20 ms), so the app starts with its publish API up.
        // A native sidecar also waits for the kubelet's next look at the pod's containers (its
        // 1 s relist) before the app starts; a plain container does not (docs/BENCHMARKS.md).
        lifecycle: Some(Lifecycle {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(native_sidecar: bool) -> InjectorConfig {
        InjectorConfig {
            sidecar_image: "herald:test".into(),
            nats_url: "nats://nats:4222".into(),
            native_sidecar,
            resources: InjectorConfig::default_resources(),
            nats_credentials: None,
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("a valid pod")
    }

    fn orders(spec: Value) -> Pod {
        pod(json!({
            "metadata": {
                "name": "orders-1", "namespace": "shop",
                "annotations": {"herald.dev/inject": "true", "herald.dev/app-id": "orders"},
            },
            "spec": spec,
        }))
    }

    /// The patch, and the pod it makes.
    fn inject(p: &Pod, ctx: &Context, cfg: &InjectorConfig) -> (Patch, Value) {
        let Decision::Inject(injection) = mutate(p, ctx, cfg) else {
            panic!("expected an injection, got {:?}", mutate(p, ctx, cfg));
        };
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, &injection.patch).expect("the patch applies to its pod");
        (injection.patch, doc)
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn absent_lists_are_created_and_present_ones_appended_to() {
        let bare = orders(json!({"containers": [{"name": "app", "image": "app"}]}));
        let (patch, doc) = inject(&bare, &Context::default(), &config(false));
        // Every operation is an add: nothing of the pod is replaced or removed.
        assert!(
            patch
                .0
                .iter()
                .all(|op| matches!(op, PatchOperation::Add(_)))
        );
        assert_eq!(names(&doc["spec"]["containers"]), ["herald", "app"]);
        assert_eq!(
            doc["spec"]["containers"][1]["env"],
            json!([{"name": "HERALD_URL", "value": HERALD_URL}])
        );
        assert_eq!(names(&doc["spec"]["volumes"]), [PODINFO_VOLUME]);

        let busy = orders(json!({
            "containers": [
                {"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}]},
                {"name": "proxy", "image": "proxy", "env": [{"name": "HERALD_URL", "value": "http://elsewhere"}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        let (_, doc) = inject(&busy, &Context::default(), &config(false));
        assert_eq!(
            names(&doc["spec"]["containers"]),
            ["herald", "app", "proxy"]
        );
        assert_eq!(
            doc["spec"]["containers"][1]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "HERALD_URL", "value": HERALD_URL}])
        );
        // A container's own HERALD_URL is its choice.
        assert_eq!(
            doc["spec"]["containers"][2]["env"],
            json!([{"name": "HERALD_URL", "value": "http://elsewhere"}])
        );
        assert_eq!(names(&doc["spec"]["volumes"]), ["data", PODINFO_VOLUME]);
    }

    #[test]
    fn a_native_sidecar_goes_first_in_init_containers() {
        let bare = orders(json!({"containers": [{"name": "app", "image": "app"}]}));
        let (_, doc) = inject(&bare, &Context::default(), &config(true));
        assert_eq!(names(&doc["spec"]["initContainers"]), ["herald"]);
        assert_eq!(doc["spec"]["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(names(&doc["spec"]["containers"]), ["app"]);

        let migrating = orders(json!({
            "initContainers": [{"name": "migrate", "image": "migrate"}],
            "containers": [{"name": "app", "image": "app"}],
        }));
        let (_, doc) = inject(&migrating, &Context::default(), &config(true));
        assert_eq!(names(&doc["spec"]["initContainers"]), ["herald", "migrate"]);
        // The init container that publishes is told where, like the app.
        assert_eq!(
            doc["spec"]["initContainers"][1]["env"][0]["name"],
            "HERALD_URL"
        );
    }

    #[test]
    fn namespace_defaults_become_annotations_with_escaped_pointers() {
        let p = orders(json!({"containers": [{"name": "app", "image": "app"}]}));
        let ctx = Context {
            cronjob: None,
            namespace_annotations: BTreeMap::from([
                (subscribe::MAX_IN_FLIGHT.to_owned(), "4".to_owned()),
                // Per workload: never inherited.
                (subscribe::APP_PORT.to_owned(), "8080".to_owned()),
            ]),
        };
        let (patch, doc) = inject(&p, &ctx, &config(false));
        assert_eq!(
            doc["metadata"]["annotations"][subscribe::MAX_IN_FLIGHT],
            "4"
        );
        assert!(
            doc["metadata"]["annotations"]
                .get(subscribe::APP_PORT)
                .is_none()
        );
        let paths: Vec<String> = patch
            .0
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => a.path.to_string(),
                other => panic!("not an add: {other:?}"),
            })
            .collect();
        assert!(
            paths.contains(&"/metadata/annotations/herald.dev~1max-in-flight".to_owned()),
            "{paths:?}"
        );

        // The pod's own value wins over the namespace's.
        let mut own = p.clone();
        own.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(subscribe::MAX_IN_FLIGHT.into(), "2".into());
        let (_, doc) = inject(&own, &ctx, &config(false));
        assert_eq!(
            doc["metadata"]["annotations"][subscribe::MAX_IN_FLIGHT],
            "2"
        );
    }

    #[test]
    fn a_bad_namespace_default_is_denied_and_named() {
        let p = orders(json!({"containers": [{"name": "app", "image": "app"}]}));
        let ctx = Context {
            cronjob: None,
            namespace_annotations: BTreeMap::from([(
                subscribe::MAX_IN_FLIGHT.to_owned(),
                "lots".to_owned(),
            )]),
        };
        let Decision::Deny(why) = mutate(&p, &ctx, &config(false)) else {
            panic!("expected a denial");
        };
        assert!(why.contains(subscribe::MAX_IN_FLIGHT), "{why}");
        assert!(why.contains("lots"), "{why}");
        assert!(why.contains("(set on namespace shop)"), "{why}");
    }

    #[test]
    fn what_is_not_injected_and_why() {
        let cfg = config(false);
        let ctx = Context::default();
        let plain =
            pod(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "app"}]}}));
        assert!(matches!(mutate(&plain, &ctx, &cfg), Decision::Skip));

        let opted_out = pod(json!({
            "metadata": {"name": "x", "annotations": {"herald.dev/inject": "false"}},
            "spec": {"containers": [{"name": "app"}]},
        }));
        assert!(matches!(mutate(&opted_out, &ctx, &cfg), Decision::Skip));

        let again = orders(json!({"containers": [{"name": "herald"}, {"name": "app"}]}));
        assert!(matches!(
            mutate(&again, &ctx, &cfg),
            Decision::AlreadyInjected
        ));

        let clash = orders(json!({
            "containers": [{"name": "app"}],
            "volumes": [{"name": PODINFO_VOLUME, "emptyDir": {}}],
        }));
        assert!(matches!(
            mutate(&clash, &ctx, &cfg),
            Decision::CannotInject(NotInjected::VolumeConflict, _)
        ));

        let anonymous = pod(json!({
            "metadata": {"annotations": {"herald.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app"}]},
        }));
        assert!(matches!(
            mutate(&anonymous, &ctx, &cfg),
            Decision::CannotInject(NotInjected::NoAppId, _)
        ));

        let specless =
            pod(json!({"metadata": {"name": "x", "annotations": {"herald.dev/inject": "true"}}}));
        assert!(matches!(
            mutate(&specless, &ctx, &cfg),
            Decision::CannotInject(NotInjected::Malformed, _)
        ));
    }

    #[test]
    fn credentials_are_mounted_from_the_secret() {
        let mut cfg = config(true);
        cfg.nats_credentials = Some(NatsCredentials {
            secret: "nats-creds".into(),
            key: "user.creds".into(),
        });
        let p = orders(
            json!({"containers": [{"name": "app"}], "volumes": [{"name": "data", "emptyDir": {}}]}),
        );
        let (_, doc) = inject(&p, &Context::default(), &cfg);
        assert_eq!(
            names(&doc["spec"]["volumes"]),
            ["data", PODINFO_VOLUME, CREDENTIALS_VOLUME]
        );
        assert_eq!(
            doc["spec"]["volumes"][2]["secret"]["secretName"],
            "nats-creds"
        );
        let mounts = &doc["spec"]["initContainers"][0]["volumeMounts"];
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == CREDENTIALS_VOLUME),
            "{mounts}"
        );
    }

    #[test]
    fn run_to_completion_pods_without_native_sidecars_are_warned() {
        let job = orders(json!({"restartPolicy": "Never", "containers": [{"name": "app"}]}));
        let Decision::Inject(plain) = mutate(&job, &Context::default(), &config(false)) else {
            panic!("expected an injection");
        };
        assert!(
            plain.warnings.iter().any(|w| w.contains("/shutdown")),
            "{:?}",
            plain.warnings
        );
        let Decision::Inject(native) = mutate(&job, &Context::default(), &config(true)) else {
            panic!("expected an injection");
        };
        assert!(native.warnings.is_empty(), "{:?}", native.warnings);
    }
}
