//! How an event is stored: the NATS form of the CloudEvents binding, which any broker of herald's
//! keeps. Every attribute is a `ce-<name>` header whose value is percent-encoded as in an HTTP
//! header (so delivery can copy headers as they are), `datacontenttype` is `content-type`, the
//! data is the payload; `traceparent` and `tracestate` travel beside them. The deduplication id
//! is `source` and `id` (each encoded, joined by a space, which the encoding never produces), so
//! a retried publish inside the stream's duplicate window is stored once.
//!
//! Stored messages are read back through [`HeaderView`], which a broker implements over its own
//! message type without copying, and [`StoredAttributes`] gives filters the event's attributes.

use std::borrow::Cow;

use bytes::Bytes;
use herald_cesql::Value;
use percent_encoding::percent_decode_str;

use crate::event::{CE_PREFIX, Event, TraceContext, encode_header_value};
use crate::subject::event_subject;

/// Headers of a stored message, in order. Names are compared without regard to case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Appends a header. A line break in the value (which no header of any binding can carry)
    /// becomes a space: every value herald writes is validated or encoded before it gets here,
    /// and this makes sure.
    pub fn push(&mut self, name: impl Into<String>, value: impl AsRef<str>) {
        self.0
            .push((name.into(), one_line(value.as_ref()).into_owned()));
    }

    /// Sets a header, replacing every value it had.
    pub fn set(&mut self, name: &str, value: impl AsRef<str>) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.push(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(&|n| n.eq_ignore_ascii_case(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A header value on one line.
pub fn one_line(v: &str) -> Cow<'_, str> {
    if v.contains(['\r', '\n']) {
        Cow::Owned(v.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(v)
    }
}

/// Read access to a stored message's headers, whatever type the broker keeps them in.
pub trait HeaderView {
    /// The first value of the first header whose name passes `wanted`.
    fn find(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&str>;
    /// Every header value, with its name, in the broker's order.
    fn each(&self, f: &mut dyn FnMut(&str, &str));
}

impl HeaderView for Headers {
    fn find(&self, wanted: &dyn Fn(&str) -> bool) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| wanted(n))
            .map(|(_, v)| v.as_str())
    }

    fn each(&self, f: &mut dyn FnMut(&str, &str)) {
        for (n, v) in &self.0 {
            f(n, v);
        }
    }
}

/// The header carrying the deduplication id in NATS (and the name herald uses for it anywhere).
pub const DEDUP_HEADER: &str = "Nats-Msg-Id";

/// A message as herald hands it to a broker: where, what, and the id that deduplicates it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// Stored once per id within the stream's duplicate window.
    pub dedup_id: Option<String>,
}

/// The stored form of an event: its subject, headers, payload and deduplication id.
pub fn message(ev: &Event, trace: &TraceContext) -> Message {
    Message {
        subject: event_subject(&ev.source, &ev.ty),
        headers: headers(ev, trace),
        payload: ev.data.clone(),
        dedup_id: Some(msg_id(ev)),
    }
}

/// The headers of a stored event.
pub fn headers(ev: &Event, trace: &TraceContext) -> Headers {
    let mut h = Headers(Vec::with_capacity(6 + ev.attributes.len()));
    // Attribute names are validated `[a-z0-9]+`, so these header names are always legal, and
    // values are percent-encoded (no control characters).
    h.push("ce-specversion", "1.0");
    h.push("ce-id", encode_header_value(&ev.id));
    h.push("ce-source", encode_header_value(&ev.source));
    h.push("ce-type", encode_header_value(&ev.ty));
    for (name, value) in &ev.attributes {
        h.push(format!("{CE_PREFIX}{name}"), encode_header_value(value));
    }
    if let Some(ct) = &ev.datacontenttype {
        h.push("content-type", ct);
    }
    if let Some(tp) = &trace.traceparent {
        h.push("traceparent", tp);
    }
    if let Some(ts) = &trace.tracestate {
        h.push("tracestate", ts);
    }
    h
}

/// The deduplication id: `source` and `id` joined by a space (encoded values never contain one).
pub fn msg_id(ev: &Event) -> String {
    format!(
        "{} {}",
        encode_header_value(&ev.source),
        encode_header_value(&ev.id)
    )
}

/// A stored event's attributes, read from its headers: `ce-<name>` (percent-encoded as in HTTP)
/// and `content-type` for `datacontenttype`. Nothing is copied unless a value was encoded.
pub struct StoredAttributes<'a>(pub &'a dyn HeaderView);

impl StoredAttributes<'_> {
    fn raw(&self, name: &str) -> Option<&str> {
        let wanted = |header: &str| {
            if name == "datacontenttype" {
                header.eq_ignore_ascii_case("content-type")
            } else {
                // Bytes, not `str` slices: a name the broker passes on need not put a character
                // boundary where `ce-` ends.
                let h = header.as_bytes();
                h.len() == CE_PREFIX.len() + name.len()
                    && h[..CE_PREFIX.len()].eq_ignore_ascii_case(CE_PREFIX.as_bytes())
                    && h[CE_PREFIX.len()..].eq_ignore_ascii_case(name.as_bytes())
            }
        };
        // Iterating a dozen headers is cheaper than building a header name to look one up.
        self.0.find(&wanted)
    }
}

impl herald_cesql::Event for StoredAttributes<'_> {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        let raw = self.raw(name)?;
        if name == "datacontenttype" {
            return Some(Value::str(raw));
        }
        Some(Value::String(percent_decode_str(raw).decode_utf8_lossy()))
    }

    fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBuilder;

    #[test]
    fn an_event_is_stored_in_the_binding_s_form() {
        let mut b = EventBuilder::new();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", "a b"),
            ("source", "https://shop"),
            ("type", "order.created.v1"),
            ("myext", "café"),
            ("datacontenttype", "application/json"),
        ] {
            b.set(k, v.into()).unwrap();
        }
        let ev = b.finish(Bytes::from_static(b"{}")).unwrap();
        let trace = TraceContext {
            traceparent: Some("00-abc".into()),
            tracestate: None,
        };
        let m = message(&ev, &trace);
        assert_eq!(m.subject, "herald.https~3A~2F~2Fshop.order.created.v1");
        assert_eq!(m.dedup_id.as_deref(), Some("https://shop a%20b"));
        assert_eq!(m.headers.get("CE-ID"), Some("a%20b"));
        assert_eq!(m.headers.get("ce-myext"), Some("caf%C3%A9"));
        assert_eq!(m.headers.get("content-type"), Some("application/json"));
        assert_eq!(m.headers.get("traceparent"), Some("00-abc"));
        // Read back as attributes, decoded.
        use herald_cesql::Event as _;
        let attrs = StoredAttributes(&m.headers);
        assert_eq!(attrs.attribute("myext"), Some(Value::str("café")));
        assert_eq!(
            attrs.attribute("datacontenttype"),
            Some(Value::str("application/json"))
        );
        assert!(!attrs.has("subject"));
    }

    #[test]
    fn a_line_break_never_reaches_a_header() {
        let mut h = Headers::new();
        h.push("x", "a\r\nb");
        assert_eq!(h.get("x"), Some("a  b"));
        h.set("X", "c");
        assert_eq!(h.0, [("X".to_string(), "c".to_string())]);
    }
}
