//! Every AdmissionReview captured from kube-apiserver v1.28 (tests/fixtures/admission, see its
//! README) through the injector: the response is serialized as it goes on the wire, its patch is
//! applied to the request's pod with json-patch, and the result is checked as a typed `Pod`.

//! Every AdmissionReview captured from kube-apiserver v1.28 (tests/fixtures/admission, see its
//! README) sent to the injector over real HTTPS, as the apiserver sends it: the response's patch
//! is applied to the request's pod with json-patch, and the result is checked as a typed `Pod`.
//! The Kubernetes API behind the lookups is scripted ([`MockApi::fixtures`]).

mod common;

use std::path::PathBuf;

use common::{MockApi, Server, config, fixture};
use herald_controlplane::webhook::mutate::{
    HERALD_URL, InjectorConfig, PODINFO_VOLUME, SIDECAR_NAME,
};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

/// The answer as the apiserver reads it.
struct Answer {
    allowed: bool,
    message: String,
    warnings: Vec<String>,
    /// The request's pod with the patch applied (the pod itself when there is no patch).
    pod: Pod,
    patched: bool,
    uid_echoed: bool,
}

/// Sends a fixture's exact wire bytes (`raw/`) to a webhook started with `cfg`.
async fn run_with(name: &str, cfg: InjectorConfig, api: &MockApi) -> Answer {
    let server = Server::start(cfg, api).await;
    let raw = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission/raw")
        .join(format!("{name}.json"));
    let body = std::fs::read(&raw).unwrap_or_else(|e| panic!("{}: {e}", raw.display()));
    let (status, answer) = server
        .post("/mutate?timeout=10s", "application/json", body.clone())
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    decode(&body, &answer)
}

async fn run(name: &str, native: bool) -> Answer {
    run_with(name, config(native), &MockApi::fixtures()).await
}

/// Reads the AdmissionReview answer to `request` as the apiserver does, and applies its patch.
fn decode(request: &[u8], answer: &[u8]) -> Answer {
    let wire: Value = serde_json::from_slice(answer).unwrap();
    assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(wire["kind"], "AdmissionReview");
    let r = &wire["response"];
    let request: Value = serde_json::from_slice(request).unwrap();
    let mut pod = request["request"]["object"].clone();
    let patched = !r["patch"].is_null();
    if patched {
        assert_eq!(r["patchType"], "JSONPatch");
        // kube-core writes the bytes as an array of numbers, which v1.28 accepts.
        let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the request's pod");
    }
    Answer {
        allowed: r["allowed"].as_bool().unwrap(),
        message: r["status"]["message"].as_str().unwrap_or("").to_owned(),
        warnings: serde_json::from_value(r["warnings"].clone()).unwrap_or_default(),
        pod: serde_json::from_value(pod).expect("the patched pod is a valid Pod"),
        patched,
        uid_echoed: r["uid"] == request["request"]["uid"],
    }
}

fn sidecar(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR_NAME)
        .expect("the sidecar is injected")
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// What every injected pod has, native or not.
fn assert_injected(a: &Answer, app_id: &str, native: bool) {
    assert!(a.allowed && a.patched && a.uid_echoed);
    let spec = a.pod.spec.as_ref().unwrap();
    let s = sidecar(&a.pod);
    assert_eq!(env(s, "HERALD_APP_ID"), Some(app_id));
    assert_eq!(
        env(s, "HERALD_NATS_URL"),
        Some("nats://nats.herald-system:4222")
    );
    let sc = s.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        s.volume_mounts.as_ref().unwrap()[0].mount_path,
        "/etc/herald/podinfo"
    );
    if native {
        let first = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(first.name, SIDECAR_NAME);
        assert_eq!(first.restart_policy.as_deref(), Some("Always"));
    } else {
        assert_eq!(spec.containers[0].name, SIDECAR_NAME);
        assert_eq!(spec.containers[0].restart_policy, None);
    }
    let podinfo = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name == PODINFO_VOLUME)
        .count();
    assert_eq!(podinfo, 1);
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != SIDECAR_NAME)
    {
        assert_eq!(
            env(c, "HERALD_URL"),
            Some(HERALD_URL),
            "container {}",
            c.name
        );
    }
}

#[tokio::test]
async fn controller_pods_get_the_sidecar_with_the_workload_as_app_id() {
    for native in [true, false] {
        for (name, app_id) in [
            ("a-orders", "orders"),
            ("b-ledger", "ledger"),
            ("c-report", "monthly-report"),
            ("d-nightly-manual", "nightly"),
            ("e-debug", "debug"),
            ("f-storefront", "storefront"),
            ("i-unlabelled-ns-if-sent", "stray-sent"),
            ("j-dry-run", "dry-run"),
            ("k-server-side-apply", "applied"),
            ("l-relay-daemonset", "relay"),
        ] {
            let a = run(name, native).await;
            assert_injected(&a, app_id, native);
        }
    }
}

