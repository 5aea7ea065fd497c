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
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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
}

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
    CannotInject(String),
    Inject(Injection),
    /// Bad annotations: every bad key with its rule.
    Deny(String),
}

#[derive(Debug, Clone)]
pub struct Injection {
    pub patch: json_patch::Patch,
    pub app_id: AppId,
    /// Advice for the person creating the pod (kubectl prints admission warnings).
    pub warnings: Vec<String>,
}

/// Decides and builds the patch. `cronjob` is the CronJob owning the pod's Job, when the caller
/// looked it up.
pub fn mutate(pod: &Pod, cronjob: Option<&str>, cfg: &InjectorConfig) -> Decision {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    match annotations.get(INJECT).map(|v| v.trim()) {
        None | Some("false") => return Decision::Skip,
        _ => {}
    }
    // The same validation the sidecar runs, so a pod is refused at admission rather than
    // crash-looping later. An `inject` value other than true/false is reported here too.
    let pod_config = match subscribe::parse(&annotations) {
        Ok(c) => c,
        Err(errors) => {
            return Decision::Deny(format!("herald annotations are invalid: {errors}"));
        }
    };
    let Some(spec) = &pod.spec else {
        return Decision::CannotInject("the pod has no spec".into());
    };
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if init
        .iter()
        .chain(&spec.containers)
        .any(|c| c.name == SIDECAR_NAME)
    {
        return Decision::AlreadyInjected;
    }
    let Some(app_id) = appid::derive(&pod.metadata, cronjob) else {
        return Decision::CannotInject(
            "no app id: set herald.dev/app-id (the pod has no owner, name, generateName or app.kubernetes.io/name label)"
                .into(),
        );
    };
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == PODINFO_VOLUME)
    {
        return Decision::CannotInject(format!(
            "the pod already has a volume named {PODINFO_VOLUME}"
        ));
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
    let volume = serde_json::to_value(podinfo_volume()).unwrap_or(Value::Null);
    match &spec.volumes {
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]})),
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
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
        Err(e) => Decision::CannotInject(format!("building the patch failed: {e}")),
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
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.sidecar_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["sidecar".into()]),
        env: Some(vec![
            env("HERALD_APP_ID", &app_id.id),
            field("HERALD_NAMESPACE", "metadata.namespace"),
            field("HERALD_POD_NAME", "metadata.name"),
            env("HERALD_NATS_URL", &cfg.nats_url),
            env("HERALD_LOG_FORMAT", "json"),
        ]),
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
        volume_mounts: Some(vec![VolumeMount {
            name: PODINFO_VOLUME.into(),
            mount_path: PODINFO_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        restart_policy: cfg.native_sidecar.then(|| "Always".to_owned()),
        ..Default::default()
    }
}
