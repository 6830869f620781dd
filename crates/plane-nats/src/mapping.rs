//! The plane envelope on NATS: plane headers plus the raw body.
//!
//! See the crate documentation for the header names; they are the whole
//! protocol, so any NATS client can speak it.

use async_nats::HeaderMap;
use bytes::Bytes;
use plane_core::{Body, Error, ErrorKind, Headers, Message, Result};

/// The header names of the NATS mapping (defined once, in plane-core).
pub use plane_core::message::names::{
    CREDIT, CTL, ERROR_CODE, ERROR_KIND, ERROR_MESSAGE, FRAME, ID, INSTANCE, PARTS, STREAM,
};

/// Marks a header whose value is percent-encoded (it held a line break,
/// which NATS headers cannot carry). `%v` never ends an encoded name
/// otherwise, since `%` in a name is always followed by two hex digits.
const ENCODED_VALUE: &str = "%v";

fn pct(out: &mut String, b: u8) {
    out.push_str(&format!("%{b:02X}"));
}

/// A header name NATS accepts: visible ASCII except `:`; `%` and every other
/// byte are percent-encoded, so any UTF-8 name round-trips.
pub(crate) fn encode_name(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b':' && b != b'%')
    {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b':' && b != b'%' {
            out.push(b as char);
        } else {
            pct(&mut out, b);
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A value written by [`insert`] under an escaped-value name, as it was.
pub(crate) fn unescape(value: &str) -> String {
    percent_decode(value).unwrap_or_else(|| value.to_owned())
}

/// The plane header name and value of a NATS header. Names that do not
/// decode (a plain client's `%` that is no escape) are kept as they are.
fn decode_header(name: &str, value: &str) -> (String, String) {
    let (name, value) = match name.strip_suffix(ENCODED_VALUE) {
        Some(n) => (n, percent_decode(value).unwrap_or_else(|| value.to_owned())),
        None => (name, value.to_owned()),
    };
    let name = if name.contains('%') {
        percent_decode(name).unwrap_or_else(|| name.to_owned())
    } else {
        name.to_owned()
    };
    (name, value)
}

/// Insert a plane header into a NATS header map, escaping what NATS cannot
/// carry.
pub(crate) fn insert(map: &mut HeaderMap, name: &str, value: &str) {
    let name = encode_name(name);
    if value.contains(['\r', '\n']) {
        map.insert(format!("{name}{ENCODED_VALUE}"), escape_value(value));
    } else {
        map.insert(name, value);
    }
}

/// `value` with `%`, CR and LF percent-encoded, other characters kept.
fn escape_value(value: &str) -> String {
    let mut v = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\r' | '\n' | '%' => pct(&mut v, c as u8),
            c => v.push(c),
        }
    }
    v
}

/// Headers the NATS server or the JetStream API set, never shown to plane users.
fn is_transport_header(name: &str) -> bool {
    name.starts_with("Nats-")
        || name.starts_with("KV-")
        || name == "Status"
        || name == "Description"
}

/// Plane headers and body as a NATS header map and payload.
///
/// A multipart body is sent as the concatenation of its parts plus a
/// [`PARTS`] header, so single-part bodies (the common case, and what plain
/// clients send) travel untouched.
pub(crate) fn encode(message: &Message, extra: &[(&str, &str)]) -> (HeaderMap, Bytes) {
    let mut map = HeaderMap::new();
    for (n, v) in message.headers.iter() {
        insert(&mut map, n, v);
    }
    for (n, v) in extra {
        insert(&mut map, n, v);
    }
    let parts = message.body.parts();
    if parts.len() != 1 {
        let lens: Vec<String> = parts.iter().map(|p| p.len().to_string()).collect();
        map.insert(PARTS, lens.join(","));
    }
    (map, message.body.to_bytes())
}

/// A NATS message's headers and payload as a plane message, without the
/// headers named in `strip` nor the transport's own.
pub(crate) fn decode(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    strip: &[&str],
) -> Result<Message> {
    let mut out = Headers::new();
    let mut parts_header = None;
    if let Some(map) = headers {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if name == PARTS {
                parts_header = values.first().map(|v| v.as_str().to_owned());
                continue;
            }
            if strip.contains(&name) || is_transport_header(name) {
                continue;
            }
            if let Some(v) = values.first() {
                let (name, value) = decode_header(name, v.as_str());
                out.insert(name, value);
            }
        }
    }
    let body = match parts_header {
        None => Body::from(payload),
        Some(lens) => split_parts(&lens, payload)?,
    };
    Ok(Message::new(out, body))
}

fn split_parts(lens: &str, payload: Bytes) -> Result<Body> {
    let bad = || Error::new(ErrorKind::Decode, format!("malformed {PARTS} header"));
    if lens.is_empty() {
        return if payload.is_empty() {
            Ok(Body::from_parts(Vec::new()))
        } else {
            Err(bad())
        };
    }
    let mut parts = Vec::new();
    let mut at = 0usize;
    for l in lens.split(',') {
        let n: usize = l.trim().parse().map_err(|_| bad())?;
        let end = at
            .checked_add(n)
            .filter(|e| *e <= payload.len())
            .ok_or_else(bad)?;
        parts.push(payload.slice(at..end));
        at = end;
    }
    if at != payload.len() {
        return Err(bad());
    }
    Ok(Body::from_parts(parts))
}

/// The first value of `name`.
pub(crate) fn get<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers.and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// Header values cannot carry line breaks on the NATS protocol.
pub(crate) fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trips_and_single_part_is_raw() {
        let m = Message::new(
            Headers::new().with("a", "1"),
            vec![
                Bytes::from_static(b"ab"),
                Bytes::new(),
                Bytes::from_static(b"c"),
            ],
        );
        let (h, p) = encode(&m, &[("x", "y")]);
        assert_eq!(get(Some(&h), PARTS), Some("2,0,1"));
        let back = decode(Some(&h), p, &["x"]).expect("decodes");
        assert_eq!(back, m);
        let one = Message::from("hi");
        let (h, p) = encode(&one, &[]);
        assert!(get(Some(&h), PARTS).is_none());
        assert_eq!(&p[..], b"hi");
    }

    #[test]
    fn any_header_round_trips() {
        let m = Message::new(
            Headers::new()
                .with("x-ünïcode", "välue with spaces")
                .with("a:b c%d", "100%")
                .with("multi", "line\r\none %41")
                .with("plain", "as is"),
            "x",
        );
        let (h, p) = encode(&m, &[]);
        assert_eq!(get(Some(&h), "plain"), Some("as is"));
        // NATS header maps do not keep order; names and values round-trip.
        let back = decode(Some(&h), p, &[]).expect("decodes");
        assert_eq!(back.headers.len(), m.headers.len());
        for (n, v) in m.headers.iter() {
            assert_eq!(back.headers.get(n), Some(v), "{n}");
        }
        // A plain client's header with a stray `%` is kept as sent.
        let mut raw = HeaderMap::new();
        raw.insert("x%zz", "5%");
        let got = decode(Some(&raw), Bytes::new(), &[]).expect("decodes");
        assert_eq!(got.headers.get("x%zz"), Some("5%"));
    }

    #[test]
    fn malformed_parts_are_decode_errors() {
        for lens in ["x", "5", "1,1", "1,-1"] {
            let mut h = HeaderMap::new();
            h.insert(PARTS, lens);
            let err = decode(Some(&h), Bytes::from_static(b"abc"), &[]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "{lens}");
        }
    }
}
