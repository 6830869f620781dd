//! Metric names, emitted through the [`metrics`](https://docs.rs/metrics)
//! facade by the plane handles and the shared server runtime, so every backend
//! reports the same names with the same labels. plane installs no recorder:
//! an application installs the exporter it wants (`plane-observe` offers a
//! small Prometheus one). `docs/metrics.md` is the reference.
//!
//! Labels: `endpoint`, `backend` (`"mem"`, `"nats"`…), `outcome` (`"ok"` or an
//! [`ErrorKind::as_str`](crate::ErrorKind::as_str) name), `kind` (an error
//! kind), `mode` (`"at_most_once"` or `"durable"`), `queue`. Durations are
//! seconds; sizes are payload bytes (body plus headers, as limits count them).

use std::sync::{Arc, Mutex};

/// Counter: call attempts made by a client, by `endpoint`, `backend`, `outcome`
/// (each retry is an attempt).
pub const CLIENT_REQUESTS: &str = "plane_client_requests_total";
/// Counter: failed client call attempts, by `endpoint`, `backend`, `kind`.
pub const CLIENT_ERRORS: &str = "plane_client_errors_total";
/// Counter: retries made by clients, by `endpoint`, `backend`.
pub const CLIENT_RETRIES: &str = "plane_client_retries_total";
/// Counter: client call attempts that timed out, by `endpoint`, `backend`.
pub const CLIENT_TIMEOUTS: &str = "plane_client_timeouts_total";
/// Gauge: client calls in flight, by `endpoint`, `backend`.
pub const CLIENT_IN_FLIGHT: &str = "plane_client_in_flight";
/// Histogram: client call attempt duration in seconds (sent to end of its
/// reply stream), by `endpoint`, `backend`.
pub const CLIENT_DURATION: &str = "plane_client_request_duration_seconds";
/// Counter: request payload bytes sent by clients, by `endpoint`, `backend`.
pub const CLIENT_BYTES_SENT: &str = "plane_client_sent_bytes_total";
/// Counter: reply payload bytes received by clients, by `endpoint`, `backend`.
pub const CLIENT_BYTES_RECEIVED: &str = "plane_client_received_bytes_total";

/// Counter: calls reaching a server instance, by `endpoint`, `backend`,
/// `outcome` (refusals included: `overloaded`, `no_responders` while draining).
pub const SERVER_REQUESTS: &str = "plane_server_requests_total";
/// Counter: calls a server ended with an error, by `endpoint`, `backend`, `kind`.
pub const SERVER_ERRORS: &str = "plane_server_errors_total";
/// Counter: handlers stopped at their deadline, by `endpoint`, `backend`.
pub const SERVER_TIMEOUTS: &str = "plane_server_timeouts_total";
/// Counter: repeated idempotency keys answered from the cache without running
/// the handler, by `endpoint`, `backend`.
pub const SERVER_REPLAYS: &str = "plane_server_idempotent_replays_total";
/// Gauge: calls being handled, by `endpoint`, `backend`.
pub const SERVER_IN_FLIGHT: &str = "plane_server_in_flight";
/// Histogram: handling duration in seconds (admission to end marker), by
/// `endpoint`, `backend`.
pub const SERVER_DURATION: &str = "plane_server_request_duration_seconds";
/// Counter: request payload bytes received by servers, by `endpoint`, `backend`.
pub const SERVER_BYTES_RECEIVED: &str = "plane_server_received_bytes_total";
/// Counter: reply payload bytes sent by servers, by `endpoint`, `backend`.
pub const SERVER_BYTES_SENT: &str = "plane_server_sent_bytes_total";

