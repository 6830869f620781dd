//! Bodies and headers: the data every plane moves.
//!
//! Payloads are [`Bytes`] end to end. A [`Body`] of one part (the common case)
//! holds it inline so the hot path allocates nothing beyond what the transport
//! forces; multipart bodies mirror ZeroMQ's native frames.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Every header name plane reads or writes, defined once.
///
/// Names are lower-case ASCII. Those starting with `plane-` are reserved for
/// plane's own use: a mapping that adds one removes it again before the
/// application sees the message. The table of which transport carries which
/// name is in `docs/wire-protocol.md` (brokerless envelopes) and
/// `docs/nats.md` (NATS headers).
pub mod names {
    /// W3C trace context `traceparent`.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context `tracestate`.
    pub const TRACESTATE: &str = "tracestate";
    /// Remaining time budget of a request in milliseconds, measured when it was
    /// sent. Relative rather than absolute so peers need no synchronised clocks.
    pub const TIMEOUT_MS: &str = "plane-timeout-ms";
    /// Idempotency key: servers answer a repeated key with the original answer.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Media type of the body.
    pub const CONTENT_TYPE: &str = "content-type";

    /// Events: the publisher id (32 hex digits) on transports that map
    /// plane metadata onto headers.
    pub const PUBLISHER: &str = "plane-publisher";
    /// Events: the per-publisher sequence (decimal).
    pub const SEQUENCE: &str = "plane-seq";
    /// Brokerless events: the concrete subject of an event.
    pub const SUBJECT: &str = "plane-subject";
    /// Brokerless events: how many events the sender dropped for this
    /// subscriber right before this one (its queue for the subscriber was
    /// full). Alone, without [`SUBJECT`], it is a drop notice: drops that no
    /// event followed.
    pub const DROPPED: &str = "plane-dropped";
    /// Brokerless events: the subject pattern of a subscription request.
    pub const SUBSCRIBE: &str = "plane-subscribe";
    /// Brokerless events: the worker group a subscriber joins (absent for a
    /// subscription outside groups).
    pub const GROUP: &str = "plane-group";
    /// Dead-lettered events: the subject they were published to.
    pub const DEAD_LETTER_SUBJECT: &str = "plane-dead-letter-subject";
    /// Dead-lettered jobs: the name of the queue they came from.
    pub const DEAD_LETTER_QUEUE: &str = "plane-dead-letter-queue";
    /// Dead-lettered events and jobs: how many deliveries were attempted.
    pub const DEAD_LETTER_DELIVERIES: &str = "plane-dead-letter-deliveries";

    /// Brokerless calls: the endpoint called.
    pub const ENDPOINT: &str = "plane-endpoint";
    /// Brokerless calls: the instance the caller picked (16 hex digits).
    pub const INSTANCE: &str = "plane-instance";
    /// Calls: `1` when the caller expects a stream (and so an `Accepted`
    /// prologue).
    pub const STREAM: &str = "plane-stream";
    /// Brokerless replies: `1` on the final reply, which is also the end marker.
    pub const LAST: &str = "plane-last";
    /// Flow control: how much more the caller accepts, on credit messages.
    pub const CREDIT: &str = "plane-credit";

    /// Error frames. On brokerless envelopes (wire protocol §7) the value is
    /// the kind's code in decimal; on NATS it is the kind's lower-case name,
    /// informational beside [`ERROR_CODE`]. Two encodings of one fact under
    /// one name, kept because both are published formats.
    pub const ERROR_KIND: &str = "plane-error-kind";
    /// NATS error frames: the kind's numeric code.
    pub const ERROR_CODE: &str = "plane-error-code";
    /// NATS error frames: the error's message.
    pub const ERROR_MESSAGE: &str = "plane-error-message";
    /// NATS calls: the request id (a UUID); absent on calls from plain NATS
    /// clients.
    pub const ID: &str = "plane-id";
    /// NATS: comma-separated byte lengths of the parts of a multipart body.
    pub const PARTS: &str = "plane-parts";
    /// NATS: the frame kind of a reply or control message.
    pub const FRAME: &str = "plane-frame";
    /// NATS replies: the serving instance's control subject.
    pub const CTL: &str = "plane-ctl";

    /// Offloaded bodies: the object that holds the body, `<bucket>/<name>`.
    pub const OBJECT_REF: &str = "plane-object-ref";
    /// Offloaded bodies: the body's size in bytes.
    pub const OBJECT_SIZE: &str = "plane-object-size";
    /// Offloaded bodies: the body's digest, `sha256=<hex>`.
    pub const OBJECT_DIGEST: &str = "plane-object-digest";
    /// Offloaded bodies: the part lengths of a multipart body, comma-separated.
    pub const OBJECT_PARTS: &str = "plane-object-parts";

    /// Names plane itself sets on every call or event. Stored as
    /// `&'static str` instead of a fresh `String`, whether plane inserts them
    /// or a decoder reads them off the wire: each call carries several, and
    /// each would otherwise be an allocation on both sides.
    pub(crate) const HOT: &[&str] = &[
        TRACEPARENT,
        TRACESTATE,
        TIMEOUT_MS,
        IDEMPOTENCY_KEY,
        CONTENT_TYPE,
        PUBLISHER,
        SEQUENCE,
        ENDPOINT,
        INSTANCE,
        STREAM,
        LAST,
        SUBJECT,
        DROPPED,
        ERROR_KIND,
        ID,
        FRAME,
        CTL,
        CREDIT,
    ];
}

/// `name` as a stored header name: a known name is borrowed, any other owned.
fn header_name(name: impl AsRef<str> + Into<String>) -> Cow<'static, str> {
    let s = name.as_ref();
    match names::HOT.iter().find(|k| k.len() == s.len() && **k == s) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.into()),
    }
}

