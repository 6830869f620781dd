//! The parsers of received NATS messages, for `fuzz/` only.
//!
//! Not part of the API (hidden from the docs, no stability promise): thin
//! public wrappers so the fuzz targets, a crate outside this workspace, can
//! reach the crate-private functions that turn what a NATS server delivers
//! into plane values.

use async_nats::HeaderMap;
use bytes::Bytes;
use plane_core::events::Event;
use plane_core::request::Incoming;
use plane_core::{Error, Message, Result};

/// `mapping::decode`: headers and payload as a message.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes, strip: &[&str]) -> Result<Message> {
    crate::mapping::decode(headers, payload, strip)
}

/// `mapping::encode`: a message as headers and payload.
pub fn encode(message: &Message, extra: &[(&str, &str)]) -> (HeaderMap, Bytes) {
    crate::mapping::encode(message, extra)
}

/// The event a subscriber sees for a NATS message.
pub fn event_of(subject: &str, headers: Option<&HeaderMap>, payload: Bytes) -> Result<Event> {
    crate::events::event_of(subject, headers, payload)
}

/// The call a server sees for a NATS request, and whether it is streamed.
pub fn parse_call(msg: &async_nats::Message) -> Result<(Incoming, bool)> {
    crate::request::parse_call(msg)
}

/// The error a caller sees for an error reply's headers.
pub fn typed_error(headers: Option<&HeaderMap>) -> Error {
    crate::request::typed_error(headers)
}
