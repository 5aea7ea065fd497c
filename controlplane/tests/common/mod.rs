//! What the injector tests share: a throwaway PKI (rcgen), the webhook served over real HTTPS on
//! a free port, an HTTPS client that trusts the test CA, and a scripted Kubernetes API (a tower
//! service behind a real `kube::Client`, the kube-rs mock pattern).

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_controlplane::webhook::lookups::Cluster;
use herald_controlplane::webhook::metrics::Metrics;
use herald_controlplane::webhook::mutate::InjectorConfig;
use herald_controlplane::webhook::tls::Certificates;
use herald_controlplane::webhook::{self, Webhook};
use herald_runtime::http_server::{HttpMetrics, Limits, Listener, Server as HttpServer};
use herald_runtime::shutdown::Shutdown;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub fn config(native: bool) -> InjectorConfig {
    InjectorConfig {
        sidecar_image: "ghcr.io/herald/sidecar:test".into(),
        nats_url: "nats://nats.herald-system:4222".into(),
        native_sidecar: native,
        resources: InjectorConfig::default_resources(),
        nats_credentials: None,
    }
}

/// A CA and the server certificates it signs, for `localhost` and `127.0.0.1`.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca: CertificateDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        Pki {
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A new server certificate and key (PEM) with `cn` as its common name.
    pub fn issue(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A Kubernetes API answering from a script; every request is recorded as `METHOD path?query`.
#[derive(Clone)]
pub struct MockApi {
    pub client: kube::Client,
    pub requests: Arc<Mutex<Vec<String>>>,
}

pub type Script = dyn Fn(&http::Method, &str, &[u8]) -> (u16, Value) + Send + Sync;

/// One request to the scripted API, for scripts that need more than method, path and body.
pub struct ApiRequest {
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    pub content_type: String,
    pub body: Bytes,
}

impl ApiRequest {
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl MockApi {
    pub fn new(
        script: impl Fn(&http::Method, &str, &[u8]) -> (u16, Value) + Send + Sync + 'static,
    ) -> MockApi {
        Self::slow(Duration::ZERO, script)
    }

    /// Every answer takes `delay`.
    pub fn slow(
        delay: Duration,
        script: impl Fn(&http::Method, &str, &[u8]) -> (u16, Value) + Send + Sync + 'static,
    ) -> MockApi {
        Self::with_requests(delay, move |r| script(&r.method, &r.path, &r.body))
    }

    /// A script that sees the whole request (the content type tells a server-side apply from
    /// a merge patch).
    pub fn with_requests(
        delay: Duration,
        script: impl Fn(&ApiRequest) -> (u16, Value) + Send + Sync + 'static,
    ) -> MockApi {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let seen = requests.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (script, seen) = (script.clone(), seen.clone());
            async move {
                let method = req.method().clone();
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let content_type = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                seen.lock().unwrap().push(format!("{method} {path}"));
                tokio::time::sleep(delay).await;
                let (status, value) = script(&ApiRequest {
                    method,
                    path,
                    content_type,
                    body,
                });
                let resp = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&value).unwrap(),
                    ))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        MockApi {
            client: kube::Client::new(service, "herald-system"),
            requests,
        }
    }

    /// The cluster the fixtures come from: namespace `shop` without herald defaults, the Job
    /// `nightly-manual` made from CronJob `nightly`, the Job `report` on its own.
    pub fn fixtures() -> MockApi {
        MockApi::new(|method, path, _| {
            let path = path.split('?').next().unwrap_or_default();
            match (method.as_str(), path) {
                ("GET", "/api/v1/namespaces/shop") => (200, namespace("shop", json!({}))),
                ("GET", "/apis/batch/v1/namespaces/shop/jobs/nightly-manual") => {
                    (200, job("nightly-manual", Some("nightly")))
                }
                ("GET", "/apis/batch/v1/namespaces/shop/jobs/report") => (200, job("report", None)),
                _ => not_found(path),
            }
        })
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

pub fn namespace(name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}})
}

pub fn job(name: &str, cronjob: Option<&str>) -> Value {
    let owners: Vec<Value> = cronjob
        .map(|c| {
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": c, "uid": "5f1a1d2c-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true})
        })
        .into_iter()
        .collect();
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "shop", "ownerReferences": owners}})
}

pub fn not_found(path: &str) -> (u16, Value) {
    status(404, "NotFound", &format!("{path} not found"))
}

pub fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

