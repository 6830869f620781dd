//! Golden bytes pin the format; property tests round-trip it and throw
//! malformed input at every decoder.

use crate::message::names;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// The UUIDv7 example from RFC 9562, appendix A.6.
const RFC_ID: RequestId = RequestId(0x017f22e2_79b0_7cc3_98c4_dc0c0c07398f);

/// Bytes from hex digits; the golden vectors are written as `concat!`s of
/// commented hex strings.
fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd number of hex digits");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Check `env` against its golden single-buffer encoding in both directions.
fn assert_golden(env: &Envelope, expected: &[u8]) {
    let got = encode(env);
    assert_eq!(
        got.as_ref(),
        expected,
        "encoding changed:\n got {got:02x?}\nwant {expected:02x?}"
    );
    assert_eq!(env.encoded_len(), expected.len());
    assert_eq!(&decode(Bytes::copy_from_slice(expected)).unwrap(), env);
}

// --- golden vectors ----------------------------------------------------------

#[test]
fn golden_heartbeat_without_parts() {
    let env = Envelope::new(EnvelopeKind::Heartbeat, RFC_ID).with_body(Body::from_parts(vec![]));
    let expected = hex(concat!(
        "01",                               // version 1
        "13",                               // header length: 19 bytes (varint)
        "09",                               // kind: heartbeat (u8)
        "017f22e279b07cc398c4dc0c0c07398f", // request id: 16 raw bytes, big-endian
        "00",                               // header entries: 0 (varint)
        "00",                               // body parts: 0 (varint)
                                            // no body bytes
    ));
    assert_golden(&env, &expected);
}

#[test]
fn golden_request_with_header_and_body() {
    let env = Envelope::new(EnvelopeKind::Request, RFC_ID)
        .with_headers(Headers::new().with("content-type", "text/plain"))
        .with_body("hello");
    let expected = hex(concat!(
        "01",                               // version 1
        "2c",                               // header length: 44 bytes
        "01",                               // kind: request
        "017f22e279b07cc398c4dc0c0c07398f", // request id
        "01",                               // header entries: 1
        "0c",                               //   name length 12
        "636f6e74656e742d74797065",         //   "content-type"
        "0a",                               //   value length 10
        "746578742f706c61696e",             //   "text/plain"
        "01",                               // body parts: 1
        "05",                               //   part 0 length 5
        "68656c6c6f",                       // body: "hello"
    ));
    assert_golden(&env, &expected);
}

#[test]
fn golden_error_frame() {
    let err = Error::new(ErrorKind::NotFound, "no such key");
    let env = Envelope::error(RFC_ID, &err);
    let expected = hex(concat!(
        "01",                               // version 1
        "27",                               // header length: 39 bytes
        "04",                               // kind: error
        "017f22e279b07cc398c4dc0c0c07398f", // request id
        "01",                               // header entries: 1
        "10",                               //   name length 16
        "706c616e652d6572726f722d6b696e64", //   "plane-error-kind"
        "01",                               //   value length 1
        "33",                               //   "3" = ErrorKind::NotFound.code()
        "01",                               // body parts: 1
        "0b",                               //   part 0 length 11
        "6e6f2073756368206b6579",           // body: "no such key"
    ));
    assert_golden(&env, &expected);
    let back = decode(Bytes::from(expected)).unwrap().to_error();
    assert_eq!(back.kind(), ErrorKind::NotFound);
    assert_eq!(back.message(), "no such key");
}

