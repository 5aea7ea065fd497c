//! Kyma's legacy publish API, `POST /{application}/v1/events`, kept wire compatible so Kyma apps
//! move over unchanged: the same request body, the same validation order and messages, the same
//! success body and error shapes as Kyma's eventing-publisher-proxy.
//!
//! The event becomes a CloudEvent with `type = <event-type>.<event-type-version>`,
//! `source = <application>`, extension `eventtypeversion`, `datacontenttype: application/json`, and
//! the `data` JSON bytes exactly as sent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{Event, EventBuilder};

/// The legacy request body.
#[derive(Deserialize)]
struct LegacyRequest<'a> {
    #[serde(rename = "event-type", default)]
    event_type: String,
    #[serde(rename = "event-type-version", default)]
    event_type_version: String,
    #[serde(rename = "event-id", default)]
    event_id: String,
    #[serde(rename = "event-time", default)]
    event_time: String,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Kyma's error body (`api.Error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyError {
    pub status: u16,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "moreInfo", default, skip_serializing_if = "String::is_empty")]
    pub more_info: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<LegacyErrorDetail>,
}

/// Kyma's `api.ErrorDetail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyErrorDetail {
    pub field: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(rename = "moreInfo", default)]
    pub more_info: String,
}

/// Kyma's success body (`api.PublishResponse`), sent with `200`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LegacyOk {
    #[serde(rename = "event-id")]
    pub event_id: String,
    pub status: String,
    pub reason: String,
}

impl LegacyError {
    /// `ErrorResponseBadRequest`: the body is not a legacy event at all.
    pub fn bad_payload(more_info: String) -> Self {
        LegacyError {
            status: 400,
            kind: "bad_payload_syntax".into(),
            message: "Bad payload syntax".into(),
            more_info,
            details: vec![],
        }
    }

    /// `ErrorResponseRequestBodyTooLarge`.
    pub fn too_large(more_info: String) -> Self {
        LegacyError {
            status: 413,
            kind: "request_body_too_large".into(),
            message: "Request body too large".into(),
            more_info,
            details: vec![],
        }
    }

    fn field(field: &str, missing: bool) -> Self {
        let (kind, message) = if missing {
            ("missing_field", "Missing field")
        } else {
            ("invalid_field", "Invalid field")
        };
        LegacyError {
            status: 400,
            kind: "validation_violation".into(),
            message: message.into(),
            more_info: String::new(),
            details: vec![LegacyErrorDetail {
                field: field.into(),
                kind: kind.into(),
                message: message.into(),
                more_info: String::new(),
            }],
        }
    }

    /// `ErrorResponse(status, err)`: any other failure, with herald's message.
    pub fn other(status: u16, message: String) -> Self {
        LegacyError {
            status,
            kind: String::new(),
            message,
            more_info: String::new(),
            details: vec![],
        }
    }
}

