//! The history of one run: every operation the workload tried, with its
//! outcome, and every fault, in the order the coordinator saw them. It is
//! written as JSON lines (`target/chaos/<fault>-<run>.jsonl`) so a failed run
//! can be read and re-checked (`plane-chaos check FILE`).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use plane_core::ErrorKind;
use serde::{Deserialize, Serialize};

/// What became of one operation, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "is", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: the system promised it happened.
    Ok,
    /// Refused definitely: the system said it did not happen.
    Refused {
        /// The `ErrorKind`, or `Mismatch` for a reply that was not the
        /// request's echo.
        kind: String,
    },
    /// Unknown: the client stopped waiting (timeout, lost connection); the
    /// operation may or may not have taken effect.
    Unknown {
        /// The `ErrorKind`.
        kind: String,
    },
}

impl Outcome {
    /// Classify an error: kinds that mean the request may have reached the
    /// server and taken effect are unknown; the rest are definite refusals
    /// (`NoResponders` from JetStream means no stream stored the message).
    pub fn of_error(kind: ErrorKind) -> Outcome {
        let kind_name = format!("{kind:?}");
        match kind {
            ErrorKind::Timeout
            | ErrorKind::Disconnected
            | ErrorKind::Connection
            | ErrorKind::Closed
            | ErrorKind::Cancelled
            | ErrorKind::Other => Outcome::Unknown { kind: kind_name },
            _ => Outcome::Refused { kind: kind_name },
        }
    }

    /// Outcome of a result.
    pub fn of<T>(result: &plane_core::Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e.kind()),
        }
    }

    /// Acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// One entry of a history. Times are milliseconds since the run started,
/// by the coordinator's clock; `took_ms` is how long the client waited and
/// `bound_ms` how long it was allowed to (its deadline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// A durable publish of event `id` (its body and message id).
    Publish {
        id: u64,
        outcome: Outcome,
        t_ms: u64,
        took_ms: u64,
        bound_ms: u64,
    },
    /// A durable consumer got event `id` (reported before it acked).
    Deliver {
        id: u64,
        stream_seq: u64,
        attempt: u32,
        process: u32,
        t_ms: u64,
    },
    /// Job `id` was enqueued.
    Enqueue {
        id: u64,
        outcome: Outcome,
        t_ms: u64,
        took_ms: u64,
        bound_ms: u64,
    },
    /// A worker finished job `id` (reported before it acked).
    Process {
        id: u64,
        attempt: u32,
        process: u32,
        t_ms: u64,
    },
    /// A compare-and-swap increment of the counter (read, then write if
    /// the revision is unchanged).
    Increment {
        outcome: Outcome,
        t_ms: u64,
        took_ms: u64,
        bound_ms: u64,
        /// The value read, which the write added one to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
        /// The revision read, which the write expected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_revision: Option<u64>,
        /// The revision an acknowledged write made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wrote_revision: Option<u64>,
    },
    /// The counter as read after the run (`None`: it could not be read),
    /// through plane (a kv `get`, which any replica may answer) and from
    /// the stream's leader.
    Counter {
        value: Option<u64>,
        t_ms: u64,
        /// Its revision, as plane read it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<u64>,
        /// The value and revision the stream's leader holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader_value: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader_revision: Option<u64>,
    },
    /// A request-plane call carrying `id`, answered with its echo.
    Call {
        id: u64,
        outcome: Outcome,
        t_ms: u64,
        took_ms: u64,
        bound_ms: u64,
    },
    /// A fault began. `quorum_kept`: a majority of the cluster stayed up
    /// and connected, so clients should fail over and keep working.
    Fault {
        kind: String,
        target: String,
        quorum_kept: bool,
        t_ms: u64,
    },
    /// The fault was undone (the cluster may still be recovering).
    Heal { t_ms: u64 },
    /// The cluster answered again on every node after the heal.
    Healthy { t_ms: u64 },
}

impl Record {
    /// When it started.
    pub fn t_ms(&self) -> u64 {
        *self.clone().time()
    }

    /// The same record, stamped at `t` (for records that come from the
    /// consumer process, whose clock is not the coordinator's).
    pub fn at(mut self, t: u64) -> Record {
        *self.time() = t;
        self
    }

    fn time(&mut self) -> &mut u64 {
        match self {
            Record::Publish { t_ms, .. }
            | Record::Deliver { t_ms, .. }
            | Record::Enqueue { t_ms, .. }
            | Record::Process { t_ms, .. }
            | Record::Increment { t_ms, .. }
            | Record::Counter { t_ms, .. }
            | Record::Call { t_ms, .. }
            | Record::Fault { t_ms, .. }
            | Record::Heal { t_ms }
            | Record::Healthy { t_ms } => t_ms,
        }
    }
}

/// The history being recorded, shared by the workload's tasks.
#[derive(Debug, Clone)]
pub struct History {
    started: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            started: Instant::now(),
            records: Arc::default(),
        }
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Append a record.
    pub fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// A copy of what is recorded so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// The history as JSON lines.
pub fn to_jsonl(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r).expect("a record serialises"));
        out.push('\n');
    }
    out
}

/// Parse JSON lines; a bad line is an error naming it, never skipped.
pub fn from_jsonl(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_json_lines() {
        let records = vec![
            Record::Publish {
                id: 7,
                outcome: Outcome::of_error(ErrorKind::Timeout),
                t_ms: 10,
                took_ms: 2000,
                bound_ms: 4000,
            },
            Record::Deliver {
                id: 7,
                stream_seq: 3,
                attempt: 2,
                process: 1,
                t_ms: 12,
            },
            Record::Counter {
                value: None,
                t_ms: 99,
                revision: None,
                leader_value: Some(4),
                leader_revision: Some(9),
            },
        ];
        let text = to_jsonl(&records);
        assert_eq!(from_jsonl(&text).unwrap(), records);
        let e = from_jsonl("{\"op\":\"publish\"}\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn errors_that_may_have_taken_effect_are_unknown() {
        assert!(matches!(
            Outcome::of_error(ErrorKind::Timeout),
            Outcome::Unknown { .. }
        ));
        assert!(matches!(
            Outcome::of_error(ErrorKind::Connection),
            Outcome::Unknown { .. }
        ));
        assert_eq!(
            Outcome::of_error(ErrorKind::NoResponders),
            Outcome::Refused {
                kind: "NoResponders".into()
            }
        );
        assert_eq!(
            Outcome::of_error(ErrorKind::RevisionMismatch),
            Outcome::Refused {
                kind: "RevisionMismatch".into()
            }
        );
    }
}
