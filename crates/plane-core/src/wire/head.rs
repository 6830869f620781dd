//! The v1 envelope head: version byte, header length varint, postcard header.
//!
//! The postcard part is written and read through hand-written serde impls
//! rather than `#[derive]`: encoding borrows straight from the [`Envelope`]
//! (no intermediate struct, no copies of header strings), and decoding threads
//! the [`Limits`] into the sequences so that a declared count is checked
//! *before* anything is allocated for it.
//!
//! Why decoding cannot allocate unboundedly: the header is at most
//! `max_header_bytes` long and is sliced out of the input only after that
//! check. Within it, header names and values are decoded as `&str` borrowed
//! from the input (postcard checks each declared string length against the
//! bytes present before slicing), the id is a fixed array, and the two
//! sequences preallocate at most their configured limit (see [`Bounded`]).
//! Owned copies are made only for header strings that were actually present,
//! and not for the names plane itself uses, which [`Headers`] keeps as
//! `&'static str`.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Serialize, Serializer};

use super::{Envelope, EnvelopeKind, Limits, RequestId, WireError, VERSION};
use crate::Headers;

/// Longest LEB128 encoding of a `u64` (postcard's rule: 10 bytes, the last
/// of which may only carry the top bit).
const VARINT_MAX: usize = 10;

/// Number of bytes `v` occupies as an unsigned LEB128 varint.
pub(super) const fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Append `v` as a minimal unsigned LEB128 varint (postcard's encoding).
pub(super) fn put_varint(dst: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// Read an unsigned LEB128 varint from the start of `buf`, with postcard's
/// acceptance rules for `u64`. Returns the value and the bytes it used.
fn read_varint(buf: &[u8]) -> Result<(u64, usize), WireError> {
    let mut out = 0u64;
    for i in 0..VARINT_MAX {
        let Some(&b) = buf.get(i) else {
            return Err(WireError::Truncated);
        };
        out |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // The tenth byte holds bit 63 only; anything more would overflow.
            if i == VARINT_MAX - 1 && b > 0x01 {
                break;
            }
            return Ok((out, i + 1));
        }
    }
    Err(WireError::BadHeader(
        "header length varint overflows u64".into(),
    ))
}

// --- encoding --------------------------------------------------------------

/// The postcard header of `env`, borrowed: (kind, id, headers, part lengths).
struct HeadRef<'a>(&'a Envelope);

impl Serialize for HeadRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let env = self.0;
        // A tuple is postcard's struct encoding: the fields back to back.
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(&env.kind.code())?;
        // `[u8; 16]` is a fixed-size tuple in postcard: 16 raw bytes, no length.
        // (A `u128` would be a varint of up to 19 bytes, and UUIDv7s, whose
        // top bits hold a timestamp, would always take the long form.)
        t.serialize_element(&env.id.to_bytes())?;
        t.serialize_element(&HeaderSeq(&env.headers))?;
        t.serialize_element(&PartLens(env.body.parts()))?;
        t.end()
    }
}

struct HeaderSeq<'a>(&'a Headers);

impl Serialize for HeaderSeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for pair in self.0.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

struct PartLens<'a>(&'a [bytes::Bytes]);

impl Serialize for PartLens<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for part in self.0 {
            seq.serialize_element(&(part.len() as u64))?;
        }
        seq.end()
    }
}

/// A postcard output flavor that appends to a `BytesMut`, so the header is
/// written in place with no scratch buffer.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.put_u8(b);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Length of the postcard header of `env`.
pub(super) fn postcard_len(env: &Envelope) -> usize {
    // Serialising into the `Size` flavor only counts bytes; it cannot fail
    // because every sequence above declares its length and every value is a
    // plain integer, byte array or string.
    postcard::serialize_with_flavor(&HeadRef(env), postcard::ser_flavors::Size::default())
        .expect("postcard header of an envelope is always serialisable")
}

/// Length of the head part: version byte, header length varint, header.
pub(super) fn head_len(postcard_len: usize) -> usize {
    1 + varint_len(postcard_len as u64) + postcard_len
}

/// Append the head (version, header length, postcard header) of `env`.
pub(super) fn put_head(env: &Envelope, postcard_len: usize, dst: &mut BytesMut) {
    dst.put_u8(VERSION);
    put_varint(dst, postcard_len as u64);
    let before = dst.len();
    // Cannot fail: see `postcard_len`; `Append` itself never refuses bytes.
    postcard::serialize_with_flavor(&HeadRef(env), Append(dst))
        .expect("postcard header of an envelope is always serialisable");
    debug_assert_eq!(dst.len() - before, postcard_len);
}

// --- decoding --------------------------------------------------------------

/// A decoded head.
pub(super) struct Head {
    pub(super) kind: EnvelopeKind,
    pub(super) id: RequestId,
    pub(super) headers: Headers,
    pub(super) part_lens: Vec<u64>,
    /// Bytes the head occupies: version byte, varint and postcard header.
    pub(super) len: usize,
}

