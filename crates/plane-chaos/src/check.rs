//! The checker: reads one run's history and says what held. Every rule that
//! fails is a [`Violation`] carrying the records that prove it.
//!
//! The rules (docs/reliability.md explains each):
//! - every acknowledged publish is delivered at least once; every delivery
//!   is of an event that was published and not definitely refused; no event
//!   is stored twice (two stream sequences for one id: the workload never
//!   retries a publish, so only the system could have duplicated it);
//! - every acknowledged job is processed at least once, and nothing is
//!   processed that was not enqueued or was definitely refused;
//! - the final counter is at least the acknowledged increments and at most
//!   those plus the increments whose outcome is unknown;
//! - no operation outlives its deadline by more than [`SLACK_MS`];
//! - a call's reply is its request's echo;
//! - while a fault keeps a quorum, durable publishes and calls still succeed
//!   (clients fail over to a live node); after the cluster is healthy again,
//!   every kind of operation succeeds again.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Outcome, Record};

/// How far past its deadline an operation may finish before it counts as a
/// hang: scheduling on a loaded two-core machine, not a protocol allowance.
pub const SLACK_MS: u64 = 1500;

/// One broken rule and the records that show it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The rule, in a few words.
    pub rule: &'static str,
    /// The records that prove it.
    pub evidence: Vec<Record>,
}

/// Counts of one kind of operation by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Tried.
    pub tried: u64,
    /// Acknowledged.
    pub ok: u64,
    /// Outcome unknown.
    pub unknown: u64,
    /// Refused.
    pub refused: u64,
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        self.tried += 1;
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Unknown { .. } => self.unknown += 1,
            Outcome::Refused { .. } => self.refused += 1,
        }
    }
}