/// The webhook on a free port over HTTPS, with its certificate files in a temporary directory.
pub struct Server {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(config: InjectorConfig, api: &MockApi) -> Server {
        let pki = Pki::new("herald test CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.issue("herald-injector.test");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        Self::start_with(config, api, pki, dir, &c, &k).await
    }

    /// With the listener limits `limits` (the defaults otherwise).
    pub async fn start_limited(config: InjectorConfig, api: &MockApi, limits: Limits) -> Server {
        let pki = Pki::new("herald test CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pki.issue("herald-injector.test");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        Self::start_full(config, api, pki, dir, &c, &k, limits).await
    }

    /// With the certificate files at `cert` and `key` (signed by `pki`); `dir` is kept alive.
    pub async fn start_with(
        config: InjectorConfig,
        api: &MockApi,
        pki: Pki,
        dir: tempfile::TempDir,
        cert: &Path,
        key: &Path,
    ) -> Server {
        let limits = Limits {
            max_connections: herald_controlplane::limits::DEFAULT_WEBHOOK_MAX_CONNECTIONS,
            header_read_timeout: herald_controlplane::limits::DEFAULT_HEADER_READ_TIMEOUT,
        };
        Self::start_full(config, api, pki, dir, cert, key, limits).await
    }

    async fn start_full(
        config: InjectorConfig,
        api: &MockApi,
        pki: Pki,
        dir: tempfile::TempDir,
        cert: &Path,
        key: &Path,
        limits: Limits,
    ) -> Server {
        let certs = Certificates::load(cert, key).unwrap();
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let http_metrics = HttpMetrics::new(registry.sub_registry_with_prefix("herald_injector"));
        let webhook = Arc::new(Webhook::new(
            config,
            Cluster::new(api.client.clone(), Duration::from_secs(2)),
            metrics.clone(),
            herald_controlplane::limits::DEFAULT_BODY_READ_TIMEOUT,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(certs.clone().watch(metrics, shutdown.clone()));
        let stop = shutdown.clone();
        let server = HttpServer {
            listener: Listener::Webhook,
            limits,
            metrics: http_metrics,
        };
        let task = tokio::spawn(async move {
            webhook::serve(
                server,
                listener,
                certs,
                webhook,
                stop,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        });
        Server {
            addr,
            pki,
            dir,
            registry: Arc::new(registry),
            shutdown,
            task,
        }
    }

    /// The metrics as Prometheus would scrape them.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }

    /// The value of one sample line (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn connect(&self) -> Conn {
        Conn::open(self.addr, &self.pki.ca).await
    }

    /// One request on a new connection.
    pub async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.connect().await.post(path, content_type, body).await
    }
}

/// An HTTPS/1.1 connection that trusts only the test CA, as the apiserver trusts `caBundle`.
pub struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The certificate the server presented.
    pub server_cert: CertificateDer<'static>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, ca: &CertificateDer<'static>) -> Conn {
        let stream = Self::handshake(addr, ca).await.expect("TLS handshake");
        let server_cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { send, server_cert }
    }

    pub async fn handshake(
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(
            herald_controlplane::webhook::tls::provider(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        // As the apiserver does for webhooks.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    pub async fn post(&mut self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        self.request(http::Method::POST, path, content_type, body)
            .await
    }

    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.send.send_request(req).await.expect("a response");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A captured AdmissionReview with one annotation of its pod set to `value`.
pub fn fixture_with(name: &str, key: &str, value: &str) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&fixture(name)).unwrap();
    review["request"]["object"]["metadata"]["annotations"][key] = json!(value);
    serde_json::to_vec(&review).unwrap()
}

/// Filters that aborted the injector (stack overflow in the parser) before CESQL had limits.
pub fn hostile_filters() -> Vec<(String, &'static str)> {
    let nested = |n: usize| format!("{}type = 'a'{}", "(".repeat(n), ")".repeat(n));
    vec![
        (
            nested(5_000),
            "herald.dev/filter: the value is 10010 bytes long; the limit is 4096",
        ),
        (
            nested(100_000),
            "herald.dev/filter: the value is 200010 bytes long; the limit is 4096",
        ),
        (
            format!("{}TRUE", "NOT ".repeat(50_000)),
            "herald.dev/filter: the value is 200004 bytes long; the limit is 4096",
        ),
        (
            nested(100),
            "herald.dev/filter: is not a valid CESQL expression: column 65: the expression nests deeper than 64 levels",
        ),
    ]
}

/// The DER of a PEM certificate.
pub fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}
pub mod fake;
