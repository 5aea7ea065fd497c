//! The `herald-controlplane` binary (and its alias `herald-injector`): exit 64 on bad configuration, and a whole run against a scripted
//! Kubernetes API (plain HTTP, reached through a kubeconfig): native sidecar detection, HTTPS
//! admission, metrics, readiness and the SIGTERM drain.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Conn, Pki, fixture};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_herald-controlplane");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .output()
        .expect("herald-controlplane runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_naming_every_setting() {
    let (code, _, err) = run(&[
        "--native-sidecar=sometimes",
        "--webhook-listen=localhost",
        "--sidecar-cpu-request=fast",
    ]);
    assert_eq!(code, 64, "{err}");
    for needle in [
        "--native-sidecar=\"sometimes\"",
        "--webhook-listen=\"localhost\"",
        "--sidecar-cpu-request=\"fast\"",
        "--sidecar-image (HERALD_SIDECAR_IMAGE): required",
        "--nats-url (HERALD_NATS_URL): required",
    ] {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let (code, _, err) = run(&[
        "--sidecar-image=img:1",
        "--nats-url=nats://nats:4222",
        "--tls-cert-file=/nonexistent/tls.crt",
        "--tls-key-file=/nonexistent/tls.key",
        "--admin-listen=127.0.0.1:0",
        "--webhook-listen=127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/tls.crt: cannot read"), "{err}");

    let (code, _, err) = run(&[
        "--webhook=false",
        "--controller=true",
        "--nats-url=nats://127.0.0.1:1",
        "--pod-name=herald-0",
        "--nats-creds=/nonexistent/nats.creds",
        "--admin-listen=127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--nats-creds=\"/nonexistent/nats.creds\" (HERALD_NATS_CREDS)"),
        "{err}"
    );
    // The spelling of earlier releases still works, as a flag and as a variable.
    let (code, _, err) = run(&[
        "--webhook=false",
        "--controller=true",
        "--nats-url=nats://127.0.0.1:1",
        "--pod-name=herald-0",
        "--nats-credentials-file=/nonexistent/nats.creds",
        "--admin-listen=127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/nats.creds"), "{err}");

    let (code, _, err) = run(&["--no-such-flag"]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn crd_prints_yaml() {
    let (code, out, _) = run(&["crd"]);
    assert_eq!(code, 0);
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        yaml_serde::from_str(&out).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("eventstreams.herald.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
}

/// A Kubernetes API on plain HTTP: the dry-run probe keeps `restartPolicy` (a cluster with native
/// sidecars), namespaces have no herald defaults.
async fn start_api() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let (code, value) = match (method.as_str(), path.as_str()) {
                    ("POST", "/api/v1/namespaces/herald-system/pods") => {
                        let mut pod: Value = serde_json::from_slice(&body).unwrap();
                        pod["metadata"]["name"] = json!("herald-native-sidecar-probe-abcde");
                        (201, pod)
                    }
                    ("GET", p) if p.starts_with("/api/v1/namespaces/") => (
                        200,
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
                    ),
                    _ => common::not_found(&path),
                };
                let resp = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// A running `herald-controlplane` against the scripted API of [`start_api`], with the webhook and
/// admin addresses from its ports file. Killed on drop.
struct Injector {
    child: std::process::Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    pki: Pki,
    native: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    async fn start(extra: &[&str]) -> Injector {
        let api = start_api().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://{api}\nusers:\n- name: mock\n  user:\n    token: test\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\n    namespace: herald-system\ncurrent-context: mock\n"
            ),
        )
        .unwrap();
        let pki = Pki::new("herald test CA");
        let (cert, key) = pki.issue("herald-injector.herald-system.svc");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();

        let mut child = Command::new(BIN)
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("HERALD_SIDECAR_IMAGE", "ghcr.io/herald/sidecar:test")
            .env("HERALD_NATS_URL", "nats://nats.nats:4222")
            .args([
                "--webhook-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--tls-cert-file")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.path().join("tls.key"))
            .arg("--ports-file")
            .arg(dir.path().join("ports.json"))
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("injector: {line}");
            }
        });
        // The addresses of both listeners (port 0), from the ports file written once they listen.
        let ports = dir.path().join("ports.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                break serde_json::from_str(&text).unwrap();
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "exited before listening"
            );
            assert!(Instant::now() < deadline, "no ports file after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr =
            |name: &str| -> SocketAddr { listening[name].as_str().unwrap().parse().unwrap() };
        let (webhook, admin) = (addr("webhook"), addr("admin"));
        while herald_runtime::admin::get_ok(admin, "/readyz").await != Some(true) {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let native = metrics(admin)
            .await
            .contains("herald_injector_native_sidecar 1");
        Injector {
            child,
            webhook,
            admin,
            pki,
            native,
            _dir: dir,
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_detects_native_sidecars_injects_over_https_and_drains_on_sigterm() {
    let mut injector = Injector::start(&[]).await;
    let (webhook, admin) = (injector.webhook, injector.admin);
    assert!(injector.native, "the probe found native sidecars");

    let mut conn = Conn::open(webhook, &injector.pki.ca).await;
    let (code, body) = conn
        .post(
            "/mutate?timeout=10s",
            "application/json",
            fixture("a-orders"),
        )
        .await;
    assert_eq!(code, 200);
    let wire: Value = serde_json::from_slice(&body).unwrap();
    let bytes: Vec<u8> = serde_json::from_value(wire["response"]["patch"].clone()).unwrap();
    let patch = String::from_utf8(bytes).unwrap();
    assert!(patch.contains("\"/spec/initContainers\""), "{patch}");
    assert!(patch.contains("\"restartPolicy\":\"Always\""), "{patch}");

    let metrics = metrics(admin).await;
    assert!(
        metrics.contains("herald_injector_native_sidecar 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_injector_injections_total 1"),
        "{metrics}"
    );

    // SIGTERM: unready at once, still answering while the endpoint is being removed, then gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(injector.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let unready_by = Instant::now() + Duration::from_secs(2);
    while herald_runtime::admin::get_ok(admin, "/readyz").await != Some(false) {
        assert!(Instant::now() < unready_by, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = conn
        .post("/mutate", "application/json", fixture("a-orders"))
        .await;
    assert_eq!(code, 200, "answers during the unready delay");
    let exit_by = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = injector.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < exit_by, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_filters_and_slow_clients_do_not_stop_the_webhook() {
    let timeout = Duration::from_secs(2);
    let mut injector = Injector::start(&["--header-read-timeout", "2s"]).await;
    let (webhook, admin) = (injector.webhook, injector.admin);
    let ca = injector.pki.ca.clone();

    // Each filter aborted the whole process (webhook and controller) before the limits.
    for (filter, message) in common::hostile_filters() {
        let body = common::fixture_with("a-orders", "herald.dev/filter", &filter);
        let (code, answer) = Conn::open(webhook, &ca)
            .await
            .post("/mutate", "application/json", body)
            .await;
        assert_eq!(code, 200);
        let wire: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(wire["response"]["allowed"], false);
        let text = wire["response"]["status"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{message:?} not in {text:?}");
        assert!(
            injector.alive(),
            "the injector died on a filter of {} bytes",
            filter.len()
        );
    }

    // 200 clients that finish the TLS handshake, then send half a request head and stop.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = Conn::handshake(webhook, &ca).await.expect("TLS handshake");
        s.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: app")
            .await
            .unwrap();
        s.flush().await.unwrap();
        slow.push(s);
    }
    // Meanwhile a real admission is answered.
    let (code, _) = Conn::open(webhook, &ca)
        .await
        .post("/mutate", "application/json", fixture("a-orders"))
        .await;
    assert_eq!(code, 200);
    let closed = futures::future::join_all(slow.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }));
    tokio::time::timeout(timeout + Duration::from_secs(8), closed)
        .await
        .expect("every half-sent request is cut off within the header read timeout");
    assert!(opened.elapsed() >= timeout, "closed before the timeout");
    let m = metrics(admin).await;
    let timeouts: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("herald_injector_http_header_timeouts_total{listener=\"webhook\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    assert!(timeouts >= 200.0, "{m}");
    assert!(injector.alive());
    let (code, _) = Conn::open(webhook, &ca)
        .await
        .post("/mutate", "application/json", fixture("a-orders"))
        .await;
    assert_eq!(code, 200);
}

async fn metrics(admin: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
