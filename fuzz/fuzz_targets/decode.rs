//! Fuzzes every decoder in `plane_core::wire` with the same input:
//!
//! - `decode`: the input as one single-buffer encoding;
//! - `decode_parts`: the input cut into message parts, each prefixed by a u16
//!   little-endian length (the last part takes whatever remains);
//! - `DelimitedDecoder`: the input as a byte stream, pushed whole, byte by byte
//!   and in input-derived chunks, which must all yield the same results.
//!
//! Anything that decodes must re-encode to bytes that decodes to the same
//! envelope in every form (decode -> encode -> decode is stable).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use plane_core::wire::{self, DelimitedDecoder, Envelope, WireError};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);

    if let Ok(env) = wire::decode(bytes.clone()) {
        assert_stable(&env);
    }

    if let Ok(env) = wire::decode_parts(&split_parts(&bytes)) {
        assert_stable(&env);
    }

    let whole = run_stream(data, &[data.len().max(1)]);
    let bytewise = run_stream(data, &[1]);
    let sizes: Vec<usize> = data.iter().map(|b| usize::from(b % 17) + 1).collect();
    let chunked = run_stream(data, if sizes.is_empty() { &[1] } else { &sizes });
    assert_eq!(whole, bytewise);
    assert_eq!(whole, chunked);
    for env in whole.0.iter().flatten() {
        assert_stable(env);
    }
});

/// Cut `bytes` into `[u16 LE length][part]...` parts, zero-copy.
fn split_parts(bytes: &Bytes) -> Vec<Bytes> {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(prefix) = bytes.get(at..at + 2) else {
            parts.push(bytes.slice(at..));
            break;
        };
        let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
        let start = at + 2;
        let end = (start + len).min(bytes.len());
        parts.push(bytes.slice(start..end));
        at = end;
    }
    parts
}

/// Everything a `DelimitedDecoder` yields when fed `data` in chunks of `sizes`
/// (cycled), and its verdict at end of stream.
fn run_stream(
    data: &[u8],
    sizes: &[usize],
) -> (Vec<Result<Envelope, WireError>>, Result<(), WireError>) {
    let mut dec = DelimitedDecoder::new();
    let mut out = Vec::new();
    let mut rest = data;
    let mut sizes = sizes.iter().cycle();
    loop {
        loop {
            match dec.next_envelope() {
                Ok(None) => break,
                Ok(Some(env)) => out.push(Ok(env)),
                Err(e) => {
                    let fatal = matches!(e, WireError::EnvelopeTooLarge { .. });
                    out.push(Err(e));
                    if fatal {
                        return (out, dec.finish());
                    }
                }
            }
        }
        if rest.is_empty() {
            return (out, dec.finish());
        }
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        dec.push(chunk);
        rest = tail;
    }
}

/// decode -> encode -> decode is stable in every form.
fn assert_stable(env: &Envelope) {
    let single = wire::encode(env);
    assert_eq!(single.len(), env.encoded_len());
    let again = wire::decode(single.clone()).expect("re-encoded envelope decodes");
    assert_eq!(&again, env);
    assert_eq!(wire::encode(&again), single, "encoding is deterministic");

    let parts = wire::encode_parts(env);
    assert_eq!(parts.concat(), single.to_vec());
    assert_eq!(wire::decode_parts(&parts).as_ref(), Ok(env));

    let mut framed = BytesMut::new();
    wire::encode_delimited(env, &mut framed).expect("fits a u32 prefix");
    let mut dec = DelimitedDecoder::new();
    dec.push(&framed);
    assert_eq!(dec.next_envelope().as_ref(), Ok(&Some(env.clone())));
    assert_eq!(dec.finish(), Ok(()));
}
