//! The `EventSchedule` resource (`herald.dev/v1alpha1`, namespaced, short name `hsched`): a
//! CloudEvent published on a cron schedule, and the pure decisions about it: the spec checked
//! into a [`Plan`] (every error names the field, the value and the rule), which tick is due
//! ([`due`], with `CronJob`'s meaning of `startingDeadlineSeconds`), and the event of a tick
//! ([`Plan::event`]), whose id is derived from the resource's uid and the scheduled time so that
//! a tick published twice (two leaders for a moment, a retry) is stored once.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use herald_core::event::{Event, EventBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SpecError;
use crate::limits::sources::{MAX_EXTENSIONS, MAX_SCHEDULE_DATA_BYTES};

/// A CloudEvent published on a schedule.
#[derive(CustomResource, KubeSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "EventSchedule",
    plural = "eventschedules",
    shortname = "hsched",
    namespaced,
    status = "EventScheduleStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EventScheduleSpec {
    /// Five cron fields (minute, hour, day of month, month, day of week), or `@yearly`,
    /// `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// The IANA time zone the schedule is read in (`Europe/Berlin`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// The CloudEvents `type` of the events.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 256))]
    pub type_: String,
    /// The CloudEvents `source`; by default the resource's path,
    /// `/apis/herald.dev/v1alpha1/namespaces/<namespace>/eventschedules/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub source: Option<String>,
    /// The event's data: any JSON value (sent as JSON), or a string (sent as its text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ScheduleData>,
    /// The data's media type; `application/json` for JSON data, `text/plain` for a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub content_type: Option<String>,
    /// Extension attributes (lower-case letters and digits) and their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<BTreeMap<String, String>>,
    /// No events while true; a tick missed meanwhile is sent on resuming if it is still within
    /// `startingDeadlineSeconds` (as a `CronJob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// A tick missed (no leader ran, or suspended) is still sent this long after its time;
    /// later it is skipped. Unset: the latest missed tick is always sent. Never more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
}

/// `data`: free-form (the schema keeps any JSON value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScheduleData(pub serde_json::Value);

impl schemars::JsonSchema for ScheduleData {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScheduleData".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventScheduleStatus {
    /// `Ready`: the schedule is valid and runs. Reasons: `Scheduled`, `Suspended`,
    /// `InvalidSpec` (the message names the field), `PublishFailed` (retried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The scheduled time of the last event published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The id of that event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// The next tick (RFC 3339), unless suspended or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The scheduled time of the last tick skipped because it was found later than
    /// `startingDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_time: Option<Time>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CustomResourceDefinition, as `herald-controlplane crd eventschedules` prints it.
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    use kube::CustomResourceExt as _;
    Ok(format!(
        "# Generated by `herald-controlplane crd eventschedules`; the Helm chart's copy is checked against it.\n{}",
        yaml_serde::to_string(&EventSchedule::crd())?
    ))
}

/// A checked spec: what the scheduler runs.
#[derive(Debug, Clone)]
pub struct Plan {
    cron: Cron,
    tz: chrono_tz::Tz,
    ty: String,
    source: String,
    data: Bytes,
    content_type: Option<String>,
    extensions: Vec<(String, String)>,
    deadline: Option<Duration>,
    pub suspend: bool,
}

/// Attributes a schedule sets itself; an extension cannot take their names.
const RESERVED: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "data",
    "time",
    "subject",
];