/// Two parts, one of them 300 bytes long so its length takes a two-byte
/// varint; checked in all three forms.
#[test]
fn golden_multipart_data_in_every_form() {
    let big = Bytes::from(vec![0xab; 300]);
    let env =
        Envelope::new(EnvelopeKind::Data, RequestId(1)).with_body(vec![big.clone(), Bytes::new()]);
    let head = hex(concat!(
        "01",                               // version 1
        "16",                               // header length: 22 bytes
        "02",                               // kind: data
        "00000000000000000000000000000001", // request id 1
        "00",                               // header entries: 0
        "02",                               // body parts: 2
        "ac02",                             //   part 0 length 300 = 0x2c | 0x80, 300 >> 7
        "00",                               //   part 1 length 0
    ));

    let mut single = head.clone();
    single.extend_from_slice(&big);
    assert_golden(&env, &single);

    let parts = encode_parts(&env);
    assert_eq!(parts, vec![Bytes::from(head), big, Bytes::new()]);
    assert_eq!(decode_parts(&parts).unwrap(), env);

    let mut framed = BytesMut::new();
    encode_delimited(&env, &mut framed).unwrap();
    assert_eq!(framed[..4], hex("00000144")[..], "u32 big-endian 324");
    assert_eq!(framed[4..], single[..]);
}

#[test]
fn golden_long_header_uses_two_byte_length() {
    let env = Envelope::new(EnvelopeKind::Ack, RequestId(0))
        .with_headers(Headers::new().with("k", "v".repeat(200)));
    let bytes = encode(&env);
    let expected_head = hex(concat!(
        "01",                               // version 1
        "e001",                             // header length: 224 = 0x60 | 0x80, 224 >> 7
        "07",                               // kind: ack
        "00000000000000000000000000000000", // request id 0
        "01",                               // header entries: 1
        "01",
        "6b",   //   "k"
        "c801", //   value length 200, then 200 × "v"
    ));
    assert_eq!(bytes[..expected_head.len()], expected_head[..]);
    assert_eq!(
        bytes[bytes.len() - 2..],
        hex("0100")[..],
        "1 part, length 0"
    );
    assert_eq!(bytes.len(), 3 + 224);
    assert_eq!(decode(bytes).unwrap(), env);
}

#[test]
fn kind_codes_are_stable() {
    let codes: Vec<u8> = EnvelopeKind::ALL.iter().map(|k| k.code()).collect();
    assert_eq!(codes, (1..=9).collect::<Vec<u8>>());
    for kind in EnvelopeKind::ALL {
        assert_eq!(EnvelopeKind::from_code(kind.code()), Ok(kind));
        assert_eq!(EnvelopeKind::try_from(u8::from(kind)), Ok(kind));
    }
    assert_eq!(EnvelopeKind::from_code(0), Err(WireError::UnknownKind(0)));
    assert_eq!(EnvelopeKind::from_code(10), Err(WireError::UnknownKind(10)));
}

// --- refusals ------------------------------------------------------------------

fn sample() -> Envelope {
    Envelope::new(EnvelopeKind::Request, RFC_ID)
        .with_headers(Headers::new().with("a", "1").with("b", "2"))
        .with_body(vec![Bytes::from_static(b"xy"), Bytes::from_static(b"z")])
}

#[test]
fn unknown_versions_are_refused() {
    let good = encode(&sample());
    for v in [0u8, 2, 3, 0x7f, 0xff] {
        let mut bad = good.to_vec();
        bad[0] = v;
        assert_eq!(
            decode(Bytes::from(bad.clone())),
            Err(WireError::UnsupportedVersion(v))
        );
        let mut parts = encode_parts(&sample());
        parts[0] = Bytes::from(bad[..parts[0].len()].to_vec());
        assert_eq!(decode_parts(&parts), Err(WireError::UnsupportedVersion(v)));
    }
    // A version byte alone is enough to be refused.
    assert_eq!(
        decode(Bytes::from_static(&[2])),
        Err(WireError::UnsupportedVersion(2))
    );
}

#[test]
fn unknown_kinds_are_refused() {
    let good = encode(&sample());
    // Offset 2: after the version byte and the one-byte header length.
    assert_eq!(good[2], EnvelopeKind::Request.code());
    for k in [0u8, 10, 0x80, 0xff] {
        let mut bad = good.to_vec();
        bad[2] = k;
        assert_eq!(decode(Bytes::from(bad)), Err(WireError::UnknownKind(k)));
    }
}

