//! The Helm chart (`charts/herald`): `helm lint --strict`, and `helm template` with the
//! rendered objects read into k8s-openapi types (a field the type does not know fails the
//! round trip), then checked against the binary they run: the CRD copy is `herald-controlplane
//! crd`, the webhook path, ports and selectors line up, the generated certificate verifies for
//! the Service name, RBAC grants what the code calls and no wildcard, the container's settings
//! resolve with the injector's own configuration parser.
//!
//! helm comes from `HERALD_TEST_HELM`, else `target/tools/helm`, else PATH; `scripts/test`
//! installs it (scripts/install-tools).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use herald_controlplane::config::{Config, ServeArgs};
use herald_controlplane::controller::crd::{EventStream, crd_yaml};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_HELM") {
        return p.into();
    }
    let local = root().join("target/tools/helm");
    if local.exists() {
        return local;
    }
    let on_path = Command::new("helm").arg("version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "helm is missing: run scripts/install-tools (or set HERALD_TEST_HELM)"
    );
    "helm".into()
}

fn chart() -> PathBuf {
    root().join("charts/herald")
}

/// `helm template` with `args`: (success, stdout, stderr).
fn template(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(["template", "herald", chart().to_str().unwrap()])
        .args(["--namespace", "herald-system", "--include-crds"])
        .args(args)
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rendered objects by `Kind/name`.
fn render(args: &[&str]) -> HashMap<String, Value> {
    let (ok, out, err) = template(args);
    assert!(ok, "helm template {args:?} failed: {err}");
    let mut objects = HashMap::new();
    for doc in out.split("\n---") {
        let value: Value = yaml_serde::from_str(doc).unwrap_or(Value::Null);
        if value.is_null() {
            continue;
        }
        let key = format!(
            "{}/{}",
            value["kind"].as_str().unwrap(),
            value["metadata"]["name"].as_str().unwrap()
        );
        assert!(objects.insert(key.clone(), value).is_none(), "{key} twice");
    }
    objects
}

/// Reads `key` as `T` and checks that writing it back gives the same JSON: a misspelled or
/// misplaced field, which the type would drop silently, fails here.
fn typed<T: DeserializeOwned + serde::Serialize>(objects: &HashMap<String, Value>, key: &str) -> T {
    let value = objects
        .get(key)
        .unwrap_or_else(|| panic!("{key} not rendered; have {:?}", objects.keys()));
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{key} is not a valid object: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(at) = first_difference(value, &back, String::new()) {
        panic!("{key}: {at} is not a field of its type (misspelled or misplaced?)");
    }
    typed
}

/// Where `rendered` has something `typed` lost, as a JSON pointer.
fn first_difference(rendered: &Value, typed: &Value, at: String) -> Option<String> {
    match (rendered, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{at}/{k}")),
            Some(w) => first_difference(v, w, format!("{at}/{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}/{i}"))),
        (a, b) if a == b => None,
        _ => Some(at),
    }
}

