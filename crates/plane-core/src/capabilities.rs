//! What a backend declares it can do.
//!
//! Each plane has its own capability struct. The plane handles check them
//! before calling the backend, so an operation a backend did not declare fails
//! with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) on every
//! backend alike, and the conformance suite selects its cases from them.
//!
//! The structs are `#[non_exhaustive]`: a backend starts from `Default` (which
//! declares only the plane's mandatory core) and sets the fields it supports,
//! so adding a capability later breaks no backend.

use serde::{Deserialize, Serialize};

/// Request plane capabilities.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCapabilities {
    /// Server-streamed replies (`Requests::stream`).
    pub streaming: bool,
    /// Caller cancellation reaches the handler (graceful stop and hard kill).
    pub cancellation: bool,
    /// Round-robin load balancing across instances.
    pub round_robin: bool,
    /// Uniform random load balancing.
    pub random: bool,
    /// Power-of-two-choices load balancing on in-flight counts.
    pub power_of_two: bool,
    /// Addressing one instance directly.
    pub direct: bool,
    /// One call answered by every live instance (`Requests::broadcast`).
    pub broadcast: bool,
    /// Largest request or reply payload (body plus header bytes).
    pub max_payload: usize,
}

impl Default for RequestCapabilities {
    fn default() -> Self {
        RequestCapabilities {
            streaming: false,
            cancellation: false,
            round_robin: false,
            random: false,
            power_of_two: false,
            direct: false,
            broadcast: false,
            max_payload: 1024 * 1024,
        }
    }
}

impl RequestCapabilities {
    /// Everything the request plane defines: streaming, cancellation and
    /// every route, up to `max_payload`. What a backend that runs plane's
    /// own server runtime end to end (mem, the brokerless planes) offers.
    pub fn complete(max_payload: usize) -> Self {
        RequestCapabilities {
            streaming: true,
            cancellation: true,
            round_robin: true,
            random: true,
            power_of_two: true,
            direct: true,
            broadcast: true,
            max_payload,
        }
    }
}

/// Events plane capabilities.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsCapabilities {
    /// `*` and `>` in subscription patterns.
    pub wildcards: bool,
    /// Worker groups: each event to one member of a group.
    pub groups: bool,
    /// Per-publisher ordering is kept end to end.
    pub ordered_per_publisher: bool,
    /// Durable at-least-once streams and consumers.
    pub durable: bool,
    /// Negative acknowledgement with a redelivery delay.
    pub nack_delay: bool,
    /// Dead-lettering after the maximum number of deliveries.
    pub dead_letter: bool,
    /// Publish deduplication by message id.
    pub dedup: bool,
    /// A new durable consumer can replay history.
    pub replay: bool,
    /// Largest event payload (body plus header bytes).
    pub max_payload: usize,
}

impl Default for EventsCapabilities {
    fn default() -> Self {
        EventsCapabilities {
            wildcards: false,
            groups: false,
            ordered_per_publisher: false,
            durable: false,
            nack_delay: false,
            dead_letter: false,
            dedup: false,
            replay: false,
            max_payload: 1024 * 1024,
        }
    }
}

/// Key-value plane capabilities.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCapabilities {
    /// More than one revision per key is kept and `history` returns them.
    pub history: bool,
    /// `watch` with snapshot, caught-up marker and live changes.
    pub watch: bool,
    /// Watching from a given revision.
    pub watch_from_revision: bool,
    /// Bucket-wide time to live.
    pub bucket_ttl: bool,
    /// Per-key time to live on put.
    pub key_ttl: bool,
    /// Expiry is reported to watchers as an [`Op::Expire`](crate::kv::Op::Expire) entry.
    pub expiry_events: bool,
    /// Largest value in bytes.
    pub max_value: usize,
}

/// Objects plane capabilities.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsCapabilities {
    /// User metadata (content type and string pairs) is stored with the object.
    pub metadata: bool,
    /// Listing by prefix.
    pub list: bool,
    /// Largest object in bytes (`u64::MAX` for unbounded).
    pub max_object_size: u64,
}

impl Default for ObjectsCapabilities {
    fn default() -> Self {
        ObjectsCapabilities {
            metadata: false,
            list: false,
            max_object_size: u64::MAX,
        }
    }
}

/// Work-queue plane capabilities.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCapabilities {
    /// Broadcast mode: every named consumer gets every job.
    pub broadcast: bool,
    /// Negative acknowledgement with a redelivery delay.
    pub nack_delay: bool,
    /// Extending a job's ack deadline while it is processed.
    pub extend: bool,
    /// Dead-lettering after the maximum number of deliveries.
    pub dead_letter: bool,
    /// Purge of all pending jobs.
    pub purge: bool,
    /// Queue depth.
    pub depth: bool,
    /// Largest job payload (body plus header bytes).
    pub max_payload: usize,
}

impl Default for QueueCapabilities {
    fn default() -> Self {
        QueueCapabilities {
            broadcast: false,
            nack_delay: false,
            extend: false,
            dead_letter: false,
            purge: false,
            depth: false,
            max_payload: 1024 * 1024,
        }
    }
}