/// Decode the head at the start of `buf` (which starts with the version byte).
///
/// Order of checks: version, header length against the limit and against the
/// input, then the postcard header (kind, id, header count, headers, part
/// count, part lengths), each count against its limit before it is used.
pub(super) fn decode_head(buf: &[u8], limits: &Limits) -> Result<Head, WireError> {
    let (&version, rest) = buf.split_first().ok_or(WireError::Truncated)?;
    check_version(version)?;
    let (declared, varint_bytes) = read_varint(rest)?;
    if declared > limits.max_header_bytes as u64 {
        return Err(WireError::HeaderTooLarge {
            len: declared,
            max: limits.max_header_bytes as u64,
        });
    }
    // `declared` is at most `max_header_bytes`, a `usize`, so this is lossless.
    let postcard_len = declared as usize;
    let header = rest
        .get(varint_bytes..)
        .and_then(|r| r.get(..postcard_len))
        .ok_or(WireError::Truncated)?;

    let violation = Cell::new(None);
    let mut de = postcard::Deserializer::from_bytes(header);
    let raw = HeadSeed {
        limits,
        violation: &violation,
    }
    .deserialize(&mut de)
    .map_err(|e| violation.take().unwrap_or_else(|| bad_header(e)))?;
    let leftover = de.finalize().map_err(bad_header)?;
    if !leftover.is_empty() {
        return Err(WireError::BadHeader(format!(
            "{} bytes left over after the header",
            leftover.len()
        )));
    }

    let mut headers = Headers::new();
    for (name, value) in raw.headers {
        if headers.get(name).is_some() {
            return Err(WireError::DuplicateHeader(name.to_owned()));
        }
        headers.insert(name, value);
    }
    Ok(Head {
        kind: raw.kind,
        id: raw.id,
        headers,
        part_lens: raw.part_lens,
        len: 1 + varint_bytes + postcard_len,
    })
}

/// Refuse versions outside `MIN_VERSION..=VERSION`.
pub(super) fn check_version(version: u8) -> Result<(), WireError> {
    if (super::MIN_VERSION..=VERSION).contains(&version) {
        Ok(())
    } else {
        Err(WireError::UnsupportedVersion(version))
    }
}

/// Postcard's errors, in this crate's lower-case style.
fn bad_header(e: postcard::Error) -> WireError {
    let why = match e {
        postcard::Error::DeserializeUnexpectedEnd => "header ends early",
        postcard::Error::DeserializeBadVarint => "malformed varint",
        postcard::Error::DeserializeBadUtf8 => "header text is not utf-8",
        _ => "undecodable postcard",
    };
    WireError::BadHeader(why.into())
}

struct RawHead<'de> {
    kind: EnvelopeKind,
    id: RequestId,
    headers: Vec<(&'de str, &'de str)>,
    part_lens: Vec<u64>,
}

/// Deserialises the header with the limits in hand. A limit violation is
/// stored in `violation` (serde errors can only carry text) and the caller
/// reports it instead of the generic postcard error.
struct HeadSeed<'a> {
    limits: &'a Limits,
    violation: &'a Cell<Option<WireError>>,
}

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = RawHead<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_tuple(4, self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = RawHead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a plane v1 envelope header")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let missing = || de::Error::invalid_length(0, &"4 header fields");
        let code: u8 = seq.next_element()?.ok_or_else(missing)?;
        // Checked here, first, so that an envelope from a peer with a newer kind
        // reports the kind rather than whatever else fails to parse.
        let kind = EnvelopeKind::from_code(code).map_err(|e| self.fail(e))?;
        let id: [u8; 16] = seq.next_element()?.ok_or_else(missing)?;
        let headers = seq
            .next_element_seed(Bounded::new(
                self.limits.max_header_entries,
                Counted::Headers,
                self.violation,
            ))?
            .ok_or_else(missing)?;
        let part_lens = seq
            .next_element_seed(Bounded::new(
                self.limits.max_parts,
                Counted::Parts,
                self.violation,
            ))?
            .ok_or_else(missing)?;
        Ok(RawHead {
            kind,
            id: RequestId::from_bytes(id),
            headers,
            part_lens,
        })
    }
}

impl HeadSeed<'_> {
    fn fail<E: de::Error>(&self, e: WireError) -> E {
        let msg = e.to_string();
        self.violation.set(Some(e));
        E::custom(msg)
    }
}

#[derive(Clone, Copy)]
enum Counted {
    Headers,
    Parts,
}

/// A `Vec<T>` whose length is checked against `max` before any allocation.
///
/// Why this matters: serde's own `Vec` impl preallocates from the declared
/// length (capped at 1 MiB by serde, and at the bytes left in the input by
/// postcard's size hint). Both caps are far above what a 64 KiB header can
/// legitimately need. Here the preallocation is at most `max` elements, a
/// limit the *receiver* chose, and a larger declared count is refused
/// before reading a single element.
struct Bounded<'a, T> {
    max: usize,
    what: Counted,
    violation: &'a Cell<Option<WireError>>,
    _t: PhantomData<fn() -> T>,
}

impl<'a, T> Bounded<'a, T> {
    fn new(max: usize, what: Counted, violation: &'a Cell<Option<WireError>>) -> Self {
        Bounded {
            max,
            what,
            violation,
            _t: PhantomData,
        }
    }

    fn too_many<E: de::Error>(&self, count: u64) -> E {
        let max = self.max as u64;
        let e = match self.what {
            Counted::Headers => WireError::TooManyHeaders { count, max },
            Counted::Parts => WireError::TooManyParts { count, max },
        };
        let msg = e.to_string();
        self.violation.set(Some(e));
        E::custom(msg)
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Bounded<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // postcard reports the declared count as the hint, or no hint when
        // the count exceeds the bytes left (the sequence is then bound to
        // fail with "ends early"). Either way nothing is allocated beyond
        // `max` elements.
        let hint = seq.size_hint();
        if let Some(n) = hint {
            if n > self.max {
                return Err(self.too_many(n as u64));
            }
        }
        let mut out = Vec::with_capacity(hint.unwrap_or(0).min(self.max));
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                return Err(self.too_many(out.len() as u64 + 1));
            }
            out.push(item);
        }
        Ok(out)
    }
}