/// Counter: events published, by `backend`, `mode`, `outcome` (per attempt).
pub const EVENTS_PUBLISHED: &str = "plane_events_published_total";
/// Counter: publish retries, by `backend`, `mode`.
pub const EVENTS_RETRIES: &str = "plane_events_publish_retries_total";
/// Counter: events and durable deliveries received, by `backend`, `mode`.
pub const EVENTS_RECEIVED: &str = "plane_events_received_total";
/// Counter: overflow reports of slow at-most-once subscribers (one per
/// `Overloaded` item, each standing for one or more dropped events), by `backend`.
pub const EVENTS_DROPPED: &str = "plane_events_dropped_total";
/// Counter: durable deliveries received again (attempt > 1), by `backend`.
pub const EVENTS_REDELIVERED: &str = "plane_events_redelivered_total";
/// Counter: dead-lettered events received from a dead-letter subject, by `backend`.
pub const EVENTS_DEAD_LETTERS: &str = "plane_events_dead_letters_total";
/// Counter: event payload bytes published, by `backend`, `mode`.
pub const EVENTS_BYTES_SENT: &str = "plane_events_sent_bytes_total";
/// Counter: event payload bytes received, by `backend`, `mode`.
pub const EVENTS_BYTES_RECEIVED: &str = "plane_events_received_bytes_total";

/// Counter: jobs enqueued, by `backend`, `queue`, `outcome`.
pub const QUEUE_ENQUEUED: &str = "plane_queue_enqueued_total";
/// Counter: jobs received by workers, by `backend`, `queue`.
pub const QUEUE_RECEIVED: &str = "plane_queue_received_total";
/// Counter: jobs acknowledged, by `backend`, `queue`.
pub const QUEUE_ACKED: &str = "plane_queue_acked_total";
/// Counter: jobs handed back (nack), by `backend`, `queue`.
pub const QUEUE_NACKED: &str = "plane_queue_nacked_total";
/// Counter: jobs received again (attempt > 1), by `backend`, `queue`.
pub const QUEUE_REDELIVERED: &str = "plane_queue_redelivered_total";
/// Counter: dead-lettered jobs received from a dead-letter queue, by
/// `backend`, `queue` (the dead-letter queue).
pub const QUEUE_DEAD_LETTERS: &str = "plane_queue_dead_letters_total";
/// Histogram: time a worker spent on a job, receipt to ack or nack, in
/// seconds, by `backend`, `queue`.
pub const QUEUE_JOB_DURATION: &str = "plane_queue_job_duration_seconds";

/// Every name above, for exporters and tests.
pub const ALL: &[&str] = &[
    CLIENT_REQUESTS,
    CLIENT_ERRORS,
    CLIENT_RETRIES,
    CLIENT_TIMEOUTS,
    CLIENT_IN_FLIGHT,
    CLIENT_DURATION,
    CLIENT_BYTES_SENT,
    CLIENT_BYTES_RECEIVED,
    SERVER_REQUESTS,
    SERVER_ERRORS,
    SERVER_TIMEOUTS,
    SERVER_REPLAYS,
    SERVER_IN_FLIGHT,
    SERVER_DURATION,
    SERVER_BYTES_RECEIVED,
    SERVER_BYTES_SENT,
    EVENTS_PUBLISHED,
    EVENTS_RETRIES,
    EVENTS_RECEIVED,
    EVENTS_DROPPED,
    EVENTS_REDELIVERED,
    EVENTS_DEAD_LETTERS,
    EVENTS_BYTES_SENT,
    EVENTS_BYTES_RECEIVED,
    QUEUE_ENQUEUED,
    QUEUE_RECEIVED,
    QUEUE_ACKED,
    QUEUE_NACKED,
    QUEUE_REDELIVERED,
    QUEUE_DEAD_LETTERS,
    QUEUE_JOB_DURATION,
];

