//! The QUIC events plane: at-most-once publish/subscribe between peers.
//! The plane itself is [`plane_peer::events::PeerEvents`], written once for
//! every brokerless transport; this module is what is QUIC's: each
//! subscription is one bidirectional stream, and a publisher writes a batch
//! of queued events to it in one write.
//!
//! # Topology
//!
//! An events handle publishes on a QUIC endpoint — the one its session's
//! request plane binds, or one of its own from [`QuicEvents::connect`] —
//! (TLS as for the request plane) and registers it in [discovery](plane_core::discovery) as an
//! instance of the reserved endpoint [`EVENTS_ENDPOINT`] (`plane-events`),
//! with its certificate fingerprint. A subscription opens one bidirectional
//! stream to every publisher listed there, on the connection shared with
//! any other traffic to that process, and follows the discovery watch to
//! subscribe at publishers that appear and forget ones that leave.
//!
//! # Streams
//!
//! The subscriber writes one `request` envelope carrying the pattern in
//! [`names::SUBSCRIBE`] (and, for a worker-group member, the group name in
//! [`names::GROUP`]) and keeps its side open: finishing or resetting it
//! unsubscribes. The publisher answers with an `ack` envelope once the
//! subscription is in place — `subscribe` returns only after every publisher
//! known at that moment answered (or [`QuicConfig::connect_timeout`]
//! passed), so nothing published after it returns is missed for want of a
//! subscription — then writes every matching event as a length-delimited
//! envelope ([`event_envelope`]: origin in the `plane-publisher` and
//! `plane-seq` headers). Patterns are matched by the publisher, with
//! [`subject::matches`], and checked again by the subscriber.
//!
//! # Overload
//!
//! A publisher never waits for subscribers: it offers each event to each
//! matching subscriber's queue of [`SUBSCRIBER_QUEUE`] envelopes, drained
//! into the stream by one task per subscriber. A full queue (the subscriber
//! or the network is slower than the publisher) drops the event and counts
//! it; the count travels with the next event that gets through, in
//! [`names::DROPPED`], or in a drop notice of its own once the queue has
//! drained with no event after the drops (`plane_peer::events::drop_notice`).
//! On the
//! subscriber's side, a reader task per publisher drains the stream into the
//! subscription's bounded buffer, dropping and counting when it is full.
//! Either way the subscriber reads one `Overloaded` item at the gap.
//!
//! # Worker groups
//!
//! Every event starts at exactly one publisher, and every subscription —
//! group member or not — subscribes at every publisher in discovery, so each
//! publisher knows every member of every group and picks one member per
//! group for each event ([`Groups`]): a group is (group name, pattern), as
//! on the in-memory backend; members take turns (round-robin, in the order
//! they subscribed at this publisher). A member whose queue is full is
//! skipped for the next one, so one stalled member does not lose events its
//! peers could take; only when every member of the group is full is the
//! event dropped, counted at the member whose turn it was (it reads one
//! `Overloaded` item). A member whose stream ended is forgotten. Members
//! leave a publisher's table when their stream ends, which takes one trip
//! over the network: events the publisher handed to a member before it
//! heard of its departure are lost with that member, at most once.

use plane_peer::events::PeerEvents;

use crate::request::QuicLinks;

#[cfg(doc)]
use crate::QuicConfig;
#[cfg(doc)]
use plane_core::{events::groups::Groups, message::names, subject};
#[cfg(doc)]
use plane_peer::events::event_envelope;

pub use plane_peer::events::{EVENTS_ENDPOINT, SUBSCRIBER_QUEUE};

/// The QUIC events plane. Build it with [`QuicEvents::connect`] (or through
/// the registry with a `quic://` URL, sharing the session's endpoint) and
/// wrap it in [`plane_core::Events`].
pub type QuicEvents = PeerEvents<QuicLinks>;