#[test]
fn every_prefix_is_truncated() {
    for env in [
        sample(),
        Envelope::error(RequestId(3), &ErrorKind::Closed.into()),
    ] {
        let full = encode(&env);
        for n in 0..full.len() {
            assert_eq!(
                decode(full.slice(..n)),
                Err(WireError::Truncated),
                "prefix of {n} bytes"
            );
        }
        let parts = encode_parts(&env);
        for n in 0..parts[0].len() {
            let mut cut = parts.clone();
            cut[0] = parts[0].slice(..n);
            assert_eq!(
                decode_parts(&cut),
                Err(WireError::Truncated),
                "head cut at {n}"
            );
        }
        for n in 0..parts.len() {
            assert_eq!(
                decode_parts(&parts[..n]),
                Err(WireError::Truncated),
                "{n} envelopes"
            );
        }
    }
}

#[test]
fn trailing_bytes_and_extra_parts_are_refused() {
    let env = sample();
    let mut long = encode(&env).to_vec();
    long.push(0);
    assert_eq!(
        decode(Bytes::from(long)),
        Err(WireError::LengthMismatch {
            expected: 3,
            actual: 4
        })
    );

    let mut parts = encode_parts(&env);
    parts.push(Bytes::from_static(b"extra"));
    assert_eq!(
        decode_parts(&parts),
        Err(WireError::LengthMismatch {
            expected: 2,
            actual: 3
        })
    );

    let mut parts = encode_parts(&env);
    parts[1] = Bytes::from_static(b"xyz");
    assert_eq!(
        decode_parts(&parts),
        Err(WireError::LengthMismatch {
            expected: 2,
            actual: 3
        })
    );

    let mut parts = encode_parts(&env);
    let mut head = parts[0].to_vec();
    head.push(0);
    parts[0] = Bytes::from(head);
    assert!(matches!(
        decode_parts(&parts),
        Err(WireError::LengthMismatch { .. })
    ));
}

#[test]
fn limits_are_enforced() {
    let env = sample();
    let bytes = encode(&env);
    let postcard_len = u64::from(bytes[1]);
    let tight = |l: Limits| decode_with(bytes.clone(), &l);

    assert_eq!(tight(Limits::DEFAULT), Ok(env.clone()));
    assert_eq!(
        tight(Limits::DEFAULT.with_max_header_bytes(10)),
        Err(WireError::HeaderTooLarge {
            len: postcard_len,
            max: 10
        })
    );
    assert_eq!(
        tight(Limits::DEFAULT.with_max_header_entries(1)),
        Err(WireError::TooManyHeaders { count: 2, max: 1 })
    );
    assert_eq!(
        tight(Limits::DEFAULT.with_max_parts(1)),
        Err(WireError::TooManyParts { count: 2, max: 1 })
    );
    assert_eq!(
        tight(Limits::DEFAULT.with_max_envelope_bytes(10)),
        Err(WireError::EnvelopeTooLarge {
            len: bytes.len() as u64,
            max: 10
        })
    );
    assert_eq!(
        decode_parts_with(&encode_parts(&env), &Limits::DEFAULT.with_max_parts(1)),
        Err(WireError::TooManyParts { count: 2, max: 1 })
    );

    // `Limits::check` predicts the decoder's verdict for senders.
    assert_eq!(Limits::DEFAULT.check(&env), Ok(()));
    for l in [
        Limits::DEFAULT.with_max_header_bytes(10),
        Limits::DEFAULT.with_max_header_entries(1),
        Limits::DEFAULT.with_max_parts(1),
        Limits::DEFAULT.with_max_envelope_bytes(10),
    ] {
        assert_eq!(l.check(&env), tight(l).map(|_| ()));
    }
}

/// An envelope whose postcard header is `header`, with no body bytes.
fn frame_with_header(header: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[VERSION]);
    head::put_varint(&mut out, header.len() as u64);
    out.extend_from_slice(header);
    out.freeze()
}

/// A postcard header: kind data, id 0, then `rest`.
fn header_with(rest: &[u8]) -> Vec<u8> {
    let mut h = vec![EnvelopeKind::Data.code()];
    h.extend_from_slice(&[0u8; 16]);
    h.extend_from_slice(rest);
    h
}

