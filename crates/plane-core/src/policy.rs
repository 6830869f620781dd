//! Client policies, layered over every backend by the plane handles: retries
//! with exponential backoff and idempotency keys, what to do on error, and
//! client-side backpressure (a bound on calls in flight per handle).
//!
//! # Retries and idempotency
//!
//! A [`RetryPolicy`] repeats an operation only when its error
//! [`is_retryable`](crate::ErrorKind::is_retryable) (a condition of the moment,
//! never a property of the request), with exponential backoff and *full
//! jitter* (each delay is uniform in `[0, min(max_backoff, initial × multiplier^n)]`,
//! which spreads a thundering herd best), up to `max_attempts` attempts and
//! `max_elapsed` in total.
//!
//! Every attempt of one logical request carries the same
//! [`names::IDEMPOTENCY_KEY`](crate::message::names::IDEMPOTENCY_KEY) header
//! (the caller's, or one generated per logical call when retries are
//! possible). The serving [`Dispatcher`](crate::request::Dispatcher)
//! remembers the answers of recently completed unary calls by key and answers a
//! repeat with the original answer instead of running the handler again; see
//! [`ServeOptions::idempotency`](crate::request::ServeOptions::idempotency).
//! Durable publishes are retried with the same message id, so the stream's
//! duplicate window makes the retries safe.
//!
//! # On error
//!
//! [`OnError`] says what a caller wants when a call fails; see its variants
//! for the exact meaning for unary and streamed calls. A [`CallPolicy`] pairs
//! it with a [`RetryPolicy`]; a [`Requests`](crate::Requests) handle has one
//! default policy and optional per-endpoint overrides.
//!
//! # Backpressure
//!
//! [`InFlightLimit`] bounds the calls a handle has in flight. What happens to a
//! call beyond the bound is its [`Overflow`] policy. Slots are owned permits
//! held by the call's [`Replies`](crate::request::Replies) and released when the
//! call ends or is dropped, so a cancelled caller can never leak one.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};

/// Exponential backoff with full jitter, for retryable errors only.
///
/// ```
/// use std::time::Duration;
/// use plane_core::policy::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(4)
///     .initial_backoff(Duration::from_millis(20))
///     .max_backoff(Duration::from_secs(1))
///     .max_elapsed(Duration::from_secs(5));
/// assert_eq!(policy.max_attempts, 4);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 1 never retries.
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay.
    pub initial_backoff: Duration,
    /// Upper bound of any one delay.
    pub max_backoff: Duration,
    /// Growth of the delay bound per retry (≥ 1).
    pub multiplier: f64,
    /// No retry starts once this much time has passed since the first
    /// attempt began (a retry whose delay would cross it is not made).
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    /// [`RetryPolicy::none`]: retrying is a choice the caller makes.
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
            max_elapsed: None,
        }
    }

    /// Up to `max_attempts` attempts with 50 ms initial backoff, doubling, at
    /// most 2 s per delay, and no overall limit.
    pub fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::none()
        }
    }

    /// Set [`initial_backoff`](RetryPolicy::initial_backoff).
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Set [`max_backoff`](RetryPolicy::max_backoff).
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Set [`multiplier`](RetryPolicy::multiplier) (values below 1 count as 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Set [`max_elapsed`](RetryPolicy::max_elapsed).
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Whether this policy ever retries.
    pub fn retries(&self) -> bool {
        self.max_attempts > 1
    }

    /// The upper bound of the delay before retry `retry` (1 for the first).
    pub fn backoff_bound(&self, retry: u32) -> Duration {
        let m = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let bound = self.initial_backoff.as_secs_f64() * m.powi(exp);
        let max = self.max_backoff.as_secs_f64();
        Duration::from_secs_f64(if bound.is_finite() {
            bound.min(max)
        } else {
            max
        })
    }

    /// A full-jitter delay before retry `retry`: uniform in `[0, bound]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let bound = self.backoff_bound(retry);
        if bound.is_zero() {
            return bound;
        }
        bound.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Run `op` until it succeeds, fails with a non-retryable error, or the
    /// policy is exhausted; returns the last outcome. `op` receives the attempt
    /// number (1 for the first). Each retry first calls `on_retry` with the
    /// error that caused it and the retry's number.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(&Error, u32),
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let error = match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !error.is_retryable() || attempt >= self.max_attempts {
                return Err(error);
            }
            let delay = self.backoff(attempt);
            if let Some(max) = self.max_elapsed {
                if start.elapsed() + delay >= max {
                    return Err(error);
                }
            }
            on_retry(&error, attempt);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// What a caller wants when a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Retry retryable errors under the call's [`RetryPolicy`], then behave as
    /// [`End`](OnError::End). A unary call is re-sent whole. A streamed call is
    /// re-sent only while nothing was received: a refusal, or a failure before
    /// the server admitted the call; once replies flowed, re-sending would
    /// repeat them, so a later error ends the stream as under `End`. The default.
    #[default]
    Retry,
    /// Never retry: the first error is the call's outcome (unary: `Err`;
    /// streamed: yielded once, then the stream ends). For endpoints whose
    /// handler must not run twice under any circumstances.
    End,
    /// Best effort, keep what arrived: a streamed call whose stream fails
    /// after at least one reply ends cleanly instead (the error is counted,
    /// logged at `warn`, and kept in [`Replies::suppressed_error`](crate::request::Replies::suppressed_error)).
    /// A failure before any reply, and any unary failure, has nothing to
    /// continue with and is returned as under `End`. Never retries.
    Continue,
}