/// Register descriptions and units for every name with the installed
/// recorder, so exporters print `HELP` lines. Optional; call once after
/// installing a recorder.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CLIENT_REQUESTS, "call attempts made by clients");
    describe_counter!(CLIENT_ERRORS, "failed client call attempts by error kind");
    describe_counter!(CLIENT_RETRIES, "retries made by clients");
    describe_counter!(CLIENT_TIMEOUTS, "client call attempts that timed out");
    describe_gauge!(CLIENT_IN_FLIGHT, "client calls in flight");
    describe_histogram!(
        CLIENT_DURATION,
        Unit::Seconds,
        "client call attempt duration"
    );
    describe_counter!(CLIENT_BYTES_SENT, Unit::Bytes, "request payload bytes sent");
    describe_counter!(
        CLIENT_BYTES_RECEIVED,
        Unit::Bytes,
        "reply payload bytes received"
    );
    describe_counter!(SERVER_REQUESTS, "calls reaching a server instance");
    describe_counter!(SERVER_ERRORS, "calls a server ended with an error");
    describe_counter!(SERVER_TIMEOUTS, "handlers stopped at their deadline");
    describe_counter!(
        SERVER_REPLAYS,
        "repeated idempotency keys answered from the cache"
    );
    describe_gauge!(SERVER_IN_FLIGHT, "calls being handled");
    describe_histogram!(SERVER_DURATION, Unit::Seconds, "handling duration");
    describe_counter!(
        SERVER_BYTES_RECEIVED,
        Unit::Bytes,
        "request payload bytes received by servers"
    );
    describe_counter!(
        SERVER_BYTES_SENT,
        Unit::Bytes,
        "reply payload bytes sent by servers"
    );
    describe_counter!(EVENTS_PUBLISHED, "events published");
    describe_counter!(EVENTS_RETRIES, "event publish retries");
    describe_counter!(EVENTS_RECEIVED, "events and deliveries received");
    describe_counter!(EVENTS_DROPPED, "overflow reports of slow subscribers");
    describe_counter!(EVENTS_REDELIVERED, "durable deliveries received again");
    describe_counter!(EVENTS_DEAD_LETTERS, "dead-lettered events received");
    describe_counter!(
        EVENTS_BYTES_SENT,
        Unit::Bytes,
        "event payload bytes published"
    );
    describe_counter!(
        EVENTS_BYTES_RECEIVED,
        Unit::Bytes,
        "event payload bytes received"
    );
    describe_counter!(QUEUE_ENQUEUED, "jobs enqueued");
    describe_counter!(QUEUE_RECEIVED, "jobs received by workers");
    describe_counter!(QUEUE_ACKED, "jobs acknowledged");
    describe_counter!(QUEUE_NACKED, "jobs handed back");
    describe_counter!(QUEUE_REDELIVERED, "jobs received again");
    describe_counter!(QUEUE_DEAD_LETTERS, "dead-lettered jobs received");
    describe_histogram!(
        QUEUE_JOB_DURATION,
        Unit::Seconds,
        "time from receiving a job to settling it"
    );
}

/// The `outcome` label of a result.
pub(crate) fn outcome<T>(r: &crate::Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.kind().as_str(),
    }
}

/// A label set shared by one handle, endpoint or queue: cheap to clone and
/// to extend with a per-event label.
///
/// It also keeps the handles it registered with the recorder, so the hot
/// paths (a few metrics per call or event) increment an atomic instead of
/// cloning labels, hashing a key and asking the recorder every time. The
/// cache remembers which recorder it registered with and starts over when
/// another one is in charge — a global recorder installed after the handle
/// was built, or a thread-local one in a test — so nothing is ever counted
/// into a recorder that no longer listens.
#[derive(Clone, Default)]
pub(crate) struct Labels(Arc<Inner>);

#[derive(Default)]
struct Inner {
    labels: Vec<::metrics::Label>,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Labels").field(&self.0.labels).finish()
    }
}

/// The handles registered so far, by kind.
#[derive(Default)]
struct Cache {
    /// The recorder the handles belong to (its address).
    recorder: usize,
    counters: Vec<(Slot, ::metrics::Counter)>,
    gauges: Vec<(Slot, ::metrics::Gauge)>,
    histograms: Vec<(Slot, ::metrics::Histogram)>,
}

/// A metric name plus the per-emission label, if any.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Slot {
    name: &'static str,
    extra: Option<(&'static str, &'static str)>,
}

