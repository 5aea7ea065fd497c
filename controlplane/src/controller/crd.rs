//! The `EventStream` custom resource (`herald.dev/v1alpha1`, cluster scoped): the stream policy of
//! `HERALD` and `HERALD_DLQ` and the delivery defaults, and, in its status, what JetStream holds.
//!
//! The schema carries the validation (enums, ranges, size and duration patterns), so the apiserver
//! refuses a bad spec with a message naming the field; [`EventStreamSpec::policies`] turns a valid
//! spec into the same [`StreamPolicy`] values `herald dev` uses. `herald-controlplane crd` prints the
//! CustomResourceDefinition generated from these types.

use std::time::Duration;

use herald_core::limits::DurationRange;
use herald_core::policy::StreamPolicy;
use herald_core::settings::{in_range, parse_bytes};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Sizes as herald writes them elsewhere (`1GiB`, `512MiB`, `1048576`).
const SIZE: &str = r"^[0-9]+(B|KiB|MiB|GiB|KB|kB|MB|GB)?$";
/// Durations: `500ms`, `30s`, `2m`, `336h`; `0` is unlimited where allowed.
const DURATION: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$";

/// The policy of herald's streams and the cluster's delivery defaults.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "EventStream",
    plural = "eventstreams",
    status = "EventStreamStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Messages","type":"integer","jsonPath":".status.messages"}"#,
    printcolumn = r#"{"name":"Used","type":"string","jsonPath":".status.percentUsed"}"#,
    printcolumn = r#"{"name":"Consumers","type":"integer","jsonPath":".status.consumers"}"#,
    printcolumn = r#"{"name":"Retention","type":"string","jsonPath":".spec.retention"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamSpec {
    /// Where JetStream keeps events. Cannot change once the stream exists.
    #[serde(default)]
    pub storage: Storage,
    /// Copies of each event across the NATS cluster (1 to 5).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u8,
    /// `interest`: an event is kept until every subscription has it (the default). `limits`: kept
    /// until the limits below, so it can be replayed. Cannot change once the stream exists.
    #[serde(default)]
    pub retention: Retention,
    /// Largest size of the events stream, e.g. 1GiB.
    #[serde(default = "max_bytes")]
    #[schemars(regex(pattern = SIZE))]
    pub max_bytes: String,
    /// Oldest event kept, e.g. 168h; 0 is no limit (the default).
    #[serde(default = "zero")]
    #[schemars(regex(pattern = DURATION))]
    pub max_age: String,
    /// Most events kept; -1 is no limit.
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_msgs: i64,
    /// Most events kept per subject (source and type); -1 is no limit.
    #[serde(default = "unlimited")]
    #[schemars(range(min = -1))]
    pub max_msgs_per_subject: i64,
    /// Largest single event; empty is the server's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE))]
    pub max_msg_size: Option<String>,
    /// What a full stream does: `new` refuses new events (publishers get 507), `old` drops the
    /// oldest.
    #[serde(default)]
    pub discard: Discard,
    /// How long a `source`+`id` is remembered for deduplication.
    #[serde(default = "two_minutes")]
    #[schemars(regex(pattern = DURATION))]
    pub duplicate_window: String,
    /// Usage of max bytes, in percent, above which `StorageNearlyFull` is raised (1 to 100).
    #[serde(default = "eighty")]
    #[schemars(range(min = 1, max = 100))]
    pub storage_warning_percent: u8,
    /// The dead-letter stream (always `limits` retention, oldest dropped when full).
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,
    /// Defaults for every subscription in the cluster; a pod's annotations override them.
    #[serde(default)]
    pub delivery: DeliveryDefaults,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Interest,
    Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    New,
    Old,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// How long a dead letter is kept (default 336h, two weeks).
    #[serde(default = "two_weeks")]
    #[schemars(regex(pattern = DURATION))]
    pub max_age: String,
    /// Largest size of the dead-letter stream (default 256MiB).
    #[serde(default = "dlq_bytes")]
    #[schemars(regex(pattern = SIZE))]
    pub max_bytes: String,
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        DeadLetterSpec {
            max_age: two_weeks(),
            max_bytes: dlq_bytes(),
        }
    }
}

