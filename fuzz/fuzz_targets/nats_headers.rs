//! Fuzzes the NATS mapping (`plane-nats`): what a NATS server delivers,
//! headers and payload, as plane messages, calls, events and errors.
//!
//! The input is read like a NATS header block: lines of `name:value` up to an
//! empty line, then the payload. A line that is no header NATS could deliver
//! (a name with control characters, non-ASCII or nothing after it) is
//! skipped, and a repeated name adds a value, as on the wire.
//!
//! - the received map decodes to a message or to a `Decode` error (only a
//!   malformed `plane-parts` can be one), and the message re-encodes to a map
//!   that decodes to the same message;
//! - `parse_call`, `event_of` and `typed_error` agree with the mapping and
//!   the headers they read;
//! - the same lines read as a plane message (any UTF-8 name but plane's
//!   reserved `plane-*` and any value, a
//!   line break spelled `\x01`, a payload starting with `\0` cut into parts
//!   at each further `\0`) survive encode -> decode.
#![no_main]

use std::str::FromStr;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plane_core::message::names;
use plane_core::{Body, ErrorKind, Headers, Message};
use plane_nats::fuzzing;
use plane_nats::mapping::{ERROR_CODE, ERROR_MESSAGE, ID, PARTS, STREAM};

fuzz_target!(|data: &[u8]| {
    let (lines, payload) = split_block(data);
    let payload = Bytes::copy_from_slice(payload);

    let map = received_map(&lines);
    check_received(&map, &payload);

    check_plane_message(&plane_message(&lines, &payload));
});

/// Header lines and payload: the block ends at the first empty line.
fn split_block(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        rest = tail;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    (lines, rest)
}

/// `name` and `value` of a `name:value` line (the whole line is a name
/// with an empty value when it has no `:`).
fn name_value(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    }
}

/// The header map async-nats would hand over for these lines.
fn received_map(lines: &[&[u8]]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines {
        let (name, value) = name_value(line);
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            map.append(n, v);
        }
    }
    map
}

fn check_received(map: &HeaderMap, payload: &Bytes) {
    let parts_header = map.get(PARTS).map(|v| v.as_str().to_owned());
    match fuzzing::decode(Some(map), payload.clone(), &[]) {
        Ok(message) => {
            assert_body(&message.body, parts_header.as_deref(), payload);
            assert_round_trip(&message);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Decode);
            assert!(parts_header.is_some(), "only plane-parts can be malformed");
        }
    }
    // No headers at all is a plain client's bare payload.
    let bare = fuzzing::decode(None, payload.clone(), &[]).expect("a bare payload decodes");
    assert!(bare.headers.is_empty());
    assert_eq!(bare.body.parts(), std::slice::from_ref(payload));

    let msg = async_nats::Message {
        subject: "fuzz.req.endpoint".into(),
        reply: None,
        payload: payload.clone(),
        headers: Some(map.clone()),
        status: None,
        description: None,
        length: payload.len(),
    };
    if let Ok((incoming, stream)) = fuzzing::parse_call(&msg) {
        assert_eq!(stream, incoming.stream);
        assert_eq!(stream, get(map, STREAM) == Some("1"));
        if let Some(id) = get(map, ID) {
            assert_eq!(id.parse().ok(), Some(incoming.id));
        }
        let plain = fuzzing::decode(msg.headers.as_ref(), payload.clone(), &[ID, STREAM]);
        assert_eq!(plain.ok().as_ref(), Some(&incoming.message));
    }

    if let Ok(event) = fuzzing::event_of("fuzz.subject", Some(map), payload.clone()) {
        assert_eq!(event.subject, "fuzz.subject");
        let signed = get(map, names::PUBLISHER).is_some() && get(map, names::SEQUENCE).is_some();
        assert_eq!(event.origin.is_some(), signed);
        if let Some(origin) = event.origin {
            assert_eq!(
                get(map, names::SEQUENCE),
                Some(&*origin.sequence.to_string())
            );
        }
        let plain = fuzzing::decode(
            Some(map),
            payload.clone(),
            &[names::PUBLISHER, names::SEQUENCE],
        );
        assert_eq!(plain.ok().as_ref(), Some(&event.message));
    }

    let error = fuzzing::typed_error(Some(map));
    let kind = get(map, ERROR_CODE)
        .and_then(|c| c.parse::<u16>().ok())
        .map_or(ErrorKind::Other, ErrorKind::from_code);
    assert_eq!(error.kind(), kind);
    assert_eq!(error.message(), get(map, ERROR_MESSAGE).unwrap_or(""));
}

fn get<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).map(HeaderValue::as_str)
}

/// Without `plane-parts` the payload is the one part; with it, the parts
/// are the payload cut at the lengths it lists.
fn assert_body(body: &Body, parts_header: Option<&str>, payload: &Bytes) {
    match parts_header {
        None => assert_eq!(body.parts(), std::slice::from_ref(payload)),
        Some(lens) => {
            assert_eq!(body.to_bytes(), *payload);
            if !lens.is_empty() {
                let want: Vec<usize> = lens.split(',').map(|l| l.trim().parse().unwrap()).collect();
                let got: Vec<usize> = body.parts().iter().map(Bytes::len).collect();
                assert_eq!(got, want);
            }
        }
    }
}

/// The same lines as a plane message a plane user could send.
fn plane_message(lines: &[&[u8]], payload: &Bytes) -> Message {
    let mut headers = Headers::new();
    for line in lines {
        let (name, value) = name_value(line);
        let text = |b: &[u8]| String::from_utf8_lossy(b).replace('\x01', "\n");
        let name = text(name);
        // `plane-*` names are plane's own (`plane_core::message::names`):
        // a user header `plane-parts` would be read as the multipart framing.
        if !name.starts_with("plane-") {
            headers.insert(name, text(value));
        }
    }
    let body = match payload.first() {
        Some(0) if payload.len() == 1 => Body::from_parts(Vec::new()),
        Some(0) => {
            let rest = payload.slice(1..);
            let mut parts = Vec::new();
            let mut at = 0;
            for (i, _) in rest.iter().enumerate().filter(|(_, &b)| b == 0) {
                parts.push(rest.slice(at..i));
                at = i + 1;
            }
            parts.push(rest.slice(at..));
            Body::from_parts(parts)
        }
        _ => Body::from(payload.clone()),
    };
    Message::new(headers, body)
}

fn check_plane_message(message: &Message) {
    assert_round_trip(message);
}

/// encode -> decode gives the message back: the same parts, and the same
/// headers but for the names the mapping reserves (see [`reserved`]).
/// NATS header maps are unordered, so headers are compared as sets.
fn assert_round_trip(message: &Message) {
    let (map, payload) = fuzzing::encode(message, &[]);
    let back = fuzzing::decode(Some(&map), payload, &[]).expect("an encoded message decodes");
    assert_eq!(back.body.parts(), message.body.parts());
    assert_eq!(sorted(&back.headers), sorted(&message.headers));
}

fn sorted(headers: &Headers) -> Vec<(&str, &str)> {
    let mut v: Vec<_> = headers.iter().filter(|(n, _)| !reserved(n)).collect();
    v.sort_unstable();
    v
}

/// Names a plane message cannot carry on NATS: the multipart framing
/// header, and the transport's own headers, which are dropped on receipt.
/// Plane names are lower-case, so only a message built by hand (or from a
/// plain client's escaped name) has the latter.
fn reserved(name: &str) -> bool {
    name == PARTS
        || name.starts_with("Nats-")
        || name.starts_with("KV-")
        || name == "Status"
        || name == "Description"
}