#[test]
fn malformed_headers_are_refused() {
    let with = |rest: &[u8]| decode(frame_with_header(&header_with(rest)));
    // Duplicate names.
    assert_eq!(
        with(&[2, 1, b'a', 1, b'1', 1, b'a', 1, b'2', 0]),
        Err(WireError::DuplicateHeader("a".into()))
    );
    // A count that fits the header's bytes but exceeds the limit is refused
    // before any element is read.
    let mut many = vec![0, 100];
    many.extend(std::iter::repeat_n(0, 100));
    assert_eq!(
        decode_with(
            frame_with_header(&header_with(&many)),
            &Limits::DEFAULT.with_max_parts(50)
        ),
        Err(WireError::TooManyParts {
            count: 100,
            max: 50
        })
    );
    // Part lengths whose sum overflows u64 are simply more than is present.
    let mut huge_parts = vec![0, 2];
    huge_parts.extend_from_slice(&[0xff; 9]);
    huge_parts.extend_from_slice(&[0x01, 0x01]);
    assert_eq!(with(&huge_parts), Err(WireError::Truncated));
    // A count far beyond the bytes present is malformed, whatever the limit.
    assert!(matches!(
        with(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
        Err(WireError::BadHeader(_))
    ));
    // Invalid UTF-8 in a name.
    assert!(matches!(
        with(&[1, 1, 0xff, 0, 0]),
        Err(WireError::BadHeader(_))
    ));
    // Header shorter than its fields.
    assert!(matches!(with(&[1]), Err(WireError::BadHeader(_))));
    // Bytes left over inside the declared header.
    assert!(matches!(with(&[0, 0, 0]), Err(WireError::BadHeader(_))));
    // Header length varint that overflows u64, and one that never ends.
    let mut overflow = vec![VERSION];
    overflow.extend_from_slice(&[0xff; 9]);
    overflow.push(0x02);
    assert!(matches!(
        decode(Bytes::from(overflow)),
        Err(WireError::BadHeader(_))
    ));
    let mut endless = vec![VERSION];
    endless.extend_from_slice(&[0x80; 11]);
    assert!(matches!(
        decode(Bytes::from(endless)),
        Err(WireError::BadHeader(_))
    ));
    // A huge header length is refused before anything else is read.
    let mut huge = vec![VERSION];
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(
        decode(Bytes::from(huge)),
        Err(WireError::HeaderTooLarge {
            len: u64::from(u32::MAX),
            max: MAX_HEADER_BYTES as u64
        })
    );
}

#[test]
fn decoded_parts_are_slices_of_the_input() {
    let bytes = encode(&sample());
    let range = bytes.as_ptr_range();
    let env = decode(bytes.clone()).unwrap();
    for part in env.body.parts() {
        assert!(range.contains(&part.as_ptr()), "part was copied");
    }
}

// --- typed errors in-band ------------------------------------------------------

#[test]
fn error_frames_carry_every_kind() {
    for kind in ErrorKind::ALL {
        let err = Error::new(kind, "déjà vu")
            .with_op("kv.get")
            .with_backend("mem");
        let env = decode(encode(&Envelope::error(RequestId(9), &err))).unwrap();
        assert_eq!(env.kind, EnvelopeKind::Error);
        let back = env.to_error();
        assert_eq!(back.kind(), kind);
        assert_eq!(back.message(), "déjà vu");
    }
    let bare = Envelope::new(EnvelopeKind::Error, RequestId(1)).with_body(&b"\xffoops"[..]);
    assert_eq!(bare.to_error().kind(), ErrorKind::Other);
    assert_eq!(bare.to_error().message(), "\u{fffd}oops");
    let future = bare.with_headers(Headers::new().with(names::ERROR_KIND, "60000"));
    assert_eq!(future.to_error().kind(), ErrorKind::Other);
}

#[test]
fn wire_errors_become_decode_errors() {
    let e: Error = WireError::UnknownKind(42).into();
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert_eq!(e.message(), "unknown envelope kind 42");
    let source = std::error::Error::source(&e).expect("source kept");
    assert_eq!(
        source.downcast_ref::<WireError>(),
        Some(&WireError::UnknownKind(42))
    );
}

#[test]
fn request_ids_are_unique_and_ordered_by_millisecond() {
    let many: std::collections::HashSet<_> = (0..10_000).map(|_| RequestId::new_v7()).collect();
    assert_eq!(many.len(), 10_000);
    let before = RequestId::new_v7();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let after = RequestId::new_v7();
    assert!(before < after, "{before} then {after}");
    // The variant bits say RFC 9562.
    assert_eq!(after.0 >> 62 & 0b11, 0b10);
}

#[test]
fn request_ids_print_and_parse_as_uuids() {
    let id = RequestId::new_v7();
    let text = id.to_string();
    assert_eq!(text.len(), 36);
    assert_eq!(&text[14..15], "7", "version nibble");
    assert_eq!(text.parse::<RequestId>(), Ok(id));
    assert_eq!(RFC_ID.to_string(), "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
    assert_eq!(
        "017F22E279B07CC398C4DC0C0C07398F".parse::<RequestId>(),
        Ok(RFC_ID)
    );
    assert_eq!(
        format!("{RFC_ID:?}"),
        "RequestId(017f22e2-79b0-7cc3-98c4-dc0c0c07398f)"
    );
    assert!(matches!(
        "not-a-uuid".parse::<RequestId>(),
        Err(WireError::InvalidRequestId(_))
    ));
    assert_eq!(RequestId::from_bytes(RFC_ID.to_bytes()), RFC_ID);
}

// --- stream framing --------------------------------------------------------------

#[test]
fn oversized_prefix_is_refused_before_buffering() {
    let mut dec = DelimitedDecoder::with_limits(Limits::DEFAULT.with_max_envelope_bytes(1024));
    dec.push(&[0xff, 0xff, 0xff, 0xff]);
    let e = WireError::EnvelopeTooLarge {
        len: u64::from(u32::MAX),
        max: 1024,
    };
    assert_eq!(dec.next_envelope(), Err(e.clone()));
    assert_eq!(dec.capacity(), 0, "nothing kept, nothing reserved");
    // Poisoned: framing is lost, so later bytes are dropped and the error sticks.
    dec.push(&[0; 4096]);
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.next_envelope(), Err(e.clone()));
    assert_eq!(dec.finish(), Err(e));

    // Refused as soon as the prefix is complete, with no envelope bytes present.
    let mut dec = DelimitedDecoder::new();
    dec.push(&((MAX_ENVELOPE_BYTES as u32) + 1).to_be_bytes());
    assert!(matches!(
        dec.next_envelope(),
        Err(WireError::EnvelopeTooLarge { .. })
    ));
    // Exactly at the limit it waits for the bytes instead, reserving nothing.
    let mut dec = DelimitedDecoder::new();
    dec.push(&(MAX_ENVELOPE_BYTES as u32).to_be_bytes());
    assert_eq!(dec.next_envelope(), Ok(None));
    assert!(dec.capacity() < 1024);
    assert_eq!(dec.finish(), Err(WireError::Truncated));
}

#[test]
fn undecodable_frame_is_skipped_and_stream_continues() {
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&3u32.to_be_bytes());
    stream.extend_from_slice(&[9, 9, 9]);
    encode_delimited(&sample(), &mut stream).unwrap();
    let mut dec = DelimitedDecoder::new();
    dec.push(&stream);
    assert_eq!(dec.next_envelope(), Err(WireError::UnsupportedVersion(9)));
    assert_eq!(dec.next_envelope(), Ok(Some(sample())));
    assert_eq!(dec.next_envelope(), Ok(None));
    assert_eq!(dec.finish(), Ok(()));
}

