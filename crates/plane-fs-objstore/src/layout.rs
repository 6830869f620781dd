//! Where things live inside the store, and how object names become paths.
//!
//! Each bucket is a prefix `<bucket>/` holding:
//!
//! - `bucket.json`: the marker whose presence makes the bucket exist;
//! - `m/...`: one small JSON manifest per object, at a path derived from the
//!   object's name;
//! - `d/<id>`: immutable content blobs, one per completed upload, named by a
//!   fresh UUIDv7 and referenced by exactly one manifest.
//!
//! Object names are encoded by this module rather than handed to
//! [`Path::from`]: object_store percent-encodes some characters in
//! `Path::from` but not in `Path::parse`, and the local filesystem store
//! decodes them on the way to disk, so a name containing `%`, `#` or `~` would
//! not come back from a listing as the same `Path`. The encoding here keeps
//! only `[A-Za-z0-9_.-]` literally and writes every other byte as `=XX`, so an
//! encoded segment is the same string in a `Path`, a URL and a file name, on
//! every store.
//!
//! A name's segments (split at `/`) become directories ending in `.d`, and its
//! last segment a file ending in `.o`. The suffixes keep the objects `a` and
//! `a/b` apart on a filesystem, where `a` cannot be a file and a directory at
//! once.

use object_store::path::{Path, PathPart};

/// The bucket's marker object.
pub(crate) fn marker(bucket: &str) -> Path {
    Path::from_iter([bucket, "bucket.json"])
}

/// The bucket's prefix (its marker, manifests and blobs).
pub(crate) fn bucket_prefix(bucket: &str) -> Path {
    Path::from_iter([bucket])
}

/// The prefix of the bucket's manifests.
pub(crate) fn manifests(bucket: &str) -> Path {
    Path::from_iter([bucket, "m"])
}

/// The prefix of the bucket's content blobs.
pub(crate) fn blobs(bucket: &str) -> Path {
    Path::from_iter([bucket, "d"])
}

/// A content blob.
pub(crate) fn blob(bucket: &str, id: &str) -> Path {
    Path::from_iter([bucket, "d", id])
}

const DIR_SUFFIX: &str = ".d";
const FILE_SUFFIX: &str = ".o";

fn literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Encode one name segment (never empty: names are validated).
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() + 2);
    for &b in segment.as_bytes() {
        if literal(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Decode one encoded segment; `None` if it is not one this module wrote.
pub(crate) fn decode_segment(encoded: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut it = encoded.bytes();
    while let Some(b) = it.next() {
        if b == b'=' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else if literal(b) {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The manifest path of object `name` (a valid object name).
pub(crate) fn manifest(bucket: &str, name: &str) -> Path {
    let segments: Vec<&str> = name.split('/').collect();
    let last = segments.len() - 1;
    let mut parts: Vec<PathPart<'static>> = vec![PathPart::from(bucket.to_owned()), "m".into()];
    for (i, seg) in segments.iter().enumerate() {
        let suffix = if i == last { FILE_SUFFIX } else { DIR_SUFFIX };
        parts.push(PathPart::from(encode_segment(seg) + suffix));
    }
    Path::from_iter(parts)
}

/// The longest directory prefix of `prefix` in manifest space: the manifests
/// of every object whose name starts with `prefix` lie under it.
pub(crate) fn list_prefix(bucket: &str, prefix: &str) -> Path {
    let mut parts: Vec<PathPart<'static>> = vec![PathPart::from(bucket.to_owned()), "m".into()];
    // Only segments followed by a `/` are whole directories; the rest of the
    // prefix may be a partial segment and is filtered by name afterwards.
    let whole = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    if !whole.is_empty() {
        for seg in whole.split('/') {
            if seg.is_empty() {
                // No valid name has an empty segment, so nothing can match;
                // an impossible directory keeps the listing empty.
                parts.push(PathPart::from("=".to_owned()));
                break;
            }
            parts.push(PathPart::from(encode_segment(seg) + DIR_SUFFIX));
        }
    }
    Path::from_iter(parts)
}

/// The object name a manifest path stands for; `None` for anything else
/// under the manifest prefix (for example a staging file of an interrupted
/// write).
pub(crate) fn name_of_manifest(bucket: &str, path: &Path) -> Option<String> {
    let mut parts = path.prefix_match(&manifests(bucket))?.peekable();
    let mut name = String::new();
    while let Some(part) = parts.next() {
        let raw = part.as_ref();
        let last = parts.peek().is_none();
        let suffix = if last { FILE_SUFFIX } else { DIR_SUFFIX };
        let seg = decode_segment(raw.strip_suffix(suffix)?)?;
        if seg.is_empty() {
            return None;
        }
        if !name.is_empty() {
            name.push('/');
        }
        name.push_str(&seg);
    }
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_stay_literal_in_paths() {
        for seg in [
            "plain",
            "with space",
            "100%",
            "%41",
            "a#1",
            "ü-ñ-✓",
            "=3D",
            "tilde~",
            "..x",
            "a.o",
            "a.d",
        ] {
            let enc = encode_segment(seg);
            assert_eq!(decode_segment(&enc).as_deref(), Some(seg), "{seg}");
            // The encoded form survives both of object_store's constructors
            // unchanged, so a listed path equals the path written.
            let from = Path::from(enc.as_str());
            let parsed = Path::parse(&enc).expect("parses");
            assert_eq!(from.as_ref(), enc);
            assert_eq!(parsed.as_ref(), enc);
        }
    }

    #[test]
    fn manifest_paths_round_trip() {
        for name in ["a", "a/b", "dir/sub dir/file 100%.txt", "ü/✓", "a.o/b.d"] {
            let p = manifest("bkt", name);
            assert_eq!(name_of_manifest("bkt", &p).as_deref(), Some(name));
            assert!(p.prefix_matches(&list_prefix("bkt", name)));
        }
        // An object and a "directory" of the same name do not collide.
        assert_ne!(manifest("b", "a").as_ref(), list_prefix("b", "a/").as_ref());
        // Staging files of interrupted writes are not manifests.
        let staging = Path::parse("bkt/m/a.o#1").expect("parses");
        assert_eq!(name_of_manifest("bkt", &staging), None);
    }

    #[test]
    fn list_prefix_uses_whole_segments_only() {
        assert_eq!(list_prefix("b", "").as_ref(), "b/m");
        assert_eq!(list_prefix("b", "ab").as_ref(), "b/m");
        assert_eq!(list_prefix("b", "x/y/ab").as_ref(), "b/m/x.d/y.d");
        assert_eq!(list_prefix("b", "x/").as_ref(), "b/m/x.d");
    }
}