/// An ordered, small header map with case-sensitive lower-case names.
///
/// A `Vec` of pairs rather than a hash map: plane headers are few, lookups are
/// linear scans over a handful of entries, and order is preserved on the wire.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    entries: Vec<(Cow<'static, str>, String)>,
}

impl Headers {
    /// An empty map; does not allocate.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// Set `name` to `value`, replacing any previous value.
    pub fn insert(&mut self, name: impl AsRef<str> + Into<String>, value: impl Into<String>) {
        let value = value.into();
        match self
            .entries
            .iter_mut()
            .find(|(n, _)| n.as_ref() == name.as_ref())
        {
            Some(slot) => slot.1 = value,
            None => self.entries.push((header_name(name), value)),
        }
    }

    /// Builder form of [`insert`](Headers::insert).
    pub fn with(mut self, name: impl AsRef<str> + Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Remove `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let idx = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(idx).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterate in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }

    /// Bytes the names and values occupy, for payload accounting.
    pub fn encoded_len(&self) -> usize {
        self.entries.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str> + Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.insert(n, v);
        }
        h
    }
}

/// A message body of one or more parts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Body {
    repr: Repr,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Body {
    /// An empty single-part body.
    pub const fn empty() -> Self {
        Body {
            repr: Repr::One(Bytes::new()),
        }
    }

    /// A body from several parts, kept separate on transports that frame them.
    pub fn from_parts(parts: Vec<Bytes>) -> Self {
        if parts.len() == 1 {
            let mut parts = parts;
            return Body {
                repr: Repr::One(parts.pop().unwrap_or_default()),
            };
        }
        Body {
            repr: Repr::Many(parts),
        }
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Bytes] {
        match &self.repr {
            Repr::One(b) => std::slice::from_ref(b),
            Repr::Many(v) => v,
        }
    }

    /// Consume into parts.
    pub fn into_parts(self) -> Vec<Bytes> {
        match self.repr {
            Repr::One(b) => vec![b],
            Repr::Many(v) => v,
        }
    }

    /// Total payload size in bytes over all parts.
    pub fn len(&self) -> usize {
        self.parts().iter().map(Bytes::len).sum()
    }

    /// Whether the body carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload as one contiguous buffer. Free for single-part bodies;
    /// multipart bodies are concatenated (one copy).
    pub fn to_bytes(&self) -> Bytes {
        match &self.repr {
            Repr::One(b) => b.clone(),
            Repr::Many(v) => {
                let mut out = BytesMut::with_capacity(self.len());
                for p in v {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("parts", &self.parts().len())
            .field("len", &self.len())
            .finish()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body { repr: Repr::One(b) }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::from(Bytes::from(v))
    }
}

impl From<&'static [u8]> for Body {
    fn from(v: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(v))
    }
}

impl<const N: usize> From<&'static [u8; N]> for Body {
    fn from(v: &'static [u8; N]) -> Self {
        Body::from(Bytes::from_static(v))
    }
}

impl From<&'static str> for Body {
    fn from(v: &'static str) -> Self {
        Body::from(Bytes::from_static(v.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(v: String) -> Self {
        Body::from(Bytes::from(v))
    }
}

impl From<Vec<Bytes>> for Body {
    fn from(v: Vec<Bytes>) -> Self {
        Body::from_parts(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_replace_and_keep_order() {
        let mut h = Headers::new().with("b", "1").with("a", "2");
        h.insert("b", "3");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("b", "3"), ("a", "2")]);
        assert_eq!(h.remove("b").as_deref(), Some("3"));
        assert_eq!(h.get("b"), None);
    }

    #[test]
    fn known_names_are_borrowed_and_equal_to_owned_ones() {
        let borrowed = |c: &Cow<'static, str>| matches!(c, Cow::Borrowed(_));
        // Inserted by plane or decoded off the wire (a short-lived `&str`).
        let wire = String::from("plane-timeout-ms");
        assert!(borrowed(&header_name(wire.as_str())));
        assert!(borrowed(&header_name(names::TRACEPARENT.to_owned())));
        assert!(!borrowed(&header_name("x-custom")));
        assert!(!borrowed(&header_name("traceparen")));
        // How a name is stored never shows: equality, lookup and order.
        let a = Headers::new()
            .with(names::TRACEPARENT, "t")
            .with("x-custom", "c");
        let b = Headers::new()
            .with(String::from("traceparent"), "t")
            .with(String::from("x-custom"), "c");
        assert_eq!(a, b);
        assert_eq!(a.get("traceparent"), Some("t"));
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![("traceparent", "t"), ("x-custom", "c")]
        );
    }

    #[test]
    fn body_parts_and_concat() {
        let b = Body::from(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        assert_eq!(b.parts().len(), 2);
        assert_eq!(b.len(), 3);
        assert_eq!(&b.to_bytes()[..], b"abc");
        let one = Body::from_parts(vec![Bytes::from_static(b"x")]);
        assert_eq!(one, Body::from(&b"x"[..]));
        assert!(Body::empty().is_empty());
    }
}

/// Headers plus body: what a request, a reply, or a job carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Application and plane headers.
    pub headers: Headers,
    /// The payload.
    pub body: Body,
}

impl Message {
    /// A message with headers.
    pub fn new(headers: Headers, body: impl Into<Body>) -> Self {
        Message {
            headers,
            body: body.into(),
        }
    }

    /// Bytes counted against a backend's payload limit: body plus header
    /// names and values.
    pub fn payload_len(&self) -> usize {
        self.body.len() + self.headers.encoded_len()
    }
}

impl<T: Into<Body>> From<T> for Message {
    fn from(body: T) -> Self {
        Message {
            headers: Headers::new(),
            body: body.into(),
        }
    }
}