impl Plan {
    /// Checks the spec of the schedule `namespace/name`.
    pub fn new(spec: &EventScheduleSpec, namespace: &str, name: &str) -> Result<Plan, SpecError> {
        let cron = parse_cron(&spec.schedule)?;
        let tz = match spec.time_zone.as_deref() {
            None => chrono_tz::UTC,
            Some(z) => z.parse::<chrono_tz::Tz>().map_err(|_| {
                SpecError::new(
                    "spec.timeZone",
                    z,
                    "must be an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
                )
            })?,
        };
        let source = spec.source.clone().unwrap_or_else(|| {
            format!("/apis/herald.dev/v1alpha1/namespaces/{namespace}/eventschedules/{name}")
        });
        let (data, default_type) = match spec.data.as_ref().map(|d| &d.0) {
            None | Some(serde_json::Value::Null) => (Bytes::new(), None),
            Some(serde_json::Value::String(s)) => {
                (Bytes::from(s.clone().into_bytes()), Some("text/plain"))
            }
            Some(v) => (
                Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
                Some("application/json"),
            ),
        };
        if data.len() > MAX_SCHEDULE_DATA_BYTES {
            return Err(SpecError::new(
                "spec.data",
                &format!("{} bytes", data.len()),
                &format!("must be at most {MAX_SCHEDULE_DATA_BYTES} bytes"),
            ));
        }
        let content_type = spec
            .content_type
            .clone()
            .or_else(|| default_type.map(str::to_owned));
        let extensions: Vec<(String, String)> = spec
            .extensions
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if extensions.len() > MAX_EXTENSIONS {
            return Err(SpecError::new(
                "spec.extensions",
                &format!("{} attributes", extensions.len()),
                &format!("at most {MAX_EXTENSIONS} extension attributes"),
            ));
        }
        if let Some((k, _)) = extensions
            .iter()
            .find(|(k, _)| RESERVED.contains(&k.as_str()))
        {
            return Err(SpecError::new(
                &format!("spec.extensions.{k}"),
                k,
                "is an attribute the schedule sets itself; choose another name",
            ));
        }
        let deadline = match spec.starting_deadline_seconds {
            None => None,
            Some(s) if s < 0 => {
                return Err(SpecError::new(
                    "spec.startingDeadlineSeconds",
                    &s.to_string(),
                    "must not be negative",
                ));
            }
            Some(s) => Some(Duration::from_secs(s.unsigned_abs())),
        };
        let plan = Plan {
            cron,
            tz,
            ty: spec.type_.clone(),
            source,
            data,
            content_type,
            extensions,
            deadline,
            suspend: spec.suspend.unwrap_or(false),
        };
        // Every attribute is checked by the rules of the publish API, once, here: an event that
        // cannot be built is a spec error, not a failure at every tick.
        plan.event("00000000-0000-0000-0000-000000000000", Utc::now())
            .map_err(|e| {
                let (field, value) = match &e {
                    herald_core::event::EventError::Attribute { attribute, .. } => {
                        match attribute.as_str() {
                            "type" => ("spec.type".to_owned(), plan.ty.clone()),
                            "source" => ("spec.source".to_owned(), plan.source.clone()),
                            "datacontenttype" => (
                                "spec.contentType".to_owned(),
                                plan.content_type.clone().unwrap_or_default(),
                            ),
                            other => (format!("spec.extensions.{other}"), other.to_owned()),
                        }
                    }
                    _ => ("spec.extensions".to_owned(), String::new()),
                };
                SpecError::new(&field, &value, &e.to_string())
            })?;
        Ok(plan)
    }

    /// The tick due at `now`, given the last tick sent (or the resource's creation, when none
    /// was): the latest tick after `since` and not after `now`.
    pub fn due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
        let now = whole_second(now);
        let latest = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&self.tz), true)
            .ok()?
            .with_timezone(&Utc);
        if latest <= since {
            return None;
        }
        let late = (now - latest).to_std().unwrap_or_default();
        Some(match self.deadline {
            Some(d) if late > d => Due::TooLate(latest),
            _ => Due::Fire(latest),
        })
    }

    /// The first tick after `now`; `None` when the schedule has none left (`0 0 30 2 *`).
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&whole_second(now).with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The event of the tick `at` of the schedule with this uid.
    pub fn event(
        &self,
        uid: &str,
        at: DateTime<Utc>,
    ) -> Result<Event, herald_core::event::EventError> {
        let mut b = EventBuilder::new();
        b.set("specversion", "1.0".into())?;
        b.set("id", event_id(uid, at))?;
        b.set("source", self.source.clone())?;
        b.set("type", self.ty.clone())?;
        b.set("time", rfc3339(at))?;
        if let Some(ct) = &self.content_type {
            b.set("datacontenttype", ct.clone())?;
        }
        for (k, v) in &self.extensions {
            b.set(k, v.clone())?;
        }
        b.finish(self.data.clone())
    }
}

