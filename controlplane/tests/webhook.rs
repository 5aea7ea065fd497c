//! The webhook server beyond the fixtures: certificate reload on a Secret `..data` swap, HTTP
//! errors, dry runs and metrics, namespace defaults, lookups that fail, the native sidecar
//! probe, NATS credentials, and the drain.

mod common;

use std::time::{Duration, Instant};

use common::{MockApi, Pki, Server, config, der, fixture, namespace, not_found, status};
use herald_controlplane::webhook::lookups::Cluster;
use herald_controlplane::webhook::mutate::{CREDENTIALS_VOLUME, NatsCredentials, SIDECAR_NAME};
use herald_tests::KubeletDir;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// Applies the answer's patch to the request's pod.
fn patched(request: &[u8], answer: &[u8]) -> (Value, Pod) {
    let wire: Value = serde_json::from_slice(answer).unwrap();
    let request: Value = serde_json::from_slice(request).unwrap();
    let mut pod = request["request"]["object"].clone();
    if !wire["response"]["patch"].is_null() {
        let bytes: Vec<u8> = serde_json::from_value(wire["response"]["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    (
        wire["response"].clone(),
        serde_json::from_value(pod).unwrap(),
    )
}

async fn mutate(server: &Server, name: &str) -> (Value, Pod) {
    let body = fixture(name);
    let (code, answer) = server
        .post("/mutate", "application/json", body.clone())
        .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    patched(&body, &answer)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[tokio::test]
async fn a_certificate_swap_is_served_to_new_connections_without_dropping_open_ones() {
    let pki = Pki::new("herald test CA");
    let (cert_a, key_a) = pki.issue("first");
    let mut secret = KubeletDir::new(&[("tls.crt", &cert_a), ("tls.key", &key_a)]);
    let (cert_path, key_path) = (secret.path("tls.crt"), secret.path("tls.key"));
    let server = Server::start_with(
        config(true),
        &MockApi::fixtures(),
        pki,
        tempfile::tempdir().unwrap(),
        &cert_path,
        &key_path,
    )
    .await;
    let mut open = server.connect().await;
    assert_eq!(open.server_cert, der(&cert_a));

    // The kubelet swaps `..data` when the Secret changes (cert-manager renewing, the chart
    // upgrading).
    let (cert_b, key_b) = server.pki.issue("second");
    secret.write(&[("tls.crt", &cert_b), ("tls.key", &key_b)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if server.connect().await.server_cert == der(&cert_b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.metric("herald_injector_certificate_reloads_total{result=\"loaded\"}"),
        1.0
    );
    // The connection opened before the swap still serves requests.
    let (code, _) = open
        .post("/mutate", "application/json", fixture("a-orders"))
        .await;
    assert_eq!(code, 200);

    // A pair that does not match (a key from another certificate) is refused; the current one
    // keeps serving.
    let (cert_c, _) = server.pki.issue("third");
    let (_, key_d) = server.pki.issue("fourth");
    secret.write(&[("tls.crt", &cert_c), ("tls.key", &key_d)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("herald_injector_certificate_reloads_total{result=\"rejected\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the bad pair was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connect().await.server_cert, der(&cert_b));
    let (code, _) = server
        .post("/mutate", "application/json", fixture("a-orders"))
        .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    let other = Pki::new("another CA");
    let err = common::Conn::handshake(server.addr, &other.ca)
        .await
        .expect_err("a certificate from another CA must not verify");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn http_errors_name_the_problem() {
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    let mut conn = server.connect().await;
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();

    let (code, body) = conn
        .request(http::Method::GET, "/mutate", "application/json", vec![])
        .await;
    assert_eq!(
        (code, text(body).trim()),
        (405, "method not allowed: use POST")
    );
    let (code, body) = conn.post("/validate", "application/json", vec![]).await;
    assert_eq!(code, 404);
    assert!(text(body).contains("POST /mutate"));
    let (code, body) = conn
        .post("/mutate", "text/plain", fixture("a-orders"))
        .await;
    assert_eq!(code, 415);
    assert!(text(body).contains("application/json"));
    let (code, body) = conn
        .post("/mutate", "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(code, 400);
    assert!(text(body).contains("not an AdmissionReview"));
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    let (code, body) = conn
        .post("/mutate", "application/json", no_request.to_vec())
        .await;
    assert_eq!(code, 400);
    assert!(text(body).contains("no request"));
    // Over the limit: refused before it is parsed.
    let big = vec![b' '; herald_controlplane::limits::MAX_ADMISSION_BODY_BYTES + 1];
    let (code, body) = server.post("/mutate", "application/json", big).await;
    assert_eq!(code, 413);
    assert!(text(body).contains("bytes"));
    assert_eq!(
        server
            .metric("herald_injector_admissions_total{outcome=\"bad_request\",dry_run=\"false\"}"),
        4.0
    );
}

#[tokio::test]
async fn deep_and_long_filters_are_denied_naming_the_limit_and_the_webhook_keeps_serving() {
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    for (filter, message) in common::hostile_filters() {
        let body = common::fixture_with("a-orders", "herald.dev/filter", &filter);
        let (code, answer) = server.post("/mutate", "application/json", body).await;
        assert_eq!(code, 200);
        let wire: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(wire["response"]["allowed"], false);
        let text = wire["response"]["status"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{message:?} not in {text:?}");
    }
    let (resp, pod) = mutate(&server, "a-orders").await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        pod.spec.unwrap().init_containers.unwrap()[0].name,
        SIDECAR_NAME
    );
}

#[tokio::test]
async fn dry_runs_get_the_same_answer_and_are_not_counted_as_injections() {
    let server = Server::start(config(true), &MockApi::fixtures()).await;
    let (resp, pod) = mutate(&server, "j-dry-run").await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(
        pod.spec.unwrap().init_containers.unwrap()[0].name,
        SIDECAR_NAME
    );
    assert_eq!(server.metric("herald_injector_injections_total"), 0.0);
    assert_eq!(
        server.metric("herald_injector_admissions_total{outcome=\"injected\",dry_run=\"true\"}"),
        1.0
    );
    mutate(&server, "a-orders").await;
    assert_eq!(server.metric("herald_injector_injections_total"), 1.0);
    // Pods that did not ask cost no lookup.
    let api = MockApi::fixtures();
    let server = Server::start(config(true), &api).await;
    mutate(&server, "m-plain").await;
    mutate(&server, "g-no-inject").await;
    assert_eq!(api.requests(), Vec::<String>::new());
    assert_eq!(
        server.metric("herald_injector_admissions_total{outcome=\"skipped\",dry_run=\"false\"}"),
        2.0
    );
}

#[tokio::test]
async fn namespace_defaults_become_pod_annotations_unless_the_pod_sets_them() {
    let api = MockApi::new(|_, path, _| {
        if path.starts_with("/api/v1/namespaces/shop") {
            (
                200,
                namespace(
                    "shop",
                    json!({
                        "herald.dev/max-in-flight": "7",
                        "herald.dev/path": "/from-namespace",
                        "herald.dev/publish-allow": "order.>",
                        // Not a namespace default: subscriptions are per workload.
                        "herald.dev/subscribe": "everything.>",
                        "team": "shop",
                    }),
                ),
            )
        } else {
            not_found(path)
        }
    });
    let server = Server::start(config(true), &api).await;
    let (_, pod) = mutate(&server, "a-orders").await;
    assert_eq!(annotation(&pod, "herald.dev/max-in-flight"), Some("7"));
    assert_eq!(
        annotation(&pod, "herald.dev/publish-allow"),
        Some("order.>")
    );
    // The pod's own value wins.
    assert_eq!(annotation(&pod, "herald.dev/path"), Some("/events"));
    assert_eq!(
        annotation(&pod, "herald.dev/subscribe"),
        Some("order.created.v1, payment.>")
    );
    assert_eq!(annotation(&pod, "team"), None);
    // One namespace lookup serves the next pods (cached).
    mutate(&server, "f-storefront").await;
    let lookups = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/shop"))
        .count();
    assert_eq!(lookups, 1, "{:?}", api.requests());
}

#[tokio::test]
async fn a_bad_namespace_default_denies_the_pod_and_says_where_it_is_set() {
    let api = MockApi::new(|_, path, _| {
        if path.starts_with("/api/v1/namespaces/shop") {
            (
                200,
                namespace("shop", json!({"herald.dev/max-in-flight": "lots"})),
            )
        } else {
            not_found(path)
        }
    });
    let server = Server::start(config(true), &api).await;
    let (resp, _) = mutate(&server, "a-orders").await;
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("herald.dev/max-in-flight") && message.contains("(set on namespace shop)"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreadable_namespace_admits_the_pod_without_the_sidecar_and_counts_it() {
    let api = MockApi::new(|_, path, _| status(403, "Forbidden", &format!("cannot get {path}")));
    let server = Server::start(config(true), &api).await;
    let (resp, pod) = mutate(&server, "a-orders").await;
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_null());
    assert!(
        pod.spec
            .unwrap()
            .containers
            .iter()
            .all(|c| c.name != SIDECAR_NAME)
    );
    assert_eq!(
        server.metric("herald_injector_not_injected_total{reason=\"namespace_lookup\"}"),
        1.0
    );
    assert_eq!(
        server.metric("herald_injector_lookup_errors_total{lookup=\"namespace\"}"),
        1.0
    );
    // A dry run of the same is answered the same and not counted.
    mutate(&server, "j-dry-run").await;
    assert_eq!(
        server.metric("herald_injector_not_injected_total{reason=\"namespace_lookup\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_failed_cronjob_lookup_falls_back_to_the_job_name_with_a_warning() {
    let api = MockApi::new(|_, path, _| {
        if path.starts_with("/api/v1/namespaces/") {
            (200, namespace("shop", json!({})))
        } else {
            status(500, "InternalError", "etcd is slow")
        }
    });
    let server = Server::start(config(true), &api).await;
    let (resp, pod) = mutate(&server, "d-nightly-manual").await;
    let sidecar = &pod.spec.unwrap().init_containers.unwrap()[0];
    let app_id = sidecar.env.as_ref().unwrap()[0].value.as_deref();
    assert_eq!(app_id, Some("nightly-manual"));
    let warnings = resp["warnings"].to_string();
    assert!(warnings.contains("herald.dev/app-id"), "{warnings}");
    assert_eq!(
        server.metric("herald_injector_lookup_errors_total{lookup=\"cron_job\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_jobs_cronjob_is_looked_up_once() {
    let api = MockApi::fixtures();
    let server = Server::start(config(true), &api).await;
    for _ in 0..3 {
        mutate(&server, "d-nightly-manual").await;
    }
    let gets: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/jobs/"))
        .collect();
    assert_eq!(
        gets,
        ["GET /apis/batch/v1/namespaces/shop/jobs/nightly-manual"]
    );
}

#[tokio::test]
async fn nats_credentials_come_from_the_named_secret() {
    let mut cfg = config(true);
    cfg.nats_credentials = Some(NatsCredentials {
        secret: "nats-user".into(),
        key: "user.creds".into(),
    });
    let server = Server::start(cfg, &MockApi::fixtures()).await;
    let (_, pod) = mutate(&server, "a-orders").await;
    let spec = pod.spec.unwrap();
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == CREDENTIALS_VOLUME)
        .expect("the credentials volume");
    let secret = volume.secret.unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("nats-user"));
    assert_eq!(secret.items.unwrap()[0].key, "user.creds");
    let sidecar = &spec.init_containers.unwrap()[0];
    let creds = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "HERALD_NATS_CREDS")
        .and_then(|e| e.value.clone());
    assert_eq!(creds.as_deref(), Some("/etc/herald/nats/nats.creds"));
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == CREDENTIALS_VOLUME)
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/herald/nats", Some(true))
    );
}

/// The probe pod as the apiserver returns it from a dry run, with `restartPolicy` kept or
/// dropped.
fn probe_answer(body: &[u8], keep: bool) -> Value {
    let mut pod: Value = serde_json::from_slice(body).unwrap();
    pod["metadata"]["name"] = json!("herald-native-sidecar-probe-x7k2p");
    if !keep {
        pod["spec"]["initContainers"][0]
            .as_object_mut()
            .unwrap()
            .remove("restartPolicy");
    }
    pod
}

#[tokio::test]
async fn the_native_sidecar_probe_reads_what_the_apiserver_kept() {
    let keeps = MockApi::new(|_, _, body| (201, probe_answer(body, true)));
    let cluster = Cluster::new(keeps.client.clone(), Duration::from_secs(2));
    assert!(
        cluster
            .supports_native_sidecars("herald-system", "img:1")
            .await
            .unwrap()
    );
    // A server-side dry run in the injector's namespace, never a stored pod.
    assert_eq!(
        keeps.requests(),
        ["POST /api/v1/namespaces/herald-system/pods?&dryRun=All&fieldManager=herald-controlplane"]
    );

    let drops = MockApi::new(|_, _, body| (201, probe_answer(body, false)));
    let cluster = Cluster::new(drops.client.clone(), Duration::from_secs(2));
    assert!(
        !cluster
            .supports_native_sidecars("herald-system", "img:1")
            .await
            .unwrap()
    );

    let invalid = MockApi::new(|_, _, _| {
        status(
            422,
            "Invalid",
            "spec.initContainers[0].restartPolicy: Forbidden",
        )
    });
    let cluster = Cluster::new(invalid.client.clone(), Duration::from_secs(2));
    assert!(
        !cluster
            .supports_native_sidecars("herald-system", "img:1")
            .await
            .unwrap()
    );

    let forbidden = MockApi::new(|_, _, _| status(403, "Forbidden", "cannot create pods"));
    let cluster = Cluster::new(forbidden.client.clone(), Duration::from_secs(2));
    let err = cluster
        .supports_native_sidecars("herald-system", "img:1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot create pods"), "{err}");
}

#[tokio::test]
async fn an_answer_in_progress_completes_through_shutdown() {
    // The namespace lookup takes 300 ms; shutdown is triggered while it runs.
    let api = MockApi::slow(Duration::from_millis(300), |_, path, _| {
        if path.starts_with("/api/v1/namespaces/") {
            (200, namespace("shop", json!({})))
        } else {
            not_found(path)
        }
    });
    let server = Server::start(config(true), &api).await;
    let mut conn = server.connect().await;
    let request = tokio::spawn(async move {
        conn.post("/mutate", "application/json", fixture("a-orders"))
            .await
    });
    // The lookup is under way (the API answers it slowly) when the shutdown comes.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while api.requests().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "the lookup never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(api.requests().len(), 1);
    server.shutdown.trigger();
    let (code, body) = request.await.unwrap();
    assert_eq!(code, 200);
    let (resp, _) = patched(&fixture("a-orders"), &body);
    assert!(!resp["patch"].is_null());
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("the server stops once the answer is out")
        .unwrap();
    // And it no longer accepts connections.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}