/// What the checker found in one history.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Durable publishes.
    pub publishes: Tally,
    /// Acknowledged publishes never delivered.
    pub lost: u64,
    /// Deliveries beyond the first of an event (redeliveries).
    pub duplicated: u64,
    /// Enqueues.
    pub jobs: Tally,
    /// Acknowledged jobs never processed.
    pub jobs_lost: u64,
    /// Processings beyond the first of a job.
    pub jobs_duplicated: u64,
    /// Deliveries and processings on a second or later attempt: messages
    /// whose first consumer died or whose ack was lost (a consumer kill
    /// that landed mid-message shows here).
    pub retried: u64,
    /// Increments of the counter.
    pub increments: Tally,
    /// The final counter, if it was read.
    pub counter: Option<u64>,
    /// Request-plane calls.
    pub calls: Tally,
    /// The longest time from a fault's start (or the previous acknowledged
    /// publish after it) to the next acknowledged publish: how long durable
    /// publishing stood still.
    pub longest_recovery_ms: Option<u64>,
    /// Broken rules.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// No rule broken.
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Check one run's history.
pub fn check(history: &[Record]) -> Verdict {
    let mut v = Verdict::default();
    let mut violations = Vec::new();
    let mut violate = |rule: &'static str, evidence: Vec<Record>| {
        violations.push(Violation { rule, evidence });
    };

    let mut published: BTreeMap<u64, &Record> = BTreeMap::new();
    let mut delivered: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    let mut enqueued: BTreeMap<u64, &Record> = BTreeMap::new();
    let mut processed: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    let (mut publishes, mut jobs, mut increments, mut calls) = (
        Tally::default(),
        Tally::default(),
        Tally::default(),
        Tally::default(),
    );
    let mut counter: Option<&Record> = None;
    let mut faults: Vec<(&Record, Option<u64>, Option<u64>)> = Vec::new();

    for r in history {
        match r {
            Record::Publish { id, outcome, .. } => {
                publishes.add(outcome);
                published.insert(*id, r);
            }
            Record::Deliver { id, attempt, .. } => {
                v.retried += u64::from(*attempt > 1);
                delivered.entry(*id).or_default().push(r)
            }
            Record::Enqueue { id, outcome, .. } => {
                jobs.add(outcome);
                enqueued.insert(*id, r);
            }
            Record::Process { id, attempt, .. } => {
                v.retried += u64::from(*attempt > 1);
                processed.entry(*id).or_default().push(r)
            }
            Record::Increment { outcome, .. } => increments.add(outcome),
            Record::Call { outcome, .. } => {
                calls.add(outcome);
                if matches!(outcome, Outcome::Refused { kind } if kind == "Mismatch") {
                    violate(
                        "a call was answered with another call's reply",
                        vec![r.clone()],
                    );
                }
            }
            Record::Counter { .. } => counter = Some(r),
            Record::Fault { .. } => faults.push((r, None, None)),
            Record::Heal { t_ms } => {
                if let Some(f) = faults.last_mut() {
                    f.1.get_or_insert(*t_ms);
                }
            }
            Record::Healthy { t_ms } => {
                if let Some(f) = faults.last_mut() {
                    f.2.get_or_insert(*t_ms);
                }
            }
        }
        // No operation may outlive its deadline.
        if let Record::Publish {
            took_ms, bound_ms, ..
        }
        | Record::Enqueue {
            took_ms, bound_ms, ..
        }
        | Record::Increment {
            took_ms, bound_ms, ..
        }
        | Record::Call {
            took_ms, bound_ms, ..
        } = r
        {
            if *took_ms > bound_ms + SLACK_MS {
                violate("an operation outlived its deadline", vec![r.clone()]);
            }
        }
    }

    // Durable events.
    for (id, p) in &published {
        let Record::Publish { outcome, .. } = p else {
            continue;
        };
        let got = delivered.get(id);
        if outcome.is_ok() && got.is_none() {
            violate(
                "an acknowledged publish was never delivered",
                vec![(*p).clone()],
            );
        }
        if let (Outcome::Refused { .. }, Some(got)) = (outcome, got) {
            let mut evidence = vec![(*p).clone()];
            evidence.push(got[0].clone());
            violate("a publish refused as not stored was delivered", evidence);
        }
    }
    v.lost = published
        .iter()
        .filter(|(id, p)| {
            matches!(
                p,
                Record::Publish {
                    outcome: Outcome::Ok,
                    ..
                }
            ) && !delivered.contains_key(id)
        })
        .count() as u64;
    for (id, got) in &delivered {
        v.duplicated += got.len() as u64 - 1;
        if !published.contains_key(id) {
            violate(
                "an event was delivered that was never published",
                vec![got[0].clone()],
            );
        }
        let seqs: BTreeSet<u64> = got
            .iter()
            .filter_map(|d| match d {
                Record::Deliver { stream_seq, .. } => Some(*stream_seq),
                _ => None,
            })
            .collect();
        if seqs.len() > 1 {
            violate(
                "an event published once was stored twice",
                got.iter().map(|d| (*d).clone()).collect(),
            );
        }
    }

    // Work queue.
    for (id, e) in &enqueued {
        let Record::Enqueue { outcome, .. } = e else {
            continue;
        };
        let done = processed.get(id);
        if outcome.is_ok() && done.is_none() {
            v.jobs_lost += 1;
            violate(
                "an acknowledged job was never processed",
                vec![(*e).clone()],
            );
        }
        if let (Outcome::Refused { .. }, Some(done)) = (outcome, done) {
            violate(
                "a job refused as not enqueued was processed",
                vec![(*e).clone(), done[0].clone()],
            );
        }
    }
    for (id, done) in &processed {
        v.jobs_duplicated += done.len() as u64 - 1;
        if !enqueued.contains_key(id) {
            violate(
                "a job was processed that was never enqueued",
                vec![done[0].clone()],
            );
        }
    }

    // The counter.
    if increments.tried > 0 {
        match counter {
            Some(Record::Counter {
                value: Some(value), ..
            }) => {
                v.counter = Some(*value);
                if *value < increments.ok {
                    violate(
                        "the counter lost acknowledged increments",
                        vec![counter.cloned().expect("matched")],
                    );
                }
                if *value > increments.ok + increments.unknown {
                    violate(
                        "the counter holds increments that were refused",
                        vec![counter.cloned().expect("matched")],
                    );
                }
            }
            Some(r) => violate("the final counter could not be read", vec![r.clone()]),
            None => violate("the final counter was never read", Vec::new()),
        }
    }

    // Failover and recovery, per fault.
    let acked_at = |kind: fn(&Record) -> bool| -> Vec<u64> {
        let mut at: Vec<u64> = history
            .iter()
            .filter(|r| kind(r))
            .filter_map(|r| match r {
                Record::Publish {
                    outcome: Outcome::Ok,
                    t_ms,
                    took_ms,
                    ..
                }
                | Record::Call {
                    outcome: Outcome::Ok,
                    t_ms,
                    took_ms,
                    ..
                }
                | Record::Enqueue {
                    outcome: Outcome::Ok,
                    t_ms,
                    took_ms,
                    ..
                }
                | Record::Increment {
                    outcome: Outcome::Ok,
                    t_ms,
                    took_ms,
                    ..
                } => Some(t_ms + took_ms),
                _ => None,
            })
            .collect();
        at.sort_unstable();
        at
    };
    let publish_acks = acked_at(|r| matches!(r, Record::Publish { .. }));
    let call_acks = acked_at(|r| matches!(r, Record::Call { .. }));
    let job_acks = acked_at(|r| matches!(r, Record::Enqueue { .. }));
    let increment_acks = acked_at(|r| matches!(r, Record::Increment { .. }));
    let last_op = history
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Publish { .. }
                    | Record::Call { .. }
                    | Record::Enqueue { .. }
                    | Record::Increment { .. }
            )
        })
        .map(Record::t_ms)
        .max()
        .unwrap_or(0);
    for (fault, heal, healthy) in &faults {
        let Record::Fault {
            t_ms: start,
            quorum_kept,
            ..
        } = fault
        else {
            continue;
        };
        let heal = heal.unwrap_or(u64::MAX);
        // How long publishing stood still: from the fault to the first ack
        // after it, then between acks, until publishing stopped.
        let mut previous = *start;
        let mut longest = 0;
        for &at in publish_acks.iter().filter(|&&at| at > *start) {
            longest = longest.max(at - previous);
            previous = at;
        }
        if previous == *start {
            longest = last_op.saturating_sub(*start);
        }
        v.longest_recovery_ms = Some(v.longest_recovery_ms.unwrap_or(0).max(longest));
        if *quorum_kept {
            for (what, acks) in [
                (
                    "no durable publish succeeded while a quorum was up",
                    &publish_acks,
                ),
                ("no call succeeded while a quorum was up", &call_acks),
            ] {
                if !acks.iter().any(|&at| at > *start && at <= heal) {
                    violate(what, vec![(*fault).clone()]);
                }
            }
        }
        if let Some(healthy) = healthy {
            for (what, acks, tried) in [
                (
                    "no durable publish succeeded after the cluster recovered",
                    &publish_acks,
                    publishes.tried,
                ),
                (
                    "no call succeeded after the cluster recovered",
                    &call_acks,
                    calls.tried,
                ),
                (
                    "no enqueue succeeded after the cluster recovered",
                    &job_acks,
                    jobs.tried,
                ),
                (
                    "no increment succeeded after the cluster recovered",
                    &increment_acks,
                    increments.tried,
                ),
            ] {
                if tried > 0 && !acks.iter().any(|&at| at > *healthy) {
                    violate(
                        what,
                        vec![(*fault).clone(), Record::Healthy { t_ms: *healthy }],
                    );
                }
            }
        }
    }

    violations.extend(compare_and_swap(history));
    v.violations = violations;
    v.publishes = publishes;
    v.jobs = jobs;
    v.increments = increments;
    v.calls = calls;
    v
}

