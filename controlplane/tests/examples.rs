//! The example manifests (examples/k8s) are what the webhook injects: each Deployment's pod,
//! as its ReplicaSet would create it, is admitted with the sidecar under the Deployment's name,
//! and every manifest and app file is in examples/kustomization.yaml.

mod common;

use std::path::Path;

use herald_controlplane::webhook::mutate::{self, Context, Decision};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

#[test]
fn every_example_deployment_is_injected_under_its_own_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            kustomization.contains(&format!("k8s/{name}")),
            "{name} is not in kustomization.yaml"
        );
        let d: Deployment = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let deployment = d.metadata.name.clone().unwrap();
        let template = d.spec.unwrap().template;
        let mut meta = template.metadata.unwrap();
        meta.namespace = Some("shop".into());
        meta.generate_name = Some(format!("{deployment}-5c8d-"));
        meta.labels
            .get_or_insert_default()
            .insert("pod-template-hash".into(), "5c8d".into());
        meta.owner_references =
            Some(vec![serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-5c8d"),
            "uid": "rs", "controller": true
        }))
        .unwrap()]);
        let pod = Pod {
            metadata: meta,
            spec: template.spec,
            ..Default::default()
        };
        match mutate::mutate(&pod, &Context::default(), &common::config(true)) {
            Decision::Inject(i) => assert_eq!(i.app_id.id, deployment, "{name}"),
            other => panic!("{name} is not injected: {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 3, "orders, payments, shipping");
    for code in ["orders/app.py", "payments/app.js", "shipping/main.go"] {
        assert!(
            kustomization.contains(code),
            "{code} is not in kustomization.yaml"
        );
        assert!(dir.join(code).exists());
    }
}
