//! The CloudEvent as herald stores it, and its decoding from the three HTTP content modes.
//!
//! herald keeps an event as its context attributes (strings, in the form the HTTP binding writes
//! them) plus the data bytes **exactly as received**. That is why this module decodes the HTTP
//! binding itself instead of going through `cloudevents-sdk`'s `Event`: the SDK parses structured
//! `data` into a `serde_json::Value` (keys reordered, numbers rewritten) and normalises `time`, and a
//! publisher must get back the bytes it sent. The SDK is used by the end-to-end tests as the
//! independent client that proves wire compatibility.
//!
//! Every rule violation is an [`EventError`] naming the attribute and the rule, which the publish
//! API turns into `400`. The size limits of [`crate::limits`] are checked here too, so an event
//! that would not fit NATS (a subject past its control line) is refused before it gets there.

use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::{
    MAX_ATTRIBUTE_NAME_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_TOTAL_BYTES, MAX_BATCH_EVENTS, MAX_ID_BYTES, MAX_SOURCE_BYTES, MAX_TYPE_BYTES,
    MAX_URI_BYTES,
};

/// Header prefix of binary-mode attributes, in HTTP and in NATS.
pub const CE_PREFIX: &str = "ce-";

/// Characters the HTTP binding says must be percent-encoded in a header value (non-ASCII bytes are
/// always encoded by `percent-encoding`). NATS headers carry the same form, so delivery can copy them.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// A CloudEvents 1.0 event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    /// Optional attributes (`time`, `dataschema`, `subject`) and extensions, in arrival order, in
    /// their canonical string form.
    pub attributes: Vec<(String, String)>,
    pub data: Bytes,
}

impl Event {
    /// The value of an optional attribute or extension.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A CloudEvent that breaks a rule of the specification (or of herald's publish API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// An attribute is missing or invalid.
    #[error("attribute `{attribute}`: {rule}")]
    Attribute { attribute: String, rule: String },
    /// The body is not what the content type promises.
    #[error("body: {0}")]
    Body(String),
    /// The attributes together break a rule (their total size).
    #[error("attributes: {0}")]
    Attributes(String),
    /// A batch holds more events than the limit.
    #[error("a batch holds at most {0} events")]
    BatchTooLarge(usize),
}

impl EventError {
    fn attr(attribute: &str, rule: impl Into<String>) -> Self {
        EventError::Attribute {
            attribute: attribute.to_owned(),
            rule: rule.into(),
        }
    }

    /// The attribute the error is about, if any.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            EventError::Attribute { attribute, .. } => Some(attribute),
            EventError::Body(_) | EventError::Attributes(_) | EventError::BatchTooLarge(_) => None,
        }
    }
}

/// The size limit of an attribute's value.
fn max_value_bytes(name: &str) -> usize {
    match name {
        "type" => MAX_TYPE_BYTES,
        "source" => MAX_SOURCE_BYTES,
        "id" => MAX_ID_BYTES,
        "subject" | "dataschema" | "datacontenttype" => MAX_URI_BYTES,
        _ => MAX_ATTRIBUTE_VALUE_BYTES,
    }
}

/// Distributed trace context that arrived with the HTTP request (W3C Trace Context headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        TraceContext {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

/// Collects attributes from any mode and checks them once, so every mode follows the same rules.
#[derive(Default)]
pub struct EventBuilder {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    datacontenttype: Option<String>,
    attributes: Vec<(String, String)>,
}