// --- properties ------------------------------------------------------------------

fn arb_kind() -> impl Strategy<Value = EnvelopeKind> {
    proptest::sample::select(EnvelopeKind::ALL.to_vec())
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", ".{0,24}"), 0..6)
        .prop_map(|pairs| pairs.into_iter().collect())
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Body::from),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..5)
            .prop_map(|parts| Body::from_parts(parts.into_iter().map(Bytes::from).collect())),
    ]
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (arb_kind(), any::<u128>(), arb_headers(), arb_body()).prop_map(|(kind, id, headers, body)| {
        Envelope {
            kind,
            id: RequestId(id),
            headers,
            body,
        }
    })
}

/// Everything a decoder yields from `dec` until it needs more bytes.
fn drain(dec: &mut DelimitedDecoder, out: &mut Vec<Result<Envelope, WireError>>) {
    loop {
        match dec.next_envelope() {
            Ok(None) => return,
            Ok(Some(env)) => out.push(Ok(env)),
            Err(e) => {
                let fatal = matches!(e, WireError::EnvelopeTooLarge { .. });
                out.push(Err(e));
                if fatal {
                    return;
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn round_trips_in_every_form(env in arb_envelope()) {
        let single = encode(&env);
        prop_assert_eq!(single.len(), env.encoded_len());
        prop_assert_eq!(&decode(single.clone()).unwrap(), &env);

        let parts = encode_parts(&env);
        prop_assert_eq!(parts.concat(), single.to_vec());
        prop_assert_eq!(&decode_parts(&parts).unwrap(), &env);

        let mut framed = BytesMut::new();
        encode_delimited(&env, &mut framed).unwrap();
        prop_assert_eq!(&framed[4..], &single[..]);
        prop_assert_eq!(Limits::DEFAULT.check(&env), Ok(()));
    }

    #[test]
    fn every_prefix_of_any_frame_is_truncated(env in arb_envelope()) {
        let full = encode(&env);
        for n in 0..full.len() {
            prop_assert_eq!(decode(full.slice(..n)), Err(WireError::Truncated));
        }
    }

    #[test]
    fn bit_flips_never_panic(
        env in arb_envelope(),
        flips in proptest::collection::vec(any::<proptest::sample::Index>(), 1..8),
    ) {
        let mut bytes = encode(&env).to_vec();
        let bits = bytes.len() * 8;
        for f in &flips {
            let bit = f.index(bits);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        let bytes = Bytes::from(bytes);
        if let Ok(again) = decode(bytes.clone()) {
            // Whatever decodes re-encodes to something that decodes the same.
            prop_assert_eq!(decode(encode(&again)), Ok(again));
        }
        let mut parts = encode_parts(&env);
        parts[0] = bytes.slice(..parts[0].len().min(bytes.len()));
        let _ = decode_parts(&parts);
        let mut dec = DelimitedDecoder::new();
        dec.push(&bytes);
        drain(&mut dec, &mut Vec::new());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let bytes = Bytes::from(data);
        let _ = decode(bytes.clone());
        let _ = decode_parts(&[bytes.clone(), bytes.clone()]);
        let mut dec = DelimitedDecoder::new();
        dec.push(&bytes);
        drain(&mut dec, &mut Vec::new());
    }

    #[test]
    fn frame_decoder_ignores_chunk_boundaries(
        envs in proptest::collection::vec(arb_envelope(), 1..5),
        chunks in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut stream = BytesMut::new();
        for env in &envs {
            encode_delimited(env, &mut stream).unwrap();
        }
        let want: Vec<_> = envs.into_iter().map(Ok).collect();

        let mut whole = DelimitedDecoder::new();
        whole.push(&stream);
        let mut got = Vec::new();
        drain(&mut whole, &mut got);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(whole.finish(), Ok(()));

        let mut bytewise = DelimitedDecoder::new();
        let mut got = Vec::new();
        for b in stream.chunks(1) {
            bytewise.push(b);
            drain(&mut bytewise, &mut got);
        }
        prop_assert_eq!(&got, &want);

        let mut chunked = DelimitedDecoder::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            chunked.push(chunk);
            drain(&mut chunked, &mut got);
            rest = tail;
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(chunked.buffered(), 0);
    }
}