/// Cluster-wide delivery defaults; unset fields keep herald's built-in defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDefaults {
    /// Attempts before an event is dead-lettered (1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: Option<u32>,
    /// First local retry backoff, doubling (e.g. 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub backoff: Option<String>,
    /// Deliveries in flight per subscription, across replicas (1 to 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
    /// Timeout of one delivery attempt (e.g. 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub attempt_timeout: Option<String>,
}

/// What the controller last saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded` (a change JetStream cannot make, or NATS unreachable) and
    /// `StorageNearlyFull`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Bytes held as a percentage of max bytes, e.g. "42%".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<String>,
    #[serde(default)]
    pub consumers: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn one() -> u8 {
    1
}
fn eighty() -> u8 {
    80
}
fn unlimited() -> i64 {
    -1
}
fn zero() -> String {
    "0".into()
}
fn max_bytes() -> String {
    "1GiB".into()
}
fn two_minutes() -> String {
    "2m".into()
}
fn two_weeks() -> String {
    "336h".into()
}
fn dlq_bytes() -> String {
    "256MiB".into()
}

/// Ages and windows of a stream: a hundred years at most (0 is no limit where allowed), so no
/// value can overflow on its way to JetStream's nanoseconds.
const MAX_AGE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(36_500 * 86_400));

/// The name of the EventStream the controller reconciles (the chart installs it).
pub const DEFAULT_NAME: &str = "default";

impl EventStreamSpec {
    /// The policies of the events and dead-letter streams. The schema already checked the
    /// formats; an error here names the field of a spec that slipped past it (an old CRD).
    pub fn policies(
        &self,
        events: &str,
        dead_letters: &str,
    ) -> Result<(StreamPolicy, StreamPolicy), String> {
        use herald_core::policy::{
            Discard as DiscardPolicy, Retention as RetentionPolicy, Storage as StorageType,
        };
        let size = |field: &str, v: &str| -> Result<i64, String> {
            parse_bytes(v)
                .map_err(|e| format!("spec.{field}: {e}, not {v:?}"))
                .and_then(|b| i64::try_from(b).map_err(|_| format!("spec.{field}: too large")))
        };
        let duration = |field: &str, v: &str| -> Result<Duration, String> {
            in_range(MAX_AGE)(v).map_err(|e| format!("spec.{field}: {e}, not {v:?}"))
        };
        let mut ev = StreamPolicy::events(events);
        ev.storage = match self.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        };
        ev.retention = match self.retention {
            Retention::Interest => RetentionPolicy::Interest,
            Retention::Limits => RetentionPolicy::Limits,
        };
        ev.discard = match self.discard {
            Discard::New => DiscardPolicy::New,
            Discard::Old => DiscardPolicy::Old,
        };
        ev.replicas = usize::from(self.replicas.clamp(1, 5));
        ev.max_bytes = size("maxBytes", &self.max_bytes)?;
        ev.max_age = duration("maxAge", &self.max_age)?;
        ev.max_messages = self.max_msgs;
        ev.max_messages_per_subject = self.max_msgs_per_subject;
        if let Some(m) = &self.max_msg_size {
            ev.max_message_size = i32::try_from(size("maxMsgSize", m)?)
                .map_err(|_| "spec.maxMsgSize: at most 2GiB".to_string())?;
        }
        ev.duplicate_window = duration("duplicateWindow", &self.duplicate_window)?;
        let mut dlq = StreamPolicy::dead_letters(dead_letters);
        dlq.storage = ev.storage;
        dlq.replicas = ev.replicas;
        dlq.max_age = duration("deadLetter.maxAge", &self.dead_letter.max_age)?;
        dlq.max_bytes = size("deadLetter.maxBytes", &self.dead_letter.max_bytes)?;
        Ok((ev, dlq))
    }
}