impl EventBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an attribute; rejects bad names, attributes given twice, values over their size
    /// limit and more than [`MAX_ATTRIBUTES`] attributes.
    pub fn set(&mut self, name: &str, value: String) -> Result<(), EventError> {
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            let shown: String = name.chars().take(MAX_ATTRIBUTE_NAME_BYTES).collect();
            return Err(EventError::attr(
                &shown,
                format!(
                    "the name is {} bytes long; the limit is {MAX_ATTRIBUTE_NAME_BYTES}",
                    name.len()
                ),
            ));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(EventError::attr(
                name,
                "attribute names are lower-case letters a-z and digits 0-9",
            ));
        }
        let limit = max_value_bytes(name);
        if value.len() > limit {
            return Err(EventError::attr(
                name,
                format!("is {} bytes long; the limit is {limit}", value.len()),
            ));
        }
        let slot = match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.ty,
            "datacontenttype" => &mut self.datacontenttype,
            "data" => {
                return Err(EventError::attr(
                    name,
                    "`data` is reserved and cannot be an attribute",
                ));
            }
            _ => {
                if self.attributes.iter().any(|(n, _)| n == name) {
                    return Err(EventError::attr(name, "given more than once"));
                }
                // The five attributes with their own slot count too.
                if self.attributes.len() + 5 >= MAX_ATTRIBUTES {
                    return Err(EventError::attr(
                        name,
                        format!("an event has at most {MAX_ATTRIBUTES} attributes"),
                    ));
                }
                self.attributes.push((name.to_owned(), value));
                return Ok(());
            }
        };
        if slot.is_some() {
            return Err(EventError::attr(name, "given more than once"));
        }
        *slot = Some(value);
        Ok(())
    }

    fn has(&self, name: &str) -> bool {
        match name {
            "specversion" => self.specversion.is_some(),
            "id" => self.id.is_some(),
            "source" => self.source.is_some(),
            "type" => self.ty.is_some(),
            "datacontenttype" => self.datacontenttype.is_some(),
            _ => self.attributes.iter().any(|(n, _)| n == name),
        }
    }

    /// Sets `name` only when it was not given.
    pub fn set_default(
        &mut self,
        name: &str,
        value: impl FnOnce() -> String,
    ) -> Result<(), EventError> {
        if self.has(name) {
            Ok(())
        } else {
            self.set(name, value())
        }
    }

    /// Validates everything and returns the event.
    pub fn finish(self, data: Bytes) -> Result<Event, EventError> {
        match self.specversion.as_deref() {
            None => return Err(EventError::attr("specversion", "required")),
            Some("1.0") => {}
            Some(_) => {
                return Err(EventError::attr(
                    "specversion",
                    "must be \"1.0\" (herald speaks CloudEvents 1.0)",
                ));
            }
        }
        let id = non_empty("id", self.id)?;
        let source = non_empty("source", self.source)?;
        if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EventError::attr(
                "source",
                "must be a URI-reference (no whitespace or control characters)",
            ));
        }
        let ty = non_empty("type", self.ty)?;
        if self
            .datacontenttype
            .as_deref()
            .is_some_and(|ct| !is_media_type(ct))
        {
            return Err(EventError::attr(
                "datacontenttype",
                "must be a media type such as application/json (RFC 2046)",
            ));
        }
        let total: usize = [&self.specversion, &self.datacontenttype]
            .into_iter()
            .flatten()
            .map(|v| v.len() + 16)
            .chain([&id, &source, &ty].map(|v| v.len() + 6))
            .chain(self.attributes.iter().map(|(n, v)| n.len() + v.len()))
            .sum();
        if total > MAX_ATTRIBUTES_TOTAL_BYTES {
            return Err(EventError::Attributes(format!(
                "names and values of all attributes take {total} bytes; the limit is {MAX_ATTRIBUTES_TOTAL_BYTES}"
            )));
        }
        for (name, value) in &self.attributes {
            let rule = match name.as_str() {
                "time" if chrono::DateTime::parse_from_rfc3339(value).is_err() => {
                    "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"
                }
                "dataschema" if !is_absolute_uri(value) => "must be an absolute URI",
                "subject" if value.is_empty() => "must not be empty when present",
                _ => continue,
            };
            return Err(EventError::attr(name, rule));
        }
        Ok(Event {
            id,
            source,
            ty,
            datacontenttype: self.datacontenttype,
            attributes: self.attributes,
            data,
        })
    }
}

fn non_empty(name: &str, v: Option<String>) -> Result<String, EventError> {
    match v {
        None => Err(EventError::attr(name, "required")),
        Some(v) if v.is_empty() => Err(EventError::attr(name, "must be a non-empty string")),
        Some(v) => Ok(v),
    }
}