/// Kyma's event-type-version rule (its regexp `[a-zA-Z0-9]+` is unanchored, so it only asks for one
/// alphanumeric character; herald keeps that, to accept everything Kyma accepted).
fn valid_version(v: &str) -> bool {
    v.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// Kyma's event-id rule: a UUID.
fn valid_event_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Converts a legacy request into a CloudEvent, validating in Kyma's order.
pub fn to_event(application: &str, body: &Bytes) -> Result<Event, LegacyError> {
    if body.is_empty() {
        return Err(LegacyError::bad_payload("Bad payload syntax".into()));
    }
    let req: LegacyRequest =
        serde_json::from_slice(body).map_err(|e| LegacyError::bad_payload(e.to_string()))?;
    if req.event_type.is_empty() {
        return Err(LegacyError::field("event-type", true));
    }
    if req.event_type_version.is_empty() {
        return Err(LegacyError::field("event-type-version", true));
    }
    if !valid_version(&req.event_type_version) {
        return Err(LegacyError::field("event-type-version", false));
    }
    if req.event_time.is_empty() {
        return Err(LegacyError::field("event-time", true));
    }
    if chrono::DateTime::parse_from_rfc3339(&req.event_time).is_err() {
        return Err(LegacyError::field("event-time", false));
    }
    if !req.event_id.is_empty() && !valid_event_id(&req.event_id) {
        return Err(LegacyError::field("event-id", false));
    }
    let data = match req.data {
        None => return Err(LegacyError::field("data", true)),
        Some(raw) if raw.get() == "null" || raw.get() == "\"\"" => {
            return Err(LegacyError::field("data", true));
        }
        Some(raw) => body.slice_ref(raw.get().as_bytes()),
    };
    let id = if req.event_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        req.event_id
    };
    let mut b = EventBuilder::new();
    let built = (|| {
        b.set("specversion", "1.0".into())?;
        b.set("id", id)?;
        b.set("source", application.to_owned())?;
        b.set(
            "type",
            format!("{}.{}", req.event_type, req.event_type_version),
        )?;
        b.set("time", req.event_time)?;
        b.set("eventtypeversion", req.event_type_version)?;
        b.set("datacontenttype", "application/json".into())?;
        Ok::<_, crate::event::EventError>(())
    })();
    built
        .and_then(|()| b.finish(data))
        .map_err(|e| match e.attribute() {
            Some("source") => LegacyError::other(400, format!("application name in the path: {e}")),
            _ => LegacyError::other(400, e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(body: &str) -> Result<Event, LegacyError> {
        to_event("shop", &Bytes::from(body.to_owned()))
    }

    #[test]
    fn converts_like_kyma() {
        let ev = conv(r#"{"event-type":"order.created","event-type-version":"v1","event-id":"8945ec08-256b-11eb-9928-acde48001122","event-time":"2020-04-02T21:37:00Z","data":{"b":2,"a":1}}"#).unwrap();
        assert_eq!(ev.ty, "order.created.v1");
        assert_eq!(ev.source, "shop");
        assert_eq!(ev.id, "8945ec08-256b-11eb-9928-acde48001122");
        assert_eq!(ev.attribute("eventtypeversion"), Some("v1"));
        assert_eq!(ev.attribute("time"), Some("2020-04-02T21:37:00Z"));
        assert_eq!(&ev.data[..], br#"{"b":2,"a":1}"#);
        let generated = conv(r#"{"event-type":"a","event-type-version":"v1","event-time":"2020-04-02T21:37:00Z","data":"x"}"#).unwrap();
        assert_eq!(generated.id.len(), 36);
    }

    #[test]
    fn errors_in_kymas_order_and_shape() {
        let field = |body: &str| {
            let e = conv(body).unwrap_err();
            assert_eq!((e.status, e.kind.as_str()), (400, "validation_violation"));
            (e.details[0].field.clone(), e.details[0].kind.clone())
        };
        let t = r#""event-time":"2020-04-02T21:37:00Z""#;
        assert_eq!(
            field(r#"{"event-type-version":"v1"}"#),
            ("event-type".into(), "missing_field".into())
        );
        assert_eq!(
            field(r#"{"event-type":"a"}"#),
            ("event-type-version".into(), "missing_field".into())
        );
        assert_eq!(
            field(r#"{"event-type":"a","event-type-version":"-"}"#),
            ("event-type-version".into(), "invalid_field".into())
        );
        assert_eq!(
            field(r#"{"event-type":"a","event-type-version":"v1"}"#),
            ("event-time".into(), "missing_field".into())
        );
        assert_eq!(
            field(r#"{"event-type":"a","event-type-version":"v1","event-time":"now"}"#),
            ("event-time".into(), "invalid_field".into())
        );
        assert_eq!(
            field(&format!(
                r#"{{"event-type":"a","event-type-version":"v1",{t},"event-id":"x"}}"#
            )),
            ("event-id".into(), "invalid_field".into())
        );
        assert_eq!(
            field(&format!(
                r#"{{"event-type":"a","event-type-version":"v1",{t}}}"#
            )),
            ("data".into(), "missing_field".into())
        );
        assert_eq!(
            field(&format!(
                r#"{{"event-type":"a","event-type-version":"v1",{t},"data":""}}"#
            )),
            ("data".into(), "missing_field".into())
        );
        let e = conv("{nope").unwrap_err();
        assert_eq!(
            (e.status, e.kind.as_str(), e.message.as_str()),
            (400, "bad_payload_syntax", "Bad payload syntax")
        );
        let json = serde_json::to_value(LegacyError::field("data", true)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":400,"type":"validation_violation","message":"Missing field",
                "details":[{"field":"data","type":"missing_field","message":"Missing field","moreInfo":""}]})
        );
    }
}
