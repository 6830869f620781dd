//! Fuzzes the HTTP mapping of a public call (`plane-http`): the request path
//! and headers any HTTP client sends, as the call's endpoint and headers.
//!
//! The input is read like a request head: the first line is the path, the
//! next lines `name:value` headers up to an empty line. A line hyper would
//! not deliver as a header (a name that is no token) is skipped; a repeated
//! name adds a value. hyper has parsed the bytes by then; what is fuzzed is
//! plane's reading of what it hands over.
//!
//! - `endpoint_of`: an endpoint is never empty, and percent-encoding it back
//!   into a path gives the same endpoint; a refusal is `NotFound` (no
//!   endpoint) or `InvalidArgument` (bad escape, not UTF-8);
//! - `call_headers`: the call has exactly the request's names less HTTP's
//!   own, each once, its values joined with `, `; no `plane-*` name but a
//!   whole-number `plane-timeout-ms`; a refusal is `InvalidArgument` and
//!   names a reason that holds;
//! - the call's headers copied into a response (`copy_headers`) and read
//!   back are the same headers;
//! - `wants_events` is true only if an `accept` value names
//!   `text/event-stream`.
#![no_main]

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use libfuzzer_sys::fuzz_target;
use plane_core::message::names;
use plane_core::{ErrorKind, Headers};
use plane_http::fuzzing::{self, HTTP_HEADERS};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let path = lines.next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }

    if let Ok(path) = std::str::from_utf8(path) {
        check_endpoint(path);
    }
    check_headers(&map);
    if fuzzing::wants_events(&map) {
        assert!(map
            .get_all(hyper::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream"))));
    }
});

fn check_endpoint(path: &str) {
    match fuzzing::endpoint_of(path) {
        Ok(endpoint) => {
            assert!(!endpoint.is_empty());
            let mut again = String::from("/");
            for b in endpoint.bytes() {
                again.push_str(&format!("%{b:02x}"));
            }
            assert_eq!(fuzzing::endpoint_of(&again).ok(), Some(endpoint));
        }
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidArgument),
            "{e:?}"
        ),
    }
}

fn check_headers(map: &HeaderMap) {
    let call_names: Vec<&str> = map
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| !HTTP_HEADERS.contains(n))
        .collect();
    match fuzzing::call_headers(map) {
        Ok(headers) => {
            let mut got: Vec<&str> = headers.iter().map(|(n, _)| n).collect();
            got.sort_unstable();
            let mut want = call_names.clone();
            want.sort_unstable();
            assert_eq!(got, want, "every call name once, none of HTTP's");
            for (name, value) in headers.iter() {
                let joined: Vec<&str> = map
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().expect("accepted values are text"))
                    .collect();
                assert_eq!(value, joined.join(", "));
                assert!(!name.starts_with("plane-") || name == names::TIMEOUT_MS);
            }
            if let Some(t) = headers.get(names::TIMEOUT_MS) {
                assert!(t.parse::<u64>().is_ok());
            }
            check_response_round_trip(&headers);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e:?}");
            let own = call_names
                .iter()
                .any(|n| n.starts_with("plane-") && *n != names::TIMEOUT_MS);
            let binary = call_names
                .iter()
                .any(|n| map.get_all(*n).iter().any(|v| v.to_str().is_err()));
            let timeout = map.get(names::TIMEOUT_MS).is_some();
            assert!(own || binary || timeout, "refused without a reason: {e:?}");
        }
    }
}

/// A call's headers become response headers that read back the same (as a
/// reply echoing them would).
fn check_response_round_trip(headers: &Headers) {
    let mut response = HeaderMap::new();
    fuzzing::copy_headers(headers, &mut response);
    let back = fuzzing::call_headers(&response).expect("copied headers are a call's");
    let mut a: Vec<_> = back.iter().collect();
    let mut b: Vec<_> = headers.iter().collect();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
}