/// A retry policy with an on-error policy: how one endpoint's calls are made.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallPolicy {
    /// Backoff and limits for retries (used under [`OnError::Retry`]).
    pub retry: RetryPolicy,
    /// What to do on error.
    pub on_error: OnError,
}

impl CallPolicy {
    /// Retry under `retry`.
    pub fn retry(retry: RetryPolicy) -> Self {
        CallPolicy {
            retry,
            on_error: OnError::Retry,
        }
    }

    /// Never retry; errors end the call.
    pub fn end() -> Self {
        CallPolicy {
            retry: RetryPolicy::none(),
            on_error: OnError::End,
        }
    }

    /// Best effort (see [`OnError::Continue`]).
    pub fn best_effort() -> Self {
        CallPolicy {
            retry: RetryPolicy::none(),
            on_error: OnError::Continue,
        }
    }

    /// The retry policy actually applied: none unless `on_error` is `Retry`.
    pub fn effective_retry(&self) -> RetryPolicy {
        match self.on_error {
            OnError::Retry => self.retry.clone(),
            OnError::End | OnError::Continue => RetryPolicy::none(),
        }
    }
}

/// What happens to a call that finds every in-flight slot taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Fail at once with `Overloaded`.
    Reject,
    /// Wait for a slot, in arrival order; a call arriving when `max_waiting`
    /// calls already wait fails with `Overloaded`.
    Queue {
        /// Calls allowed to wait at once.
        max_waiting: usize,
    },
    /// Wait for a slot, in arrival order; a call arriving when `max_waiting`
    /// calls already wait is queued and the *oldest* waiting call fails with
    /// `Overloaded` instead (the freshest work is the most likely to still
    /// matter). With `max_waiting` 0 this is `Reject`.
    Shed {
        /// Calls allowed to wait at once.
        max_waiting: usize,
    },
}

/// A bound on the calls a [`Requests`](crate::Requests) handle has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightLimit {
    /// Calls in flight at once (≥ 1).
    pub max_in_flight: usize,
    /// What happens beyond it.
    pub overflow: Overflow,
}

impl InFlightLimit {
    /// At most `max_in_flight` calls; further ones are refused with `Overloaded`.
    pub fn reject(max_in_flight: usize) -> Self {
        InFlightLimit {
            max_in_flight,
            overflow: Overflow::Reject,
        }
    }

    /// At most `max_in_flight` calls; up to `max_waiting` more wait for a slot.
    pub fn queue(max_in_flight: usize, max_waiting: usize) -> Self {
        InFlightLimit {
            max_in_flight,
            overflow: Overflow::Queue { max_waiting },
        }
    }