fn is_media_type(ct: &str) -> bool {
    // Parameters may hold anything HTTP carries, but no control character: the value becomes a
    // NATS header, which a line break would end.
    if ct.chars().any(|c| c.is_control() && c != '\t') {
        return false;
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence.split_once('/') {
        Some((t, s)) => !t.is_empty() && !s.is_empty() && !essence.contains(char::is_whitespace),
        None => false,
    }
}

fn is_absolute_uri(v: &str) -> bool {
    match v.split_once(':') {
        Some((scheme, _)) => {
            let mut b = scheme.bytes();
            b.next().is_some_and(|c| c.is_ascii_alphabetic())
                && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
                && !v.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Whether a media type says the data is JSON (so structured `data` is kept as JSON text).
/// The media type without parameters, lower case: `application/json; charset=utf-8` →
/// `application/json`.
pub fn media_essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub fn is_json(ct: &str) -> bool {
    let essence = media_essence(ct);
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Encodes an attribute value for an HTTP or NATS header.
pub fn encode_header_value(v: &str) -> std::borrow::Cow<'_, str> {
    utf8_percent_encode(v, HEADER_VALUE).into()
}

/// Decodes a binary-mode header value.
pub fn decode_header_value(attribute: &str, raw: &http::HeaderValue) -> Result<String, EventError> {
    let s = raw.to_str().map_err(|_| {
        EventError::attr(
            attribute,
            "header value must be visible ASCII; percent-encode other characters",
        )
    })?;
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| EventError::attr(attribute, "percent-encoded value is not UTF-8"))
}

/// Writes a stored event (NATS binary form: `ce-*` headers, `content-type`, data as the payload)
/// as one `application/cloudevents+json` document. JSON data is embedded as it is stored (same
/// bytes, same key order); other UTF-8 text goes into `data` as a string, anything else into
/// `data_base64`. Attribute values are written as JSON strings, the form the binary headers carry.
pub fn to_structured<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 256);
    out.push(b'{');
    let mut first = true;
    let mut field = |out: &mut Vec<u8>, name: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // Strings always serialize.
        let _ = serde_json::to_writer(&mut *out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    };
    let mut content_type = None;
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(attr) = lower.strip_prefix(CE_PREFIX) {
            let value = percent_decode_str(value).decode_utf8_lossy();
            field(&mut out, attr, &value);
        } else if lower == "content-type" {
            field(&mut out, "datacontenttype", value);
            content_type = Some(value);
        }
    }
    if !data.is_empty() {
        let text = std::str::from_utf8(data).ok();
        let json = content_type.is_some_and(is_json)
            && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
        if json {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        } else if let Some(text) = text.filter(|_| content_type.is_some_and(is_text)) {
            field(&mut out, "data", text);
        } else {
            use base64::Engine as _;
            field(
                &mut out,
                "data_base64",
                &base64::engine::general_purpose::STANDARD.encode(data),
            );
        }
    }
    out.push(b'}');
    out
}

/// Media types whose data is text, written to structured `data` as a JSON string.
fn is_text(ct: &str) -> bool {
    let essence = media_essence(ct);
    essence.starts_with("text/") || essence.ends_with("+xml") || essence == "application/xml"
}

/// Reads the `ce-*` headers and `Content-Type` of a binary-mode request into `b`.
pub fn read_binary_headers(
    b: &mut EventBuilder,
    headers: &http::HeaderMap,
) -> Result<(), EventError> {
    for (name, value) in headers {
        let name = name.as_str();
        if let Some(attr) = name.strip_prefix(CE_PREFIX) {
            b.set(attr, decode_header_value(attr, value)?)?;
        }
    }
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().map_err(|_| {
            EventError::attr("datacontenttype", "Content-Type must be visible ASCII")
        })?;
        b.set("datacontenttype", ct.to_owned())?;
    }
    Ok(())
}

/// Binary mode: attributes in `ce-*` headers, the body is the data.
pub fn from_binary(headers: &http::HeaderMap, body: Bytes) -> Result<Event, EventError> {
    let mut b = EventBuilder::new();
    read_binary_headers(&mut b, headers)?;
    b.finish(body)
}

