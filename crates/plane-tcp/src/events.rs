//! The TCP events plane: at-most-once publish/subscribe between peers,
//! [`plane_peer::events::PeerEvents`] over TCP links. A subscription is one
//! more multiplexed "call" on the connection to each publisher, under its
//! own request id: the publisher writes every matching event under that id,
//! and the subscriber's link ending (its handle dropped, the connection
//! lost) unsubscribes. Wildcards, worker groups (each publisher picks one
//! member per group) and per-publisher order; no durable streams.

use plane_peer::events::PeerEvents;

use crate::request::TcpLinks;

pub use plane_peer::events::{EVENTS_ENDPOINT, SUBSCRIBER_QUEUE};

/// The TCP events plane. Build it with [`TcpEvents::connect`] (or through
/// the registry with a `tcp://` URL, sharing the session's listener) and
/// wrap it in [`plane_core::Events`].
pub type TcpEvents = PeerEvents<TcpLinks>;