#[tokio::test]
async fn an_existing_complex_spec_is_kept() {
    let before: Value = serde_json::from_slice(&fixture("f-storefront")).unwrap();
    let before: Pod = serde_json::from_value(before["request"]["object"].clone()).unwrap();
    let a = run("f-storefront", true).await;
    let (old, new) = (before.spec.unwrap(), a.pod.spec.clone().unwrap());
    // Init containers: the sidecar first, then `migrate` as it was plus HERALD_URL.
    let init = new.init_containers.unwrap();
    assert_eq!(init.len(), 2);
    let mut migrate = init[1].clone();
    migrate
        .env
        .as_mut()
        .unwrap()
        .retain(|e| e.name != "HERALD_URL");
    assert_eq!(migrate, old.init_containers.unwrap()[0]);
    // App containers unchanged but for the appended HERALD_URL.
    assert_eq!(new.containers.len(), old.containers.len());
    for (n, o) in new.containers.iter().zip(&old.containers) {
        let mut n = n.clone();
        let env = n.env.as_mut().unwrap();
        assert_eq!(env.last().unwrap().name, "HERALD_URL");
        env.pop();
        assert_eq!(&n, o);
    }
    // Volumes appended, the pod security context untouched.
    let volumes = new.volumes.unwrap();
    assert_eq!(&volumes[..volumes.len() - 1], &old.volumes.unwrap()[..]);
    assert_eq!(new.security_context, old.security_context);
    assert_eq!(a.pod.metadata, before.metadata);
}

#[tokio::test]
async fn pods_that_did_not_ask_are_left_alone() {
    for name in ["g-no-inject", "m-plain"] {
        let a = run(name, true).await;
        assert!(a.allowed && !a.patched && a.uid_echoed, "{name}");
    }
}

#[tokio::test]
async fn bad_annotations_are_denied_naming_every_key() {
    let a = run("h-bad-annotations", true).await;
    assert!(!a.allowed && !a.patched && a.uid_echoed);
    for needle in ["herald.dev/app-port", "herald.dev/max-in-flight", "eighty"] {
        assert!(a.message.contains(needle), "{needle}: {}", a.message);
    }
}

/// Posts an edited AdmissionReview; the answer, which must come with 200.
async fn review_answer(server: &Server, review: &Value) -> Value {
    let (status, answer) = server
        .post(
            "/mutate",
            "application/json",
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    serde_json::from_slice(&answer).unwrap()
}

/// A filter that does not parse denies the pod, with the CESQL error and its column; a good one
/// is admitted (and injected).
#[tokio::test]
async fn filters_are_checked_at_admission() {
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    let mut answers = Vec::new();
    for (key, value) in [
        ("herald.dev/filter", "type = 'a' AND region LIKE eu"),
        (
            "herald.dev/subscriptions",
            "- type: order.created.v1\n  filters: [{sql: \"INT(amount) >\"}]\n",
        ),
        (
            "herald.dev/filter",
            "region IN ('eu', 'us') AND INT(amount) > 100",
        ),
    ] {
        let mut review: Value = serde_json::from_slice(&fixture("a-orders")).unwrap();
        let annotations = &mut review["request"]["object"]["metadata"]["annotations"];
        if key == "herald.dev/subscriptions" {
            // One form or the other.
            annotations
                .as_object_mut()
                .unwrap()
                .remove("herald.dev/subscribe");
        }
        annotations[key] = Value::from(value);
        answers.push(review_answer(&server, &review).await["response"].clone());
    }
    assert_eq!(answers[0]["allowed"], false);
    assert_eq!(
        answers[0]["status"]["message"],
        "herald annotations are invalid: herald.dev/filter: is not a valid CESQL expression: \
         column 28: LIKE needs a string literal pattern, found `eu`"
    );
    assert_eq!(answers[1]["allowed"], false);
    assert_eq!(
        answers[1]["status"]["message"],
        "herald annotations are invalid: herald.dev/subscriptions: entry 1 (type \"order.created.v1\"): \
         filters[0].sql: is not a valid CESQL expression: column 14: expected a value, found the end of the expression"
    );
    assert_eq!(answers[2]["allowed"], true);
    assert!(!answers[2]["patch"].is_null(), "{}", answers[2]);
}

#[tokio::test]
async fn a_second_pass_changes_nothing() {
    let once = run("a-orders", true).await;
    let mut review: Value = serde_json::from_slice(&fixture("a-orders")).unwrap();
    review["request"]["object"] = serde_json::to_value(&once.pod).unwrap();
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    let wire = review_answer(&server, &review).await;
    assert_eq!(wire["response"]["allowed"], true);
    assert!(wire["response"]["patch"].is_null());
    assert_eq!(
        server.metric(
            "herald_injector_admissions_total{outcome=\"already_injected\",dry_run=\"false\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn jobs_without_native_sidecars_are_warned() {
    for name in ["c-report", "d-nightly-manual"] {
        let plain = run(name, false).await;
        assert!(
            plain.warnings.iter().any(|w| w.contains("/shutdown")),
            "{name}: {:?}",
            plain.warnings
        );
        let native = run(name, true).await;
        assert!(!native.warnings.iter().any(|w| w.contains("/shutdown")));
    }
    // A Job made from a CronJob takes the CronJob's name (looked up), with no warning.
    let d = run("d-nightly-manual", true).await;
    assert!(!d.warnings.iter().any(|w| w.contains("herald.dev/app-id")));
}

/// The whole injected pod of (a) and (f), native and plain, against files a reviewer can read.
/// `HERALD_UPDATE_GOLDEN=1` rewrites them after an intended change.
#[tokio::test]
async fn injected_pods_match_the_golden_files() {
    for name in ["a-orders", "f-storefront"] {
        for native in [true, false] {
            let pod = run(name, native).await.pod;
            let text = serde_json::to_string_pretty(&pod).unwrap() + "\n";
            let mode = if native { "native" } else { "plain" };
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden")
                .join(format!("{name}.{mode}.json"));
            if std::env::var_os("HERALD_UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (HERALD_UPDATE_GOLDEN=1 writes it)", path.display())
            });
            if text != want {
                let line = text
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(text.lines().count().min(want.lines().count()));
                panic!(
                    "{} differs from line {} on (HERALD_UPDATE_GOLDEN=1 rewrites it after an intended change)",
                    path.display(),
                    line + 1
                );
            }
        }
    }
}