/// croner keeps the fraction of a second of the time it starts from (`next` after 10:17:00.93
/// would be 10:20:00.93): ticks are whole seconds.
fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// What [`Plan::due`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send the event of this tick.
    Fire(DateTime<Utc>),
    /// This tick was found later than `startingDeadlineSeconds` allows: skip it.
    TooLate(DateTime<Utc>),
}

/// The id of a tick's event: a name-based UUID (version 5) of the resource's uid and the
/// scheduled time, so every replica and every retry derives the same one.
pub fn event_id(uid: &str, at: DateTime<Utc>) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{uid}/{}", rfc3339(at)).as_bytes()).to_string()
}

/// The UUID namespace of schedule event ids (a fixed random UUID of herald's).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c0f_2d5e_8a1b_4f3c_9e7d_52a8_b1c4_e903);

/// Seconds precision, `Z`: what status fields and the `time` attribute show.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Five fields or a macro, as a `CronJob` takes them; seconds and years are refused.
fn parse_cron(schedule: &str) -> Result<Cron, SpecError> {
    let trimmed = schedule.trim();
    // robfig/cron (CronJob's parser) knows `@midnight`; croner does not.
    let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
        "0 0 * * *"
    } else {
        trimmed
    };
    if pattern.starts_with('@') {
        const MACROS: [&str; 6] = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@hourly",
        ];
        if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(pattern)) {
            return Err(SpecError::new(
                "spec.schedule",
                schedule,
                "the macros are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly",
            ));
        }
    } else if pattern.split_whitespace().count() != 5 {
        return Err(SpecError::new(
            "spec.schedule",
            schedule,
            "must have five fields (minute hour day-of-month month day-of-week), as a CronJob's",
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| {
            SpecError::new(
                "spec.schedule",
                schedule,
                &format!("is not a cron schedule: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn spec(schedule: &str) -> EventScheduleSpec {
        EventScheduleSpec {
            schedule: schedule.into(),
            type_: "report.due.v1".into(),
            ..Default::default()
        }
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, h, m, s).unwrap()
    }

    #[test]
    fn the_latest_missed_tick_is_due_once_never_a_burst() {
        let p = Plan::new(&spec("*/5 * * * *"), "ns", "s").unwrap();
        // Last sent at 10:00; at 10:17 the ticks 10:05, 10:10 and 10:15 were missed: one is due.
        assert_eq!(
            p.due(at(10, 0, 0), at(10, 17, 0)),
            Some(Due::Fire(at(10, 15, 0)))
        );
        // Once it is sent, nothing more until 10:20.
        assert_eq!(p.due(at(10, 15, 0), at(10, 19, 59)), None);
        assert_eq!(
            p.due(at(10, 15, 0), at(10, 20, 0)),
            Some(Due::Fire(at(10, 20, 0)))
        );
        assert_eq!(p.next(at(10, 17, 0)), Some(at(10, 20, 0)));
        // Ticks are whole seconds whatever the fraction of the time asked from (the benchmark
        // found first ticks up to a second late before this was so).
        let late = at(10, 17, 0) + chrono::Duration::milliseconds(930);
        assert_eq!(p.next(late), Some(at(10, 20, 0)));
        assert_eq!(
            p.due(
                at(10, 0, 0),
                at(10, 20, 0) + chrono::Duration::milliseconds(1)
            ),
            Some(Due::Fire(at(10, 20, 0)))
        );
        assert_eq!(p.next(at(10, 20, 0)), Some(at(10, 25, 0)));
    }

    #[test]
    fn a_tick_later_than_the_deadline_is_skipped() {
        let mut s = spec("0 * * * *");
        s.starting_deadline_seconds = Some(600);
        let p = Plan::new(&s, "ns", "s").unwrap();
        // 10:00 found at 10:09:59: within 600 s.
        assert_eq!(
            p.due(at(8, 0, 0), at(10, 9, 59)),
            Some(Due::Fire(at(10, 0, 0)))
        );
        // Found at 10:10:01: too late.
        assert_eq!(
            p.due(at(8, 0, 0), at(10, 10, 1)),
            Some(Due::TooLate(at(10, 0, 0)))
        );
        // Without a deadline it is always sent.
        let p = Plan::new(&spec("0 * * * *"), "ns", "s").unwrap();
        assert_eq!(
            p.due(at(8, 0, 0), at(10, 59, 0)),
            Some(Due::Fire(at(10, 0, 0)))
        );
    }

    #[test]
    fn time_zones_and_macros() {
        let mut s = spec("@daily");
        s.time_zone = Some("Europe/Berlin".into());
        let p = Plan::new(&s, "ns", "s").unwrap();
        // Midnight in Berlin is 23:00 UTC in December.
        assert_eq!(p.next(at(10, 0, 0)), Some(at(23, 0, 0)));
        let p = Plan::new(&spec("@midnight"), "ns", "s").unwrap();
        assert_eq!(
            p.next(at(10, 0, 0)),
            Some(Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap())
        );
    }

    #[test]
    fn errors_name_the_field_the_value_and_the_rule() {
        let mut s = spec("*/5 * * * *");
        s.time_zone = Some("Mars/Olympus".into());
        let e = Plan::new(&s, "ns", "s").unwrap_err().to_string();
        assert!(
            e.contains("spec.timeZone") && e.contains("Mars/Olympus") && e.contains("IANA"),
            "{e}"
        );
        for bad in [
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "@every 5m",
            "",
            "a b c d e",
        ] {
            let e = Plan::new(&spec(bad), "ns", "s").unwrap_err().to_string();
            assert!(e.starts_with("spec.schedule"), "{bad:?}: {e}");
        }
        let mut s = spec("@hourly");
        s.extensions = Some([("id".to_owned(), "x".to_owned())].into());
        let e = Plan::new(&s, "ns", "s").unwrap_err().to_string();
        assert!(e.contains("spec.extensions.id"), "{e}");
        let mut s = spec("@hourly");
        s.extensions = Some([("Bad-Name".to_owned(), "x".to_owned())].into());
        let e = Plan::new(&s, "ns", "s").unwrap_err().to_string();
        assert!(e.contains("spec.extensions.Bad-Name"), "{e}");
        let mut s = spec("@hourly");
        s.content_type = Some("not a media type".into());
        let e = Plan::new(&s, "ns", "s").unwrap_err().to_string();
        assert!(e.contains("spec.contentType"), "{e}");
        let mut s = spec("@hourly");
        s.starting_deadline_seconds = Some(-1);
        assert!(Plan::new(&s, "ns", "s").is_err());
    }

    #[test]
    fn a_schedule_with_no_tick_left_is_no_panic() {
        let p = Plan::new(&spec("0 0 30 2 *"), "ns", "s").unwrap();
        assert_eq!(p.next(at(10, 0, 0)), None);
        assert_eq!(p.due(at(9, 0, 0), at(10, 0, 0)), None);
    }

    #[test]
    fn the_event_of_a_tick() {
        let mut s = spec("@hourly");
        s.data = Some(ScheduleData(serde_json::json!({"report": "daily"})));
        s.extensions = Some([("tenant".to_owned(), "acme".to_owned())].into());
        let p = Plan::new(&s, "shop", "nightly").unwrap();
        let e = p.event("uid-1", at(2, 0, 0)).unwrap();
        assert_eq!(
            e.source,
            "/apis/herald.dev/v1alpha1/namespaces/shop/eventschedules/nightly"
        );
        assert_eq!(e.ty, "report.due.v1");
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(&e.data[..], br#"{"report":"daily"}"#);
        assert_eq!(e.attribute("time"), Some("2026-12-02T02:00:00Z"));
        assert_eq!(e.attribute("tenant"), Some("acme"));
        // The id is the same for the same uid and tick, and differs otherwise.
        assert_eq!(e.id, event_id("uid-1", at(2, 0, 0)));
        assert_ne!(e.id, event_id("uid-2", at(2, 0, 0)));
        assert_ne!(e.id, event_id("uid-1", at(3, 0, 0)));
        let mut s = spec("@hourly");
        s.data = Some(ScheduleData("ping".into()));
        let e = Plan::new(&s, "ns", "n")
            .unwrap()
            .event("u", at(2, 0, 0))
            .unwrap();
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(&e.data[..], b"ping");
    }
}

#[cfg(test)]
mod dst {
    use super::*;
    use chrono::TimeZone as _;

    /// What docs/SOURCES.md promises for the hours a daylight-saving change skips or repeats.
    #[test]
    fn daylight_saving_changes() {
        let mut s = EventScheduleSpec {
            schedule: "30 2 * * *".into(),
            type_: "t".into(),
            ..Default::default()
        };
        s.time_zone = Some("Europe/Berlin".into());
        let p = Plan::new(&s, "ns", "n").unwrap();
        let gap = p
            .next(Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap())
            .unwrap();
        let overlap1 = p
            .next(Utc.with_ymd_and_hms(2026, 10, 24, 12, 0, 0).unwrap())
            .unwrap();
        let overlap2 = p.next(overlap1).unwrap();
        // 02:30 does not exist on 29 March in Berlin: the tick comes at 03:00 local (01:00 UTC).
        assert_eq!(gap, Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap());
        // 02:30 happens twice on 25 October: once (the first), then the next day.
        assert_eq!(
            overlap1,
            Utc.with_ymd_and_hms(2026, 10, 25, 0, 30, 0).unwrap()
        );
        assert_eq!(
            overlap2,
            Utc.with_ymd_and_hms(2026, 10, 26, 1, 30, 0).unwrap()
        );
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use chrono::TimeZone as _;

    /// Whatever a user writes in `schedule` and `timeZone`: an error or a plan, never a panic,
    /// and every plan answers `due` and `next` quickly.
    #[test]
    fn any_schedule_is_an_error_or_a_plan() {
        let tokens = [
            "*",
            "0",
            "59",
            "60",
            "*/0",
            "*/1",
            "0-59/0",
            "5-1",
            "L",
            "W",
            "1W",
            "5#6",
            "MON",
            "jan",
            "1,2,,3",
            "-",
            "?",
            "¼",
            "99999999999999999999",
            "",
            "*/61",
            "LW",
            "7",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut pick = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            tokens[(seed % tokens.len() as u64) as usize]
        };
        let at = Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap();
        for _ in 0..3000 {
            let schedule = (0..5).map(|_| pick()).collect::<Vec<_>>().join(" ");
            let spec = EventScheduleSpec {
                schedule: schedule.clone(),
                type_: "t".into(),
                ..Default::default()
            };
            if let Ok(p) = Plan::new(&spec, "ns", "n") {
                let _ = p.next(at);
                let _ = p.due(at - chrono::Duration::days(400), at);
            }
        }
        for z in [
            "",
            "UTC+1",
            "../../etc/passwd",
            "Europe/",
            "europe/berlin",
            "Etc/GMT+14",
        ] {
            let spec = EventScheduleSpec {
                schedule: "@hourly".into(),
                time_zone: Some(z.into()),
                type_: "t".into(),
                ..Default::default()
            };
            let _ = Plan::new(&spec, "ns", "n");
        }
    }
}
