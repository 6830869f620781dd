//! Oversized payloads through the objects plane: send a handle, not the bytes.
//!
//! Brokers cap payloads (NATS at 1 MiB by default) and brokerless transports
//! should not carry hundreds of MiB in one frame either. [`Offload`] moves a
//! body larger than a threshold into an [`ObjectBucket`] under a unique name
//! and replaces it with a small message whose headers carry the handle:
//!
//! | header | value |
//! |---|---|
//! | [`names::OBJECT_REF`] | `<bucket>/<object name>` |
//! | [`names::OBJECT_SIZE`] | body size in bytes |
//! | [`names::OBJECT_DIGEST`] | `sha256=<hex>` of the body |
//! | [`names::OBJECT_PARTS`] | part lengths, comma-separated (multipart bodies only) |
//!
//! The receiver calls [`Offload::resolve`], which fetches the body back,
//! checks size and digest, and returns the original message (other headers
//! untouched, parts restored). A message without the handle passes through
//! either call unchanged, so both ends can apply them to every message.
//!
//! The objects are not deleted by `resolve`: with several receivers (events,
//! broadcast queues) only the application knows when the last one is done.
//! Call [`Offload::discard`] then, or give the bucket a lifecycle of its own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! use plane_core::offload::Offload;
//! use plane_core::Message;
//!
//! let objects = plane_mem::Hub::new().objects(&Default::default());
//! let offload = Offload::new(objects.create_bucket("payloads").await?, 1024);
//!
//! let big = Message::from(vec![7u8; 1 << 20]);
//! let small = offload.offload(big.clone()).await?;
//! assert!(small.body.is_empty());
//! assert_eq!(offload.resolve(small).await?, big);
//! # Ok(()) }
//! ```

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::message::{names, Body, Message};
use crate::objects::{Digester, ObjectBucket, ObjectMeta};

/// Moves large bodies into an object bucket and back. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Offload {
    bucket: ObjectBucket,
    threshold: usize,
    prefix: String,
    max_resolve: u64,
}

impl Offload {
    /// Offload bodies of messages whose [`payload_len`](Message::payload_len)
    /// exceeds `threshold` bytes into `bucket`.
    pub fn new(bucket: ObjectBucket, threshold: usize) -> Self {
        Offload {
            bucket,
            threshold,
            prefix: "offload/".into(),
            max_resolve: 1 << 30,
        }
    }

    /// Name prefix of offloaded objects (default `offload/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Largest body [`resolve`](Offload::resolve) brings into memory
    /// (default 1 GiB); a handle to a larger object fails with
    /// `PayloadTooLarge` before anything is read.
    pub fn max_resolve(mut self, bytes: u64) -> Self {
        self.max_resolve = bytes;
        self
    }

    /// The bucket objects go to.
    pub fn bucket(&self) -> &ObjectBucket {
        &self.bucket
    }

    /// Whether `message` carries an object handle instead of its body.
    pub fn is_offloaded(message: &Message) -> bool {
        message.headers.get(names::OBJECT_REF).is_some()
    }