fn current_recorder() -> usize {
    ::metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

/// Handles kept per kind and label set (a few metrics, times the few values
/// of an outcome or error-kind label); beyond this, handles are registered
/// per emission instead of cached.
const MAX_CACHED: usize = 32;

impl Labels {
    pub(crate) fn new() -> Self {
        Labels::default()
    }

    /// Add a label; `value` is typically a `&'static str` or an `Arc<str>`.
    pub(crate) fn with(self, key: &'static str, value: impl Into<::metrics::SharedString>) -> Self {
        let mut labels = self.0.labels.clone();
        labels.push(::metrics::Label::new(key, value));
        // A different label set, so a cache of its own.
        Labels(Arc::new(Inner {
            labels,
            cache: Mutex::default(),
        }))
    }

    /// The labels plus one more, for a single emission.
    pub(crate) fn and(&self, key: &'static str, value: &'static str) -> Vec<::metrics::Label> {
        let mut v = Vec::with_capacity(self.0.labels.len() + 1);
        v.extend_from_slice(&self.0.labels);
        v.push(::metrics::Label::new(key, value));
        v
    }

    pub(crate) fn get(&self) -> Vec<::metrics::Label> {
        self.0.labels.clone()
    }

    /// The handle of `slot` from the cache of its kind (`pick`), registered
    /// with `register` the first time.
    fn cached<H: Clone>(
        &self,
        slot: Slot,
        pick: impl FnOnce(&mut Cache) -> &mut Vec<(Slot, H)>,
        register: impl FnOnce(Vec<::metrics::Label>) -> H,
    ) -> H {
        let recorder = current_recorder();
        let mut cache = self.0.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.recorder != recorder {
            *cache = Cache {
                recorder,
                ..Cache::default()
            };
        }
        let handles = pick(&mut cache);
        if let Some((_, h)) = handles.iter().find(|(s, _)| *s == slot) {
            return h.clone();
        }
        let labels = match slot.extra {
            Some((k, v)) => self.and(k, v),
            None => self.get(),
        };
        let h = register(labels);
        if handles.len() < MAX_CACHED {
            handles.push((slot, h.clone()));
        }
        h
    }

    /// The counter `name` with these labels.
    pub(crate) fn counter(&self, name: &'static str) -> ::metrics::Counter {
        self.counter_slot(Slot { name, extra: None })
    }

    /// The counter `name` with these labels plus `key = value`.
    pub(crate) fn counter_with(
        &self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) -> ::metrics::Counter {
        self.counter_slot(Slot {
            name,
            extra: Some((key, value)),
        })
    }

    fn counter_slot(&self, slot: Slot) -> ::metrics::Counter {
        self.cached(
            slot,
            |c| &mut c.counters,
            |l| ::metrics::counter!(slot.name, l),
        )
    }

    /// The gauge `name` with these labels.
    pub(crate) fn gauge(&self, name: &'static str) -> ::metrics::Gauge {
        self.cached(
            Slot { name, extra: None },
            |c| &mut c.gauges,
            |l| ::metrics::gauge!(name, l),
        )
    }

    /// The histogram `name` with these labels.
    pub(crate) fn histogram(&self, name: &'static str) -> ::metrics::Histogram {
        self.cached(
            Slot { name, extra: None },
            |c| &mut c.histograms,
            |l| ::metrics::histogram!(name, l),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use ::metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    /// Counts every increment of every counter it hands out, in one total.
    #[derive(Default)]
    struct Total(Arc<AtomicU64>);

    impl Recorder for Total {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.0.clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn cached_handles_follow_the_recorder_in_charge() {
        let labels = super::Labels::new().with("backend", "test");
        // Registered while no recorder listens: a no-op handle, cached.
        labels.counter(super::CLIENT_REQUESTS).increment(1);
        let (a, b) = (Total::default(), Total::default());
        ::metrics::with_local_recorder(&a, || {
            labels.counter(super::CLIENT_REQUESTS).increment(2);
            labels
                .counter_with(super::CLIENT_ERRORS, "kind", "timeout")
                .increment(3);
        });
        ::metrics::with_local_recorder(&b, || {
            labels.counter(super::CLIENT_REQUESTS).increment(4);
        });
        assert_eq!(a.0.load(Ordering::Relaxed), 5);
        assert_eq!(b.0.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn every_name_is_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        for name in super::ALL {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
}