/// The compare-and-swap rules, from the values and revisions the
/// increments read and wrote (histories before these were recorded have
/// none, and pass):
/// - no two acknowledged increments read the same revision (a lost update);
/// - every revision the counter was seen at was written by an increment
///   that was acknowledged or whose outcome is unknown, never by one only
///   refused ones could have made: a write that read value `V` at revision
///   `R` makes `V + 1` at `R + 1`, so a revision seen holding `V + 1` whose
///   only possible writers (the increments that read `V` at `R`) were all
///   refused shows a refusal that took effect.
fn compare_and_swap(history: &[Record]) -> Vec<Violation> {
    let mut violations = Vec::new();
    // (value, revision) read, per increment record.
    let mut readers: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    let mut acked_from: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    let mut written: BTreeMap<u64, &Record> = BTreeMap::new();
    // Revision -> value, as seen by any read (the final ones included).
    let mut seen: BTreeMap<u64, (u64, &Record)> = BTreeMap::new();
    for r in history {
        match r {
            Record::Increment {
                outcome,
                read: Some(value),
                read_revision: Some(revision),
                wrote_revision,
                ..
            } => {
                readers.entry(*revision).or_default().push(r);
                seen.entry(*revision).or_insert((*value, r));
                if outcome.is_ok() {
                    acked_from.entry(*revision).or_default().push(r);
                }
                if let Some(w) = wrote_revision {
                    written.insert(*w, r);
                }
            }
            Record::Counter {
                value,
                revision,
                leader_value,
                leader_revision,
                ..
            } => {
                for (value, revision) in [(value, revision), (leader_value, leader_revision)] {
                    if let (Some(value), Some(revision)) = (value, revision) {
                        seen.entry(*revision).or_insert((*value, r));
                    }
                }
            }
            _ => {}
        }
    }
    for records in acked_from.values().filter(|r| r.len() > 1) {
        violations.push(Violation {
            rule: "two increments were acknowledged from one read (a lost update)",
            evidence: records.iter().map(|r| (*r).clone()).collect(),
        });
    }
    for (&revision, &(value, seen_by)) in &seen {
        // The counter's first revision is its initial put.
        if revision <= 1 || written.contains_key(&revision) {
            continue;
        }
        let writers: Vec<&Record> = readers
            .get(&(revision - 1))
            .into_iter()
            .flatten()
            .copied()
            .filter(|r| matches!(r, Record::Increment { read: Some(v), .. } if v + 1 == value))
            .collect();
        let refused_only = !writers.is_empty()
            && writers.iter().all(|r| {
                matches!(
                    r,
                    Record::Increment {
                        outcome: Outcome::Refused { .. },
                        ..
                    }
                )
            });
        if refused_only {
            let mut evidence: Vec<Record> = writers.iter().map(|r| (*r).clone()).collect();
            evidence.push(seen_by.clone());
            violations.push(Violation {
                rule: "a refused increment took effect",
                evidence,
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_core::ErrorKind;

    fn publish(id: u64, outcome: Outcome, t_ms: u64) -> Record {
        Record::Publish {
            id,
            outcome,
            t_ms,
            took_ms: 5,
            bound_ms: 4000,
        }
    }

    fn deliver(id: u64, stream_seq: u64, attempt: u32) -> Record {
        Record::Deliver {
            id,
            stream_seq,
            attempt,
            process: 0,
            t_ms: 0,
        }
    }

    /// A clean history: ten events published and delivered, one
    /// redelivered, jobs processed, a counter that adds up, calls answered.
    fn clean() -> Vec<Record> {
        let mut h = Vec::new();
        for id in 0..10 {
            h.push(publish(id, Outcome::Ok, id * 10));
            h.push(deliver(id, id + 1, 1));
            h.push(Record::Enqueue {
                id,
                outcome: Outcome::Ok,
                t_ms: id * 10,
                took_ms: 3,
                bound_ms: 4000,
            });
            h.push(Record::Process {
                id,
                attempt: 1,
                process: 0,
                t_ms: id * 10 + 5,
            });
            h.push(Record::Increment {
                outcome: if id % 3 == 0 {
                    Outcome::of_error(ErrorKind::RevisionMismatch)
                } else {
                    Outcome::Ok
                },
                t_ms: id * 10,
                took_ms: 2,
                bound_ms: 4000,
                read: None,
                read_revision: None,
                wrote_revision: None,
            });
            h.push(Record::Call {
                id,
                outcome: Outcome::Ok,
                t_ms: id * 10,
                took_ms: 1,
                bound_ms: 2000,
            });
        }
        h.push(deliver(4, 5, 2));
        h.push(Record::Counter {
            value: Some(6),
            t_ms: 200,
            revision: None,
            leader_value: None,
            leader_revision: None,
        });
        h
    }

    fn rules(v: &Verdict) -> Vec<&'static str> {
        v.violations.iter().map(|x| x.rule).collect()
    }

    #[test]
    fn a_clean_history_holds_and_counts_redeliveries() {
        let v = check(&clean());
        assert!(v.holds(), "{:?}", v.violations);
        assert_eq!(v.publishes.ok, 10);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.retried, 1);
        assert_eq!(v.lost, 0);
        assert_eq!(v.increments.ok, 6);
        assert_eq!(v.counter, Some(6));
    }

    #[test]
    fn a_consumer_that_drops_one_acknowledged_event_is_caught() {
        let h: Vec<Record> = clean()
            .into_iter()
            .filter(|r| !matches!(r, Record::Deliver { id: 7, .. }))
            .collect();
        let v = check(&h);
        assert_eq!(rules(&v), ["an acknowledged publish was never delivered"]);
        assert_eq!(v.lost, 1);
        // The evidence is the publish that was lost.
        assert!(matches!(
            v.violations[0].evidence[..],
            [Record::Publish { id: 7, .. }]
        ));
    }

    #[test]
    fn an_unknown_publish_may_be_missing_but_a_refused_one_must_be() {
        let mut h = clean();
        h.push(publish(20, Outcome::of_error(ErrorKind::Timeout), 100));
        h.push(publish(21, Outcome::of_error(ErrorKind::Timeout), 100));
        h.push(deliver(21, 30, 1));
        assert!(check(&h).holds());
        h.push(publish(22, Outcome::of_error(ErrorKind::NoResponders), 100));
        h.push(deliver(22, 31, 1));
        assert_eq!(
            rules(&check(&h)),
            ["a publish refused as not stored was delivered"]
        );
    }

    #[test]
    fn phantom_and_doubly_stored_events_are_caught() {
        let mut h = clean();
        h.push(deliver(99, 40, 1));
        h.push(deliver(3, 41, 1));
        let mut found = rules(&check(&h));
        found.sort_unstable();
        assert_eq!(
            found,
            [
                "an event published once was stored twice",
                "an event was delivered that was never published"
            ]
        );
    }

    #[test]
    fn lost_jobs_and_a_counter_that_does_not_add_up_are_caught() {
        let mut h: Vec<Record> = clean()
            .into_iter()
            .filter(|r| !matches!(r, Record::Process { id: 2, .. }))
            .collect();
        h.retain(|r| !matches!(r, Record::Counter { .. }));
        h.push(Record::Counter {
            value: Some(5),
            t_ms: 300,
            revision: None,
            leader_value: None,
            leader_revision: None,
        });
        let v = check(&h);
        assert_eq!(
            rules(&v),
            [
                "an acknowledged job was never processed",
                "the counter lost acknowledged increments"
            ]
        );
        assert_eq!(v.jobs_lost, 1);
        // An unknown increment allows one more, never two.
        h.retain(|r| !matches!(r, Record::Counter { .. }));
        h.push(Record::Increment {
            outcome: Outcome::of_error(ErrorKind::Timeout),
            t_ms: 150,
            took_ms: 2000,
            bound_ms: 4000,
            read: None,
            read_revision: None,
            wrote_revision: None,
        });
        h.push(Record::Counter {
            value: Some(8),
            t_ms: 300,
            revision: None,
            leader_value: None,
            leader_revision: None,
        });
        assert!(rules(&check(&h)).contains(&"the counter holds increments that were refused"));
    }

    #[test]
    fn a_hang_and_a_crossed_reply_are_caught() {
        let mut h = clean();
        h.push(Record::Call {
            id: 50,
            outcome: Outcome::of_error(ErrorKind::Timeout),
            t_ms: 100,
            took_ms: 2000 + SLACK_MS + 1,
            bound_ms: 2000,
        });
        h.push(Record::Call {
            id: 51,
            outcome: Outcome::Refused {
                kind: "Mismatch".into(),
            },
            t_ms: 100,
            took_ms: 1,
            bound_ms: 2000,
        });
        assert_eq!(
            rules(&check(&h)),
            [
                "an operation outlived its deadline",
                "a call was answered with another call's reply"
            ]
        );
    }

    #[test]
    fn no_failover_during_a_quorum_fault_is_caught_and_recovery_measured() {
        let mut h = clean();
        h.push(Record::Fault {
            kind: "kill".into(),
            target: "n1".into(),
            quorum_kept: true,
            t_ms: 100,
        });
        // Nothing succeeds until the heal at 5000.
        h.push(publish(30, Outcome::of_error(ErrorKind::NoResponders), 200));
        h.push(Record::Heal { t_ms: 5000 });
        h.push(Record::Healthy { t_ms: 5100 });
        h.push(publish(31, Outcome::Ok, 6000));
        h.push(deliver(31, 50, 1));
        let v = check(&h);
        assert_eq!(
            rules(&v),
            [
                "no durable publish succeeded while a quorum was up",
                "no call succeeded while a quorum was up",
                "no call succeeded after the cluster recovered",
                "no enqueue succeeded after the cluster recovered",
                "no increment succeeded after the cluster recovered"
            ]
        );
        assert_eq!(v.longest_recovery_ms, Some(6005 - 100));
    }

    fn increment(outcome: Outcome, read: u64, wrote: Option<u64>) -> Record {
        Record::Increment {
            outcome,
            t_ms: read * 10,
            took_ms: 2,
            bound_ms: 4000,
            read: Some(read),
            // The counter's revision is its value plus one (the initial put
            // is revision 1).
            read_revision: Some(read + 1),
            wrote_revision: wrote,
        }
    }

    #[test]
    fn a_lost_update_and_a_refusal_that_took_effect_are_caught() {
        let mismatch = || Outcome::of_error(ErrorKind::RevisionMismatch);
        // 0 -> 1 acknowledged; a refused write from 1 made 2 all the same,
        // and the next read saw it.
        let h = vec![
            increment(Outcome::Ok, 0, Some(2)),
            increment(mismatch(), 1, None),
            increment(Outcome::Ok, 2, Some(4)),
        ];
        let v = check(&h);
        assert!(
            rules(&v).contains(&"a refused increment took effect"),
            "{:?}",
            rules(&v)
        );
        // The same with the writer's outcome unknown is allowed.
        let h = vec![
            increment(Outcome::Ok, 0, Some(2)),
            increment(Outcome::of_error(ErrorKind::Timeout), 1, None),
            increment(Outcome::Ok, 2, Some(4)),
        ];
        assert!(!rules(&check(&h)).contains(&"a refused increment took effect"));
        // Two acknowledged from one read: one of them was lost.
        let h = vec![
            increment(Outcome::Ok, 0, Some(2)),
            increment(Outcome::Ok, 0, Some(3)),
        ];
        assert!(rules(&check(&h))
            .contains(&"two increments were acknowledged from one read (a lost update)"));
    }
}