#[test]
fn lint_passes_and_the_crd_copy_is_what_the_binary_prints() {
    let out = Command::new(helm())
        .args(["lint", "--strict", chart().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Kyma's CRD is a template, rendered only when asked for.
    let template =
        std::fs::read_to_string(chart().join("templates/kyma-subscriptions-crd.yaml")).unwrap();
    let inner = template
        .strip_prefix("{{- if .Values.kyma.subscriptions }}\n")
        .and_then(|t| t.strip_suffix("{{- end }}\n"))
        .expect("the template is the CRD inside one `if`");
    assert_eq!(
        inner,
        herald_controlplane::controller::kyma::crd_yaml().unwrap(),
        "templates/kyma-subscriptions-crd.yaml is stale: rewrite it around `cargo run -p herald-controlplane -- crd kyma-subscriptions`"
    );
    for (file, which, printed) in [
        (
            "eventstreams.herald.dev.yaml",
            "eventstreams",
            crd_yaml().unwrap(),
        ),
        (
            "subscriptions.herald.dev.yaml",
            "subscriptions",
            herald_controlplane::controller::subscription::crd_yaml().unwrap(),
        ),
        (
            "eventschedules.herald.dev.yaml",
            "eventschedules",
            herald_controlplane::sources::schedule::crd_yaml().unwrap(),
        ),
        (
            "kubernetessources.herald.dev.yaml",
            "kubernetessources",
            herald_controlplane::sources::kubernetes::crd_yaml().unwrap(),
        ),
    ] {
        let copy = std::fs::read_to_string(chart().join("crds").join(file)).unwrap();
        assert_eq!(
            copy, printed,
            "charts/herald/crds is stale: cargo run -p herald-controlplane -- crd {which} > charts/herald/crds/{file}"
        );
    }
}

#[test]
fn default_install_lines_up_with_the_binary() {
    let o = render(&[]);
    let crd: CustomResourceDefinition =
        typed(&o, "CustomResourceDefinition/eventstreams.herald.dev");
    assert_eq!(crd.spec.group, "herald.dev");
    let es: EventStream = serde_json::from_value(o["EventStream/default"].clone()).unwrap();
    es.spec.policies("HERALD", "HERALD_DLQ").unwrap();
    let _: ServiceAccount = typed(&o, "ServiceAccount/herald");

    // The Deployment: two replicas apart, a PDB, the control-plane label the webhook skips.
    let d: Deployment = typed(&o, "Deployment/herald");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(pod_labels["herald.dev/control-plane"], "true");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("herald"));
    let c = &pod.containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&["herald-controlplane".to_string()][..])
    );
    // The dispatcher beside it: `herald dispatch`, every variable one of its flags.
    let d = &pod.containers[1];
    assert_eq!(
        d.command.as_deref(),
        Some(&["herald".to_string(), "dispatch".to_string()][..])
    );
    let help = herald_tests::herald_output(&["dispatch", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for e in d.env.iter().flatten() {
        let flag = format!(
            "--{}",
            e.name
                .trim_start_matches("HERALD_")
                .to_ascii_lowercase()
                .replace('_', "-")
        );
        assert!(
            help.contains(&flag),
            "{} is no flag of herald dispatch:\n{help}",
            e.name
        );
    }
    let ports: HashMap<_, _> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    // The binary's defaults: the chart sets no listen address.
    assert_eq!(ports["webhook"], 8443);
    assert_eq!(ports["admin"], 9250);
    let probe = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));

    // The container's settings are valid for the binary, and say what the chart meant.
    let env: HashMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let v = e
                .value
                .clone()
                .unwrap_or_else(|| "from-downward-api".into());
            (e.name.clone(), v)
        })
        .collect();
    let cfg = Config::resolve(&ServeArgs::default(), &env)
        .unwrap_or_else(|e| panic!("the chart's settings do not resolve: {e}"));
    let webhook = cfg.webhook.unwrap();
    assert_eq!(webhook.injector.nats_url, "nats://nats.nats:4222");
    assert_eq!(
        webhook.injector.sidecar_image,
        "ghcr.io/herald-dev/herald:0.1.0"
    );
    assert_eq!(
        webhook.cert_file,
        Path::new("/etc/herald/tls/tls.crt"),
        "where the chart mounts the Secret"
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "tls")
        .unwrap();
    assert_eq!(mount.mount_path, "/etc/herald/tls");
    let controller = cfg.controller.expect("the controller is on by default");
    assert_eq!(
        controller.orphan_grace,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(
        env["HERALD_POD_NAME"], "from-downward-api",
        "the Lease identity comes from the pod name"
    );

    let pdb: PodDisruptionBudget = typed(&o, "PodDisruptionBudget/herald");
    let pdb_labels = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert!(pdb_labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));

    // Service → pods → container port.
    let svc: Service = typed(&o, "Service/herald");
    let svc = svc.spec.unwrap();
    assert!(
        svc.selector
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    );
    let https = svc
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("webhook"))
        .unwrap();
    assert_eq!(https.port, 443);
    assert_eq!(
        https.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("webhook".into()))
    );

    // The webhook: the injector's path on that Service, and the contract of DESIGN.md.
    let mwc: MutatingWebhookConfiguration = typed(&o, "MutatingWebhookConfiguration/herald");
    let w = &mwc.webhooks.unwrap()[0];
    let svc_ref = w.client_config.service.as_ref().unwrap();
    assert_eq!(
        svc_ref.path.as_deref(),
        Some(herald_controlplane::webhook::MUTATE_PATH)
    );
    assert_eq!(
        (svc_ref.name.as_str(), svc_ref.namespace.as_str()),
        ("herald", "herald-system")
    );
    assert_eq!(svc_ref.port, Some(https.port));
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(w.side_effects, "None");
    assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(w.admission_review_versions, ["v1"]);
    let rule = &w.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    let ns = w
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    let excluded: BTreeSet<&str> = ns
        .iter()
        .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .flat_map(|e| e.values.iter().flatten().map(String::as_str))
        .collect();
    for system in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "herald-system",
    ] {
        assert!(excluded.contains(system), "{system} is sent to the webhook");
    }
    assert!(ns.iter().any(|e| e.key == "herald.dev/injection"
        && e.operator == "NotIn"
        && e.values.as_deref() == Some(&["disabled".to_string()][..])));
    let obj = w
        .object_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert!(
        obj.iter()
            .any(|e| e.key == "herald.dev/control-plane" && e.operator == "DoesNotExist")
    );
    assert!(pod_labels.contains_key("herald.dev/control-plane"));

    // The generated certificate verifies for the Service's DNS name against the caBundle.
    let secret: Secret = typed(&o, "Secret/herald-webhook-tls");
    let data = secret.data.unwrap();
    let ca_bundle = w.client_config.ca_bundle.as_ref().unwrap();
    assert_eq!(ca_bundle.0, data["ca.crt"].0);
    let der = |pem: &[u8]| -> CertificateDer<'static> {
        let text = String::from_utf8(pem.to_vec()).unwrap();
        common_der(&text)
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca_bundle.0)).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
    let serving = der(&data["tls.crt"].0);
    for name in ["herald.herald-system.svc", "herald.herald-system", "herald"] {
        verifier
            .verify_server_cert(
                &serving,
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("the serving certificate does not verify for {name}: {e}"));
    }

    // RBAC: everything the code calls, nothing wildcard.
    let cr: ClusterRole = typed(&o, "ClusterRole/herald");
    let _: ClusterRoleBinding = typed(&o, "ClusterRoleBinding/herald");
    let role: Role = typed(&o, "Role/herald");
    let _: RoleBinding = typed(&o, "RoleBinding/herald");
    let cluster_rules = cr.rules.unwrap();
    let ns_rules = role.rules.unwrap();
    for rules in [&cluster_rules, &ns_rules] {
        for r in rules.iter() {
            let all = r
                .verbs
                .iter()
                .chain(r.resources.iter().flatten())
                .chain(r.api_groups.iter().flatten());
            assert!(all.into_iter().all(|s| s != "*"), "wildcard in {r:?}");
        }
    }
    for (group, resource, verb) in [
        ("", "namespaces", "get"),
        ("batch", "jobs", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("apps", "deployments", "list"),
        ("apps", "deployments", "watch"),
        ("apps", "statefulsets", "list"),
        ("apps", "statefulsets", "watch"),
        ("apps", "daemonsets", "list"),
        ("apps", "daemonsets", "watch"),
        ("batch", "cronjobs", "list"),
        ("batch", "cronjobs", "watch"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("herald.dev", "eventstreams", "get"),
        ("herald.dev", "eventstreams", "list"),
        ("herald.dev", "eventstreams", "watch"),
        ("herald.dev", "eventstreams/status", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("herald.dev", "eventschedules", "watch"),
        ("herald.dev", "eventschedules/status", "patch"),
        ("herald.dev", "kubernetessources", "watch"),
        ("herald.dev", "kubernetessources/status", "patch"),
    ] {
        assert!(
            grants(&cluster_rules, group, resource, verb),
            "ClusterRole lacks {verb} {group}/{resource}"
        );
    }
    for (group, resource, verb) in [
        ("", "pods", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "patch"),
    ] {
        assert!(
            grants(&ns_rules, group, resource, verb),
            "Role lacks {verb} {group}/{resource}"
        );
    }
    assert!(
        !grants(&cluster_rules, "", "secrets", "get"),
        "the control plane never reads Secrets"
    );
    // No impersonation anywhere by default; with sources.kubernetes.namespaces, of
    // ServiceAccounts in exactly those namespaces.
    assert!(
        !grants(&cluster_rules, "", "serviceaccounts", "impersonate")
            && !o.keys().any(|k| k.ends_with("-sources")),
        "impersonation granted without sources.kubernetes.namespaces"
    );
    // Rendered by hand: the Role has the same name in each namespace.
    let (ok, out, err) = template(&["--set", "sources.kubernetes.namespaces={shop,pricing}"]);
    assert!(ok, "{err}");
    let docs: Vec<Value> = out
        .split("\n---")
        .filter_map(|d| yaml_serde::from_str::<Value>(d).ok())
        .filter(|v| !v.is_null())
        .collect();
    for ns in ["shop", "pricing"] {
        let found: Vec<&Value> = docs
            .iter()
            .filter(|v| v["kind"] == "Role" && v["metadata"]["namespace"] == ns)
            .collect();
        assert_eq!(found.len(), 1, "one Role in {ns}");
        assert!(
            docs.iter()
                .any(|v| v["kind"] == "RoleBinding" && v["metadata"]["namespace"] == ns)
        );
        let role: Role = serde_json::from_value(found[0].clone()).unwrap();
        let rules = role.rules.unwrap();
        assert!(grants(&rules, "", "serviceaccounts", "impersonate"));
        assert_eq!(
            rules.len(),
            1,
            "impersonation of ServiceAccounts only: {rules:?}"
        );
    }
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

fn common_der(pem: &str) -> CertificateDer<'static> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    CertificateDer::from(
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
    )
}

#[test]
fn options_render_what_they_promise() {
    // Kyma's Subscriptions: off by default; on, their CRD and the controller's grant to them.
    let o = render(&[]);
    assert!(!o.contains_key("CustomResourceDefinition/subscriptions.eventing.kyma-project.io"));
    let o = render(&["--set", "kyma.subscriptions=true"]);
    let crd: CustomResourceDefinition = typed(
        &o,
        "CustomResourceDefinition/subscriptions.eventing.kyma-project.io",
    );
    assert_eq!(crd.spec.versions[0].name, "v1alpha2");
    let role = serde_json::to_string(&o["ClusterRole/herald"]).unwrap();
    assert!(role.contains("eventing.kyma-project.io"), "{role}");

    // The console: off by default; on, its listener, container and Service port, and the grants
    // it needs (reviews, namespaces, Subscriptions); refused without the controller.
    let o = render(&[]);
    let svc = serde_json::to_string(&o["Service/herald"]).unwrap();
    assert!(!svc.contains("console"), "{svc}");
    let o = render(&["--set", "console.enabled=true"]);
    let d = serde_json::to_string(&o["Deployment/herald"]).unwrap();
    assert!(
        d.contains("HERALD_CONSOLE_LISTEN") && d.contains("0.0.0.0:8090"),
        "{d}"
    );
    assert_eq!(o["Service/herald"]["spec"]["ports"][2]["name"], "console");
    assert_eq!(o["Service/herald"]["spec"]["ports"][2]["port"], 8090);
    let role = serde_json::to_string(&o["ClusterRole/herald"]).unwrap();
    for grant in ["tokenreviews", "subjectaccessreviews", "namespaces"] {
        assert!(role.contains(grant), "{grant}: {role}");
    }
    let (ok, _, err) = template(&[
        "--set",
        "console.enabled=true",
        "--set",
        "controller.enabled=false",
    ]);
    assert!(
        !ok && err.contains("console.enabled needs controller.enabled"),
        "{err}"
    );

    // cert-manager: a Certificate for the Service names, the CA injected, no generated Secret.
    let o = render(&["--set", "webhook.certificate.source=cert-manager"]);
    assert!(!o.contains_key("Secret/herald-webhook-tls"));
    let cert = &o["Certificate/herald-webhook"];
    assert_eq!(cert["spec"]["secretName"], "herald-webhook-tls");
    let names = cert["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        names.contains(&Value::from("herald.herald-system.svc")),
        "{names:?}"
    );
    let mwc = &o["MutatingWebhookConfiguration/herald"];
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "herald-system/herald-webhook"
    );
    let _: MutatingWebhookConfiguration = typed(&o, "MutatingWebhookConfiguration/herald");

    let (ok, _, err) = template(&["--set", "webhook.certificate.source=vault"]);
    assert!(
        !ok && err.contains("webhook.certificate.source must be self-signed or cert-manager"),
        "{err}"
    );

    // NATS credentials: the webhook names the Secret, the controller mounts its own copy, and
    // both settings resolve.
    let o = render(&[
        "--set",
        "nats.credentials.secretName=nats-user",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "webhook.failurePolicy=Fail",
    ]);
    let d: Deployment = typed(&o, "Deployment/herald");
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let env: HashMap<String, String> = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            (
                e.name.clone(),
                e.value.clone().unwrap_or_else(|| "x".into()),
            )
        })
        .collect();
    assert_eq!(
        env["HERALD_NATS_CREDENTIALS_SECRET"],
        "nats-user/nats.creds"
    );
    assert_eq!(env["HERALD_NATS_CREDS"], "/etc/herald/nats/nats.creds");
    let cfg = Config::resolve(&ServeArgs::default(), &env).unwrap();
    assert_eq!(
        cfg.webhook
            .unwrap()
            .injector
            .nats_credentials
            .unwrap()
            .secret,
        "nats-user"
    );
    let vol = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "nats-credentials")
        .unwrap();
    assert_eq!(
        vol.secret.unwrap().secret_name.as_deref(),
        Some("nats-user")
    );
    let sm = &o["ServiceMonitor/herald"];
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        o["MutatingWebhookConfiguration/herald"]["webhooks"][0]["failurePolicy"],
        "Fail"
    );

    // Webhook only: no Lease rights, no controller.
    let o = render(&["--set", "controller.enabled=false"]);
    let role: Role = typed(&o, "Role/herald");
    assert!(!grants(
        &role.rules.unwrap(),
        "coordination.k8s.io",
        "leases",
        "get"
    ));
    let d: Deployment = typed(&o, "Deployment/herald");
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let controller = env.iter().find(|e| e.name == "HERALD_CONTROLLER").unwrap();
    assert_eq!(controller.value.as_deref(), Some("false"));
}
