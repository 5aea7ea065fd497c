//! The workload's app id: what names its consumers, its default event `source` and its metrics.
//! It must be the same for every replica and every restart of a workload, so it comes from the
//! workload, not from the pod. In order:
//!
//! 1. the `herald.dev/app-id` annotation;
//! 2. the controlling owner: a ReplicaSet's Deployment (the ReplicaSet name without its
//!    `-<pod-template-hash>`), a StatefulSet, a DaemonSet, a Job's CronJob (looked up by the
//!    caller, which has the API), else the Job;
//! 3. the `app.kubernetes.io/name` label;
//! 4. the pod name;
//! 5. the `generateName` stem (without its trailing `-`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use herald_core::contract::APP_ID;

/// Where the app id came from, for logs and warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Annotation,
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    /// The owner is of another kind; its name is used.
    OtherOwner,
    NameLabel,
    PodName,
    GenerateName,
}

/// The derived app id and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppId {
    pub id: String,
    pub origin: Origin,
}

/// The Job that controls the pod, if any: the caller looks up its CronJob.
pub fn controlling_job(meta: &ObjectMeta) -> Option<&str> {
    controller(meta)
        .filter(|o| o.kind == "Job")
        .map(|o| o.name.as_str())
}

fn controller(
    meta: &ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

/// Derives the app id; `cronjob` is the CronJob owning the pod's Job, when the caller found one.
pub fn derive(meta: &ObjectMeta, cronjob: Option<&str>) -> Option<AppId> {
    let found = |id: &str, origin| {
        let id = id.trim();
        (!id.is_empty()).then(|| AppId {
            id: id.to_owned(),
            origin,
        })
    };
    if let Some(a) = meta.annotations.as_ref().and_then(|a| a.get(APP_ID)) {
        return found(a, Origin::Annotation);
    }
    if let Some(owner) = controller(meta) {
        let name = owner.name.as_str();
        let derived = match owner.kind.as_str() {
            "ReplicaSet" => {
                let hash = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"));
                match hash.and_then(|h| name.strip_suffix(h.as_str())) {
                    Some(stem) => found(stem.trim_end_matches('-'), Origin::Deployment),
                    // A ReplicaSet made by hand: its own name is the workload.
                    None => found(name, Origin::OtherOwner),
                }
            }
            "StatefulSet" => found(name, Origin::StatefulSet),
            "DaemonSet" => found(name, Origin::DaemonSet),
            "Job" => match cronjob {
                Some(c) => found(c, Origin::CronJob),
                None => found(name, Origin::Job),
            },
            _ => found(name, Origin::OtherOwner),
        };
        if derived.is_some() {
            return derived;
        }
    }
    if let Some(n) = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/name"))
    {
        return found(n, Origin::NameLabel);
    }
    if let Some(n) = &meta.name {
        return found(n, Origin::PodName);
    }
    meta.generate_name
        .as_deref()
        .and_then(|g| found(g.trim_end_matches('-'), Origin::GenerateName))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_order_of_derivation() {
        let rs = ObjectMeta {
            owner_references: Some(vec![owner("ReplicaSet", "orders-664d844b75")]),
            labels: labels(&[
                ("pod-template-hash", "664d844b75"),
                ("app.kubernetes.io/name", "x"),
            ]),
            generate_name: Some("orders-664d844b75-".into()),
            ..Default::default()
        };
        assert_eq!(
            derive(&rs, None),
            Some(AppId {
                id: "orders".into(),
                origin: Origin::Deployment
            })
        );
        let mut annotated = rs.clone();
        annotated.annotations = labels(&[(APP_ID, "billing")]);
        assert_eq!(derive(&annotated, None).unwrap().id, "billing");

        let job = ObjectMeta {
            owner_references: Some(vec![owner("Job", "nightly-29384756")]),
            ..Default::default()
        };
        assert_eq!(controlling_job(&job), Some("nightly-29384756"));
        assert_eq!(
            derive(&job, Some("nightly")).unwrap().origin,
            Origin::CronJob
        );
        assert_eq!(derive(&job, None).unwrap().id, "nightly-29384756");

        let label_only = ObjectMeta {
            labels: labels(&[("app.kubernetes.io/name", "web")]),
            name: Some("web-1".into()),
            ..Default::default()
        };
        assert_eq!(derive(&label_only, None).unwrap().origin, Origin::NameLabel);
        let bare = ObjectMeta {
            name: Some("debug".into()),
            ..Default::default()
        };
        assert_eq!(derive(&bare, None).unwrap().id, "debug");
        let generated = ObjectMeta {
            generate_name: Some("worker-".into()),
            ..Default::default()
        };
        assert_eq!(derive(&generated, None).unwrap().id, "worker");
        assert_eq!(derive(&ObjectMeta::default(), None), None);
    }
}