/// The members of a JSON object in order, values left unparsed, duplicates detected.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object (one CloudEvent)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, &'de RawValue)> = Vec::with_capacity(8);
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    // Attributes, `data` and `data_base64`: the duplicate check below is
                    // quadratic, so the count is bounded before it.
                    if out.len() >= MAX_ATTRIBUTES + 2 {
                        return Err(serde::de::Error::custom(format_args!(
                            "more than {MAX_ATTRIBUTES} attributes"
                        )));
                    }
                    if out.iter().any(|(n, _)| *n == k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "member `{k}` appears twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Structured mode: one JSON object. `body` is the buffer `json` was cut from, so `data` can be
/// kept as a zero-copy slice of it.
pub fn from_structured(body: &Bytes, json: &[u8]) -> Result<Event, EventError> {
    let members: Members =
        serde_json::from_slice(json).map_err(|e| EventError::Body(format!("invalid JSON: {e}")))?;
    let mut b = EventBuilder::new();
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<&RawValue> = None;
    for (name, raw) in members.0 {
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_base64 = Some(raw),
            _ => {
                let value: serde_json::Value = serde_json::from_str(raw.get())
                    .map_err(|e| EventError::Body(format!("invalid JSON: {e}")))?;
                let value = match value {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Bool(v) => v.to_string(),
                    serde_json::Value::Number(_) => raw.get().to_owned(),
                    _ => {
                        return Err(EventError::attr(
                            &name,
                            "must be a string, number or boolean",
                        ));
                    }
                };
                b.set(&name, value)?;
            }
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EventError::attr(
                "data_base64",
                "`data` and `data_base64` are mutually exclusive",
            ));
        }
        (None, Some(raw)) => {
            let s: Option<String> = serde_json::from_str(raw.get())
                .map_err(|_| EventError::attr("data_base64", "must be a base64 string"))?;
            match s {
                None => Bytes::new(),
                Some(s) => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(s.as_bytes())
                        .map(Bytes::from)
                        .map_err(|_| {
                            EventError::attr("data_base64", "must be standard base64 (RFC 4648)")
                        })?
                }
            }
        }
        (Some(raw), None) if raw.get() == "null" => Bytes::new(),
        (Some(raw), None) => {
            match b.datacontenttype.as_deref() {
                // No datacontenttype means JSON (JSON event format §3.1); say so in the binary form
                // we store, or a consumer could not tell.
                None => b.datacontenttype = Some("application/json".to_owned()),
                Some(ct) if is_json(ct) => {}
                Some(_) if raw.get().starts_with('"') => {
                    // Non-JSON data carried as a JSON string: the data is the string's content.
                    let s: String = serde_json::from_str(raw.get())
                        .map_err(|e| EventError::Body(format!("invalid JSON: {e}")))?;
                    return b.finish(Bytes::from(s));
                }
                Some(_) => {}
            }
            slice_of(body, raw.get().as_bytes())
        }
        (None, None) => Bytes::new(),
    };
    b.finish(data)
}