    /// At most `max_in_flight` calls; up to `max_waiting` wait, the oldest
    /// waiter shed when another arrives.
    pub fn shed(max_in_flight: usize, max_waiting: usize) -> Self {
        InFlightLimit {
            max_in_flight,
            overflow: Overflow::Shed { max_waiting },
        }
    }
}

/// The admission gate of one handle: a semaphore of `max_in_flight` permits
/// and a bounded, sheddable line of waiters.
pub(crate) struct Limiter {
    limit: InFlightLimit,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Waiters in arrival order, for `Shed`: sending on (or dropping) a
    /// waiter's channel sheds it.
    line: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next_waiter: AtomicU64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.limit)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

/// Counts a caller as waiting for as long as it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a shed waiter out of the line however its wait ends.
struct InLine<'a> {
    line: &'a Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    id: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        line.retain(|(id, _)| *id != self.id);
    }
}

fn overloaded(message: &'static str) -> Error {
    Error::new(ErrorKind::Overloaded, message)
}

impl Limiter {
    pub(crate) fn new(limit: InFlightLimit) -> Result<Self> {
        if limit.max_in_flight == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_in_flight must be at least 1",
            ));
        }
        Ok(Limiter {
            limit,
            permits: Arc::new(Semaphore::new(limit.max_in_flight)),
            waiting: AtomicUsize::new(0),
            line: Mutex::new(VecDeque::new()),
            next_waiter: AtomicU64::new(0),
        })
    }

    /// Calls currently holding a slot.
    pub(crate) fn in_flight(&self) -> usize {
        self.limit.max_in_flight - self.permits.available_permits()
    }

    /// Calls currently waiting for a slot.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The configured limit.
    pub(crate) fn limit(&self) -> InFlightLimit {
        self.limit
    }

    /// Resolves once a slot is free, without keeping it: the permit tokio
    /// hands over is returned at once (to the next waiter, if any). Waits in
    /// line behind calls already waiting, so it never overtakes them.
    /// Cancel-safe like [`acquire`](Limiter::acquire).
    pub(crate) fn slot_free(&self) -> impl Future<Output = ()> + Send + 'static {
        let permits = self.permits.clone();
        async move {
            // `Err` only if the semaphore were closed, which this type never
            // does; either way there is nothing left to wait for.
            drop(permits.acquire_owned().await);
        }
    }

    /// A slot, per the overflow policy. Cancel-safe: dropping the future
    /// gives up the wait (and any permit tokio assigned meanwhile).
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit> {
        // `try_acquire` never overtakes waiters: tokio's semaphore hands a
        // released permit to the first waiter directly.
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match self.limit.overflow {
            Overflow::Reject => Err(overloaded("client has its maximum of calls in flight")),
            Overflow::Queue { max_waiting } => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(overloaded("client's line of waiting calls is full"));
                }
                let _waiting = Waiting(&self.waiting);
                self.wait_permit().await
            }
            Overflow::Shed { max_waiting } => {
                if max_waiting == 0 {
                    return Err(overloaded("client has its maximum of calls in flight"));
                }
                let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
                let (tx, shed) = oneshot::channel();
                {
                    let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
                    if line.len() >= max_waiting {
                        // Dropping the oldest waiter's sender sheds it.
                        line.pop_front();
                    }
                    line.push_back((id, tx));
                }
                self.waiting.fetch_add(1, Ordering::AcqRel);
                let _waiting = Waiting(&self.waiting);
                let _in_line = InLine {
                    line: &self.line,
                    id,
                };
                tokio::select! {
                    // A permit that arrives together with the shed signal wins:
                    // the call can proceed, so shedding it would waste the slot.
                    biased;
                    permit = self.wait_permit() => permit,
                    _ = shed => Err(overloaded("shed from the client's line of waiting calls by a newer call")),
                }
            }
        }
    }

    async fn wait_permit(&self) -> Result<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "client limiter closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let p = RetryPolicy::exponential(10)
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(100));
        assert_eq!(p.backoff_bound(1), Duration::from_millis(10));
        assert_eq!(p.backoff_bound(2), Duration::from_millis(20));
        assert_eq!(p.backoff_bound(4), Duration::from_millis(80));
        assert_eq!(p.backoff_bound(5), Duration::from_millis(100));
        assert_eq!(p.backoff_bound(u32::MAX), Duration::from_millis(100));
        for retry in 1..8 {
            assert!(p.backoff(retry) <= p.backoff_bound(retry));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_kinds_up_to_max_attempts() {
        let p = RetryPolicy::exponential(3);
        let mut calls = 0;
        let mut retries = Vec::new();
        let r: Result<()> = p
            .run(
                |_| {
                    calls += 1;
                    async { Err(Error::from(ErrorKind::Overloaded)) }
                },
                |e, n| retries.push((e.kind(), n)),
            )
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Overloaded);
        assert_eq!(calls, 3);
        assert_eq!(
            retries,
            vec![(ErrorKind::Overloaded, 1), (ErrorKind::Overloaded, 2)]
        );

        let mut calls = 0;
        let r: Result<()> = p
            .run(
                |_| {
                    calls += 1;
                    async { Err(Error::from(ErrorKind::NotFound)) }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(calls, 1, "a non-retryable error is never repeated");

        let r = p
            .run(
                |n| async move {
                    if n < 2 {
                        Err(Error::from(ErrorKind::Timeout))
                    } else {
                        Ok(n)
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_stops_retrying() {
        let p = RetryPolicy::exponential(100)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(100))
            .max_elapsed(Duration::from_millis(350));
        let start = Instant::now();
        let mut calls = 0u32;
        let r: Result<()> = p
            .run(
                |_| {
                    calls += 1;
                    async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(Error::from(ErrorKind::Connection))
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Connection);
        assert!(calls < 100);
        assert!(start.elapsed() < Duration::from_millis(350 + 100 + 1));
    }

    #[test]
    fn on_error_decides_whether_retry_applies() {
        let retry = RetryPolicy::exponential(5);
        assert!(CallPolicy::retry(retry.clone()).effective_retry().retries());
        let mut end = CallPolicy::retry(retry);
        end.on_error = OnError::End;
        assert!(!end.effective_retry().retries());
        assert!(!CallPolicy::best_effort().effective_retry().retries());
    }

    #[tokio::test]
    async fn reject_refuses_beyond_the_limit() {
        let l = Limiter::new(InFlightLimit::reject(2)).unwrap();
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.acquire().await.unwrap_err().kind(), ErrorKind::Overloaded);
        drop(a);
        assert!(l.acquire().await.is_ok());
        assert!(Limiter::new(InFlightLimit::reject(0)).is_err());
    }

    #[tokio::test]
    async fn queue_waits_within_its_bound_and_cancelled_waiters_leak_nothing() {
        let l = Arc::new(Limiter::new(InFlightLimit::queue(1, 2)).unwrap());
        let held = l.acquire().await.unwrap();
        let w1 = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(drop) }
        });
        let w2 = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(drop) }
        });
        while l.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            l.acquire().await.unwrap_err().kind(),
            ErrorKind::Overloaded,
            "beyond the line's bound"
        );
        // Cancel both waiters: neither may keep a place or a permit.
        w1.abort();
        w2.abort();
        let _ = w1.await;
        let _ = w2.await;
        assert_eq!(l.waiting(), 0);
        drop(held);
        assert_eq!(l.in_flight(), 0);
        let _p = l.acquire().await.unwrap();
        assert_eq!(l.in_flight(), 1);
    }

    #[tokio::test]
    async fn shed_fails_the_oldest_waiter() {
        let l = Arc::new(Limiter::new(InFlightLimit::shed(1, 1)).unwrap());
        let held = l.acquire().await.unwrap();
        let oldest = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(drop) }
        });
        while l.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let newest = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.map(drop) }
        });
        let shed = oldest.await.unwrap();
        assert_eq!(shed.unwrap_err().kind(), ErrorKind::Overloaded);
        drop(held);
        newest.await.unwrap().unwrap();
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.waiting(), 0);
    }
}
