//! Length-delimited framing for byte-stream transports (QUIC streams, TCP).
//!
//! Each envelope is a big-endian `u32` length followed by that many bytes of the
//! single-buffer form. Big-endian matches the common convention for length
//! prefixes (and `tokio_util`'s `LengthDelimitedCodec` default), so a backend
//! could use either this decoder or that codec.

use bytes::{Buf, BufMut, BytesMut};

use super::{decode_with, head, Envelope, Limits, WireError};

/// Bytes of the outer length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Append `env` to `dst` as a length-delimited envelope: `u32` big-endian
/// length, then the single-buffer form.
///
/// # Errors
///
/// [`WireError::EnvelopeTooLarge`] if the envelope is longer than `u32::MAX` bytes;
/// `dst` is left unchanged. (Whether the receiver accepts the envelope depends
/// on its [`Limits`]; see [`Limits::check`].)
pub fn encode_delimited(env: &Envelope, dst: &mut BytesMut) -> Result<(), WireError> {
    let postcard_len = head::postcard_len(env);
    let len = head::head_len(postcard_len) + env.body.len();
    let Ok(prefix) = u32::try_from(len) else {
        return Err(WireError::EnvelopeTooLarge {
            len: len as u64,
            max: u64::from(u32::MAX),
        });
    };
    dst.reserve(LENGTH_PREFIX_LEN + len);
    dst.put_u32(prefix);
    super::encode_with_len(env, postcard_len, dst);
    Ok(())
}

/// Splits a byte stream into envelopes, without doing any I/O itself.
///
/// Feed it whatever the transport delivered with [`push`](DelimitedDecoder::push),
/// then call [`next_envelope`](DelimitedDecoder::next_envelope) until it returns
/// `Ok(None)`. Chunk boundaries do not matter: byte by byte or all at once
/// gives the same envelopes.
///
/// # Behavior
///
/// - The length prefix is checked against [`Limits::max_envelope_bytes`] as soon
///   as its four bytes are present, before the envelope's bytes are waited for;
///   buffer space is never reserved from a declared length, it only grows
///   with bytes actually pushed.
/// - An envelope that is too large poisons the decoder: framing is lost, so every
///   later call returns the same error and pushed bytes are discarded. The
///   caller should close the stream.
/// - An envelope that is well delimited but does not decode is consumed and its
///   error returned; framing is intact, so decoding may continue.
/// - Decoded body parts are zero-copy slices of the decoder's buffer.
///
/// ```
/// use bytes::BytesMut;
/// use plane_core::wire::{encode_delimited, Envelope, DelimitedDecoder, EnvelopeKind, RequestId};
///
/// let env = Envelope::new(EnvelopeKind::Heartbeat, RequestId(1));
/// let mut stream = BytesMut::new();
/// encode_delimited(&env, &mut stream)?;
///
/// let mut dec = DelimitedDecoder::new();
/// for byte in stream.chunks(1) {
///     dec.push(byte);
/// }
/// assert_eq!(dec.next_envelope()?, Some(env));
/// assert_eq!(dec.next_envelope()?, None);
/// dec.finish()?;
/// # Ok::<(), plane_core::wire::WireError>(())
/// ```
#[derive(Debug, Default)]
pub struct DelimitedDecoder {
    buf: BytesMut,
    limits: Limits,
    failed: Option<WireError>,
}

impl DelimitedDecoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        DelimitedDecoder::default()
    }

    /// A decoder that refuses anything beyond `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        DelimitedDecoder {
            limits,
            ..DelimitedDecoder::default()
        }
    }

    /// Append bytes received from the stream. Ignored once the decoder has
    /// failed (see [`next_envelope`](DelimitedDecoder::next_envelope)).
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete envelope, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// [`WireError::EnvelopeTooLarge`] for a length prefix beyond the limit (and
    /// on every call after it); any other [`WireError`] for a complete envelope
    /// that does not decode, which is then skipped.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(prefix) = self.buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if u64::from(len) > self.limits.max_envelope_bytes as u64 {
            let e = WireError::EnvelopeTooLarge {
                len: u64::from(len),
                max: self.limits.max_envelope_bytes as u64,
            };
            self.failed = Some(e.clone());
            // Release what is buffered: none of it can be used any more.
            self.buf = BytesMut::new();
            return Err(e);
        }
        // `len` is at most `max_envelope_bytes`, a `usize`, so this is lossless.
        let len = len as usize;
        if self.buf.len() - LENGTH_PREFIX_LEN < len {
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX_LEN);
        let envelope = self.buf.split_to(len).freeze();
        decode_with(envelope, &self.limits).map(Some)
    }

    /// Bytes buffered and not yet returned as envelopes.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Buffer capacity, for tests that check nothing is reserved up front.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Check that the stream ended on an envelope boundary; call it when the
    /// transport reports end of stream, after draining
    /// [`next_envelope`](DelimitedDecoder::next_envelope).
    ///
    /// # Errors
    ///
    /// [`WireError::Truncated`] if a partial envelope is buffered; the decoder's
    /// failure if it has failed.
    pub fn finish(&self) -> Result<(), WireError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buf.is_empty() => Ok(()),
            None => Err(WireError::Truncated),
        }
    }
}