/// `part` as a zero-copy slice of `body` when it lies inside it, else a copy.
fn slice_of(body: &Bytes, part: &[u8]) -> Bytes {
    let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= end {
        body.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// The elements of a JSON array, left unparsed, at most [`MAX_BATCH_EVENTS`].
struct Items<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for Items<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Items<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON array of CloudEvents")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    if out.len() == MAX_BATCH_EVENTS {
                        return Err(serde::de::Error::custom(TOO_MANY));
                    }
                    out.push(item);
                }
                Ok(Items(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// What [`Items`] says past the limit (recognised by [`from_batch`]).
const TOO_MANY: &str = "too many events in the batch";

/// Batch mode: a JSON array of at most [`MAX_BATCH_EVENTS`] structured events. The outer error
/// is for a body that is not such an array; each element then succeeds or fails on its own.
pub fn from_batch(body: &Bytes) -> Result<Vec<Result<Event, EventError>>, EventError> {
    let items: Items = serde_json::from_slice(body).map_err(|e| {
        if e.to_string().starts_with(TOO_MANY) {
            EventError::BatchTooLarge(MAX_BATCH_EVENTS)
        } else {
            EventError::Body(format!("a batch must be a JSON array of CloudEvents: {e}"))
        }
    })?;
    Ok(items
        .0
        .into_iter()
        .map(|raw| from_structured(body, raw.get().as_bytes()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_from_the_stored_form() {
        let h = [
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b"),
            ("ce-type", "order.created.v1"),
            ("ce-source", "shop"),
            ("content-type", "application/json"),
            ("traceparent", "00-x"),
        ];
        let doc = to_structured(h.iter().copied(), br#"{"z":1,"a":[2]}"#);
        assert_eq!(
            std::str::from_utf8(&doc).unwrap(),
            r#"{"specversion":"1.0","id":"a b","type":"order.created.v1","source":"shop","datacontenttype":"application/json","data":{"z":1,"a":[2]}}"#
        );
        let text = to_structured(
            [("ce-id", "1"), ("content-type", "text/plain")].into_iter(),
            b"hi \"x\"",
        );
        assert!(
            text.ends_with(br#""data":"hi \"x\""}"#),
            "{}",
            String::from_utf8_lossy(&text)
        );
        let bin = to_structured([("ce-id", "1")].into_iter(), &[0xff, 0]);
        assert!(bin.ends_with(br#""data_base64":"/wA="}"#));
        // Roundtrip: what herald writes, it reads back with the same data bytes.
        let back = from_structured(&Bytes::from(doc.clone()), &doc).unwrap();
        assert_eq!(back.data.as_ref(), br#"{"z":1,"a":[2]}"#);
    }
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const MIN: &[(&str, &str)] = &[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "shop"),
        ("ce-type", "order.created.v1"),
    ];

    #[test]
    fn binary_keeps_attributes_extensions_and_bytes() {
        let mut h = headers(MIN);
        h.insert(
            "ce-myext",
            HeaderValue::from_static("caf%C3%A9%20au%20lait"),
        );
        h.insert(
            "ce-time",
            HeaderValue::from_static("2024-05-01T12:00:00.123456789+02:00"),
        );
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        let ev = from_binary(&h, Bytes::from_static(b"{\"b\":1,\"a\":1.0}")).unwrap();
        assert_eq!(ev.attribute("myext"), Some("café au lait"));
        assert_eq!(
            ev.attribute("time"),
            Some("2024-05-01T12:00:00.123456789+02:00")
        );
        assert_eq!(
            ev.datacontenttype.as_deref(),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(&ev.data[..], b"{\"b\":1,\"a\":1.0}");
    }

    #[test]
    fn binary_errors_name_the_attribute() {
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (
                &[("ce-id", "1"), ("ce-source", "s"), ("ce-type", "t")],
                "specversion",
            ),
            (
                &[
                    ("ce-specversion", "0.3"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                "specversion",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                "id",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", ""),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                "id",
            ),
            (
                &[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")],
                "source",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                ],
                "type",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("ce-time", "yesterday"),
                ],
                "time",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("ce-dataschema", "no scheme"),
                ],
                "dataschema",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("ce-Bad_Name", "x"),
                ],
                "bad_name",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-id", "2"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                "id",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("ce-x", "%FF"),
                ],
                "x",
            ),
            (
                &[
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                    ("content-type", "json"),
                ],
                "datacontenttype",
            ),
        ];
        // Structured mode can carry what no HTTP header can: a line break in a parameter.
        let body = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain; a=\nb"}"#,
        );
        let err = from_structured(&body, &body).unwrap_err();
        assert_eq!(err.attribute(), Some("datacontenttype"));
        for (h, attr) in cases {
            let err = from_binary(&headers(h), Bytes::new()).unwrap_err();
            assert_eq!(err.attribute(), Some(*attr), "{h:?} -> {err}");
        }
    }

    #[test]
    fn structured_keeps_json_data_bytes_exact() {
        let body = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"shop","type":"t","n":5,"ok":true,"nothing":null,
                "data":{"z":1,"a":12345678901234567890123,"f":1.50}}"#,
        );
        let ev = from_structured(&body, &body).unwrap();
        assert_eq!(
            &ev.data[..],
            br#"{"z":1,"a":12345678901234567890123,"f":1.50}"#
        );
        assert_eq!(ev.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(ev.attribute("n"), Some("5"));
        assert_eq!(ev.attribute("ok"), Some("true"));
        assert_eq!(ev.attribute("nothing"), None);
    }

    #[test]
    fn structured_text_and_base64_data() {
        let body = Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hi \"there\""}"#);
        assert_eq!(
            &from_structured(&body, &body).unwrap().data[..],
            b"hi \"there\""
        );
        let body = Bytes::from_static(
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAEC/w=="}"#,
        );
        assert_eq!(
            &from_structured(&body, &body).unwrap().data[..],
            &[0, 1, 2, 255]
        );
    }

    #[test]
    fn structured_errors() {
        let bad = |j: &str| {
            let b = Bytes::from(j.to_owned());
            from_structured(&b, &b).unwrap_err()
        };
        assert!(matches!(bad("{"), EventError::Body(_)));
        assert!(matches!(bad("[1]"), EventError::Body(_)));
        assert!(matches!(bad(r#"{"id":"1","id":"2"}"#), EventError::Body(_)));
        assert_eq!(
            bad(r#"{"specversion":"1.0","id":1,"source":"s","type":"t","x":{}}"#).attribute(),
            Some("x")
        );
        assert_eq!(bad(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#).attribute(), Some("data_base64"));
        assert_eq!(
            bad(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}"#)
                .attribute(),
            Some("data_base64")
        );
        assert_eq!(
            bad(r#"{"specversion":"1.0","source":"s","type":"t"}"#).attribute(),
            Some("id")
        );
    }

    #[test]
    fn batch_items_fail_alone() {
        let body = Bytes::from_static(
            br#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{"id":"2"},{"specversion":"1.0","id":"3","source":"s","type":"t","data":[1, 2]}]"#,
        );
        let items = from_batch(&body).unwrap();
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().unwrap_err().attribute(),
            Some("specversion")
        );
        assert_eq!(&items[2].as_ref().unwrap().data[..], b"[1, 2]");
        assert!(from_batch(&Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn size_limits_name_the_attribute_and_the_limit() {
        let with = |extra: &[(&'static str, String)]| {
            let mut h = headers(MIN);
            for (k, v) in extra {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            from_binary(&h, Bytes::new())
        };
        let e = with(&[("ce-type", "t".repeat(70_000))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute `type`: is 70000 bytes long; the limit is 256"
        );
        let e = with(&[("ce-source", "s".repeat(257))]).unwrap_err();
        assert_eq!(e.attribute(), Some("source"));
        assert!(with(&[("ce-source", "s".repeat(256))]).is_ok());
        let e = with(&[("ce-id", "i".repeat(257))]).unwrap_err();
        assert_eq!(e.attribute(), Some("id"));
        let e = with(&[("ce-subject", "s".repeat(1025))]).unwrap_err();
        assert_eq!(e.attribute(), Some("subject"));
        let e = with(&[("ce-myext", "v".repeat(4097))]).unwrap_err();
        assert_eq!(e.attribute(), Some("myext"));
        let name = format!("ce-{}", "n".repeat(65));
        let mut h = headers(MIN);
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
        let e = from_binary(&h, Bytes::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("the name is 65 bytes long; the limit is 64"),
            "{e}"
        );
        // Many extensions: at most 64 attributes, and 32 KiB of them in all.
        let mut h = headers(MIN);
        for i in 0..60 {
            h.insert(
                http::HeaderName::from_bytes(format!("ce-x{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let e = from_binary(&h, Bytes::new()).unwrap_err();
        assert!(e.to_string().contains("at most 64 attributes"), "{e}");
        let mut h = headers(MIN);
        for i in 0..9 {
            h.insert(
                http::HeaderName::from_bytes(format!("ce-x{i}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"v".repeat(4000)).unwrap(),
            );
        }
        let e = from_binary(&h, Bytes::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("attributes: names and values of all attributes take"),
            "{e}"
        );
        // Structured: the member count is bounded before the (quadratic) duplicate check.
        let members: Vec<String> = (0..100_000).map(|i| format!("\"x{i}\":1")).collect();
        let body = Bytes::from(format!("{{{}}}", members.join(",")));
        let e = from_structured(&body, &body).unwrap_err();
        assert!(e.to_string().contains("more than 64 attributes"), "{e}");
        // Batches: at most 1000 events.
        let one = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        let body = Bytes::from(format!("[{}]", vec![one; 1001].join(",")));
        assert_eq!(
            from_batch(&body).unwrap_err(),
            EventError::BatchTooLarge(1000)
        );
        let body = Bytes::from(format!("[{}]", vec![one; 1000].join(",")));
        assert_eq!(from_batch(&body).unwrap().len(), 1000);
    }

    #[test]
    fn header_values_roundtrip() {
        for v in ["plain", "a b", "100%", "\"q\"", "é ü", "line\nbreak"] {
            let enc = encode_header_value(v);
            assert!(
                enc.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
                "{enc}"
            );
            assert_eq!(
                decode_header_value("x", &HeaderValue::from_str(&enc).unwrap()).unwrap(),
                v
            );
        }
    }
}