    /// Store the body of a message larger than the threshold and return the
    /// message with an empty body and the handle headers. Smaller messages,
    /// and messages that already carry a handle, are returned unchanged.
    pub async fn offload(&self, message: Message) -> Result<Message> {
        if message.payload_len() <= self.threshold || Offload::is_offloaded(&message) {
            return Ok(message);
        }
        let Message { mut headers, body } = message;
        let name = format!("{}{}", self.prefix, uuid::Uuid::now_v7().simple());
        let parts = body.into_parts();
        let lengths = (parts.len() > 1).then(|| {
            parts
                .iter()
                .map(|p| p.len().to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        let data = stream::iter(parts.into_iter().map(Ok)).boxed();
        let info = self
            .bucket
            .put_stream(&name, ObjectMeta::default(), data)
            .await
            .map_err(|e| e.with_op("offload.offload"))?;
        headers.insert(
            names::OBJECT_REF,
            format!("{}/{}", self.bucket.name(), name),
        );
        headers.insert(names::OBJECT_SIZE, info.size.to_string());
        headers.insert(names::OBJECT_DIGEST, info.digest);
        if let Some(lengths) = lengths {
            headers.insert(names::OBJECT_PARTS, lengths);
        }
        Ok(Message::new(headers, Body::empty()))
    }

    /// The object name a handle refers to, checked against this bucket.
    fn object_name<'m>(&self, message: &'m Message) -> Result<Option<&'m str>> {
        let Some(handle) = message.headers.get(names::OBJECT_REF) else {
            return Ok(None);
        };
        match handle.split_once('/') {
            Some((bucket, name)) if bucket == self.bucket.name() && !name.is_empty() => {
                Ok(Some(name))
            }
            _ => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "object handle `{handle}` does not name an object in bucket `{}`",
                    self.bucket.name()
                ),
            )
            .with_op("offload.resolve")),
        }
    }

    /// Fetch the body a handle refers to, verify its size and digest, and
    /// return the original message. A message without a handle is returned
    /// unchanged.
    ///
    /// # Errors
    /// `InvalidArgument` for a handle to another bucket or malformed handle
    /// headers, `NotFound` if the object is gone, `PayloadTooLarge` above
    /// [`max_resolve`](Offload::max_resolve), `Decode` if the content does
    /// not match the handle's size or digest.
    pub async fn resolve(&self, message: Message) -> Result<Message> {
        let op = "offload.resolve";
        let Some(name) = self.object_name(&message)? else {
            return Ok(message);
        };
        let bad = |what: &str| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("offloaded message has {what}"),
            )
            .with_op(op)
        };
        let size: u64 = message
            .headers
            .get(names::OBJECT_SIZE)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no valid size header"))?;
        let digest = message
            .headers
            .get(names::OBJECT_DIGEST)
            .ok_or_else(|| bad("no digest header"))?
            .to_owned();
        let lengths: Option<Vec<usize>> = match message.headers.get(names::OBJECT_PARTS) {
            None => None,
            Some(v) => Some(
                v.split(',')
                    .map(|n| n.parse().map_err(|_| bad("a malformed parts header")))
                    .collect::<Result<_>>()?,
            ),
        };
        if size > self.max_resolve {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "offloaded body of {size} bytes exceeds the resolve limit of {}",
                    self.max_resolve
                ),
            )
            .with_op(op));
        }
        let reader = self.bucket.get(name).await.map_err(|e| e.with_op(op))?;
        if reader.info.size != size {
            return Err(mismatch(op, size, reader.info.size));
        }
        let bytes = reader.bytes().await.map_err(|e| e.with_op(op))?;
        if bytes.len() as u64 != size {
            return Err(mismatch(op, size, bytes.len() as u64));
        }
        if Digester::of(&bytes) != digest {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("offloaded body `{name}` does not match its digest"),
            )
            .with_op(op));
        }
        let body = match lengths {
            None => Body::from(bytes),
            Some(lengths) => {
                if lengths.iter().sum::<usize>() != bytes.len() {
                    return Err(bad("part lengths that do not add up to its size"));
                }
                let mut rest = bytes;
                let parts: Vec<Bytes> = lengths.iter().map(|&n| rest.split_to(n)).collect();
                Body::from_parts(parts)
            }
        };
        let mut headers = message.headers;
        for h in [
            names::OBJECT_REF,
            names::OBJECT_SIZE,
            names::OBJECT_DIGEST,
            names::OBJECT_PARTS,
        ] {
            headers.remove(h);
        }
        Ok(Message::new(headers, body))
    }

    /// Delete the object a handle refers to (after the last receiver resolved
    /// it). A message without a handle is ignored; an object already gone is
    /// not an error.
    pub async fn discard(&self, message: &Message) -> Result<()> {
        let Some(name) = self.object_name(message)? else {
            return Ok(());
        };
        match self.bucket.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.with_op("offload.discard")),
        }
    }
}

fn mismatch(op: &'static str, expected: u64, actual: u64) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("offloaded body is {actual} bytes, the handle says {expected}"),
    )
    .with_op(op)
}