/// The CustomResourceDefinition as YAML, for `herald-controlplane crd` and the Helm chart.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    use kube::CustomResourceExt as _;
    Ok(format!(
        "# Generated by `herald-controlplane crd`; the Helm chart's copy is checked against it.\n{}",
        yaml_serde::to_string(&EventStream::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> EventStreamSpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn an_empty_spec_is_herald_dev_s_cluster_policy() {
        let (ev, dlq) = spec("{}").policies("HERALD", "HERALD_DLQ").unwrap();
        assert_eq!(ev, StreamPolicy::events("HERALD"));
        assert_eq!(dlq, StreamPolicy::dead_letters("HERALD_DLQ"));
    }

    #[test]
    fn every_field_reaches_the_policy() {
        let (ev, dlq) = spec(
            "storage: memory\nreplicas: 3\nretention: limits\nmaxBytes: 2GiB\nmaxAge: 168h\n\
             maxMsgs: 1000\nmaxMsgsPerSubject: 10\nmaxMsgSize: 1MiB\ndiscard: old\n\
             duplicateWindow: 30s\ndeadLetter: {maxAge: 24h, maxBytes: 1GiB}\n",
        )
        .policies("E", "D")
        .unwrap();
        use herald_core::policy::{
            Discard as DiscardPolicy, Retention as RetentionPolicy, Storage as StorageType,
        };
        assert_eq!(ev.storage, StorageType::Memory);
        assert_eq!(ev.replicas, 3);
        assert_eq!(ev.retention, RetentionPolicy::Limits);
        assert_eq!(ev.max_bytes, 2 << 30);
        assert_eq!(ev.max_age, Duration::from_secs(168 * 3600));
        assert_eq!((ev.max_messages, ev.max_messages_per_subject), (1000, 10));
        assert_eq!(ev.max_message_size, 1 << 20);
        assert_eq!(ev.discard, DiscardPolicy::Old);
        assert_eq!(ev.duplicate_window, Duration::from_secs(30));
        assert_eq!(dlq.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(dlq.max_bytes, 1 << 30);
        assert_eq!((dlq.storage, dlq.replicas), (StorageType::Memory, 3));
    }

    #[test]
    fn a_bad_value_names_the_field() {
        let e = spec("maxBytes: lots").policies("E", "D").unwrap_err();
        assert_eq!(
            e,
            "spec.maxBytes: must be a size such as 1048576, 512KiB or 1MiB, not \"lots\""
        );
    }

    #[test]
    fn durations_have_a_range() {
        let e = spec("maxAge: 9000000000000000000s")
            .policies("E", "D")
            .unwrap_err();
        assert_eq!(
            e,
            "spec.maxAge: must be from 0s to 36500d, not \"9000000000000000000s\""
        );
    }

    #[test]
    fn the_crd_carries_the_validation() {
        let y = crd_yaml().unwrap();
        let crd: serde_json::Value = yaml_serde::from_str(&y).unwrap();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["group"], "herald.dev");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert!(v["subresources"]["status"].is_object());
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let n = |v: &serde_json::Value| v.as_f64();
        assert_eq!(n(&spec["replicas"]["minimum"]), Some(1.0));
        assert_eq!(n(&spec["replicas"]["maximum"]), Some(5.0));
        assert_eq!(n(&spec["storageWarningPercent"]["maximum"]), Some(100.0));
        assert_eq!(
            spec["retention"]["enum"],
            serde_json::json!(["interest", "limits"])
        );
        assert_eq!(spec["maxBytes"]["pattern"], SIZE);
        assert_eq!(
            n(&spec["delivery"]["properties"]["maxInFlight"]["maximum"]),
            Some(10000.0)
        );
        let columns: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Messages", "Used", "Consumers", "Retention", "Age"]
        );
    }
}
