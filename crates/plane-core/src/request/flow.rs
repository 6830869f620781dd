//! Flow control and liveness of one call, written once for every transport:
//! NATS drives them itself, the brokerless transports (QUIC, ZeroMQ) through
//! `plane-peer`. Only the window size and the idle limit are the
//! transport's.
//!
//! The caller's halves, [`Grants`] and [`Liveness`], are sans-IO in the
//! manner of quinn-proto: no sockets, no clocks, no tasks. The transport
//! tells them what arrived and when (`now` is an argument), and they answer
//! with what to send (a credit grant) and when the call is to be given up
//! for silence. [`IdleTimer`] puts a [`Liveness`] on a tokio timer, the one
//! idle timer every transport uses. The server's half, [`Credit`], is the
//! one place that turns grants into permission to send.
//!
//! # The protocol, whatever carries it
//! - A streamed call starts with `window` data frames of credit. Each data
//!   frame sent uses one; the caller grants credit back as its reader
//!   consumes frames, half a window at a time, so a handler never runs more
//!   than `window` frames ahead of a stalled reader. A grant larger than the
//!   window is cut to the window.
//! - A server that speaks plane sends something about every call in flight
//!   at least every heartbeat interval; a caller that has heard from it once
//!   and then hears nothing for its idle limit ends the call `Disconnected`.
//!   A peer never heard from is never timed out for silence (a plain NATS
//!   responder sends no heartbeats); the call's deadline bounds it instead.
//!
//! The lifecycle of the reply stream itself (prologue, data, end marker,
//! typed errors, stop and kill) is the handle's, in [`Replies`](super::Replies),
//! identical on every transport.

use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::{Error, ErrorKind, Result};

/// The caller's credit grants for one call: counts what the reader
/// consumed and says when to grant it back.
///
/// ```
/// use plane_core::request::flow::Grants;
///
/// let mut grants = Grants::new(4);
/// assert_eq!(grants.data_read(), None);
/// assert_eq!(grants.data_read(), Some(2), "half a window read: grant it back");
/// ```
#[derive(Debug, Clone)]
pub struct Grants {
    window: u32,
    /// Data frames read since credit was last granted.
    consumed: u32,
}

impl Grants {
    /// A call with `window` frames of credit (at least 2, so that half a
    /// window is at least one frame).
    pub fn new(window: u32) -> Self {
        Grants {
            window: window.max(2),
            consumed: 0,
        }
    }

    /// The reader consumed one data frame. Returns the credit to grant the
    /// server now, if any; the transport sends it, or hands it back with
    /// [`grant_failed`](Grants::grant_failed) when it cannot.
    pub fn data_read(&mut self) -> Option<u32> {
        self.consumed += 1;
        if self.consumed >= self.window / 2 {
            Some(std::mem::take(&mut self.consumed))
        } else {
            None
        }
    }

    /// A grant of `n` could not be sent (the transport's queue was full): it
    /// is granted with the next one instead, so no credit is lost.
    pub fn grant_failed(&mut self, n: u32) {
        self.consumed += n;
    }
}

/// The caller's view of whether the server of one call is still there.
///
/// ```
/// use std::time::{Duration, Instant};
/// use plane_core::request::flow::Liveness;
///
/// let t0 = Instant::now();
/// let mut live = Liveness::new(Duration::from_secs(3));
/// assert_eq!(live.idle_deadline(), None, "never heard from: no idle limit");
/// live.heard(t0);
/// assert!(live.expired(t0 + Duration::from_secs(3)).is_some());
/// ```
#[derive(Debug, Clone)]
pub struct Liveness {
    idle_limit: Duration,
    /// When the serving instance was last heard from; `None` until it first
    /// proves to be a plane server.
    heard: Option<Instant>,
}

impl Liveness {
    /// A call given up after `idle_limit` of silence from a server once
    /// heard. A transport whose servers always speak plane (ZeroMQ) marks
    /// the call's start as heard, so a server that never answers is timed
    /// out too.
    pub fn new(idle_limit: Duration) -> Self {
        Liveness {
            idle_limit,
            heard: None,
        }
    }

    /// Something about this call arrived from the server at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.heard = Some(now);
    }

    /// When the call is to be given up for silence, if the server was ever
    /// heard from.
    pub fn idle_deadline(&self) -> Option<Instant> {
        self.heard.map(|t| t + self.idle_limit)
    }

    /// The error ending the call if at `now` it has been silent for its
    /// idle limit.
    pub fn expired(&self, now: Instant) -> Option<Error> {
        let deadline = self.idle_deadline()?;
        (now >= deadline).then(|| {
            Error::new(
                ErrorKind::Disconnected,
                format!(
                    "no word from the serving instance for {:?}",
                    self.idle_limit
                ),
            )
        })
    }
}

/// A call's [`Liveness`] on a tokio timer: the one idle timer of every
/// transport that keeps an idle limit (NATS, ZeroMQ through `plane-peer`).
///
/// Hearing from the server only records the time; the timer is moved when
/// it fires and finds the call heard from since, so a busy call costs no
/// timer update per reply.
#[derive(Debug)]
pub struct IdleTimer {
    liveness: Liveness,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    /// A call given up after `idle_limit` of silence once heard (see
    /// [`Liveness::new`]).
    pub fn new(idle_limit: Duration) -> Self {
        IdleTimer {
            liveness: Liveness::new(idle_limit),
            timer: None,
        }
    }

    /// Something about the call arrived from the server just now.
    pub fn heard(&mut self) {
        self.liveness.heard(tokio::time::Instant::now().into_std());
    }

    /// Ready with the error ending the call once it has been silent for its
    /// idle limit; pending (the task woken at the deadline) until then, and
    /// for as long as the server was never heard from.
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Error> {
        use std::future::Future;
        use std::task::Poll;
        loop {
            let Some(deadline) = self.liveness.idle_deadline() else {
                return Poll::Pending;
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            if let Some(e) = self.liveness.expired(now.into_std()) {
                return Poll::Ready(e);
            }
            // Heard from since the timer was set (or woken a hair early for
            // the clock the deadline was taken from): wait out the rest.
            timer.as_mut().reset(deadline.max(now));
        }
    }
}

/// The server's half: how many data frames it may still send on one call.
/// Shared between the task sending replies and the one reading grants.
#[derive(Debug)]
pub struct Credit {
    window: u32,
    permits: Semaphore,
}

impl Credit {
    /// `window` frames of credit to start with.
    pub fn new(window: u32) -> Self {
        Credit {
            window,
            permits: Semaphore::new(window as usize),
        }
    }

    /// The caller granted `n` more frames; one grant of more than a window
    /// is cut to a window.
    pub fn grant(&self, n: u32) {
        self.permits.add_permits(n.min(self.window) as usize);
    }

    /// A grant as it arrives in a header: a decimal count, anything else
    /// granting nothing.
    pub fn grant_header(&self, value: Option<&str>) {
        self.grant(value.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    }

    /// Wait for one frame of credit and use it.
    ///
    /// # Errors
    /// `Cancelled` once [`close`](Credit::close) was called: the call ended.
    pub async fn take(&self) -> Result<()> {
        self.permits
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Cancelled, "call ended"))?
            .forget();
        Ok(())
    }

    /// End the call: a sender waiting for credit stops waiting.
    pub fn close(&self) {
        self.permits.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_granted_half_a_window_at_a_time_and_never_lost() {
        let mut f = Grants::new(8);
        let grants: Vec<Option<u32>> = (0..8).map(|_| f.data_read()).collect();
        assert_eq!(
            grants,
            vec![None, None, None, Some(4), None, None, None, Some(4)]
        );
        // A grant that could not be sent comes back with the next one.
        f.grant_failed(4);
        assert_eq!(f.data_read(), Some(5));
    }

    #[test]
    fn a_tiny_window_still_grants() {
        let mut f = Grants::new(1);
        assert_eq!(f.data_read(), Some(1));
    }

    #[test]
    fn silence_counts_only_after_the_server_was_heard() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(300);
        let mut f = Liveness::new(limit);
        assert!(f.expired(t0 + Duration::from_secs(3600)).is_none());
        f.heard(t0);
        assert!(f.expired(t0 + limit - Duration::from_millis(1)).is_none());
        let e = f.expired(t0 + limit).expect("silent for the idle limit");
        assert_eq!(e.kind(), ErrorKind::Disconnected);
        // Hearing again moves the deadline.
        f.heard(t0 + limit);
        assert_eq!(f.idle_deadline(), Some(t0 + 2 * limit));
        assert!(f.expired(t0 + limit).is_none());
    }

    #[tokio::test]
    async fn the_server_sends_no_more_than_the_window_ahead() {
        let c = Credit::new(2);
        c.take().await.unwrap();
        c.take().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(20), c.take()).await;
        assert!(third.is_err(), "the window is used up");
        // An outsized or malformed grant cannot open more than a window.
        c.grant(1_000_000);
        c.grant_header(Some("not a number"));
        c.take().await.unwrap();
        c.take().await.unwrap();
        let over = tokio::time::timeout(Duration::from_millis(20), c.take()).await;
        assert!(over.is_err(), "a grant is cut to the window");
        c.close();
        assert_eq!(c.take().await.unwrap_err().kind(), ErrorKind::Cancelled);
    }

    /// A caller and a server, driven step by step in one task with no
    /// transport between them: the server sends as fast as its credit
    /// allows, the caller's reader stalls, then drains. The server is never
    /// more than a window ahead, and once the reader drains every frame is
    /// delivered.
    #[tokio::test]
    async fn a_pair_of_peers_keeps_the_sender_within_a_window_of_the_reader() {
        const WINDOW: u32 = 8;
        const FRAMES: u32 = 100;
        let credit = Credit::new(WINDOW);
        let mut grants = Grants::new(WINDOW);
        let mut in_flight = std::collections::VecDeque::new();
        let (mut sent, mut read) = (0u32, 0u32);
        let mut stalled_rounds = 3;
        let mut rounds = 0;
        while read < FRAMES {
            rounds += 1;
            assert!(rounds < 1_000, "no progress: sent {sent}, read {read}");
            // The server sends until it runs out of credit (or frames).
            while sent < FRAMES {
                let ready = tokio::time::timeout(Duration::ZERO, credit.take()).await;
                if ready.is_err() {
                    break;
                }
                in_flight.push_back(sent);
                sent += 1;
            }
            assert!(sent - read <= WINDOW, "sent {sent}, read {read}");
            // The reader stalls for a few rounds, then reads what arrived,
            // granting credit back as it goes.
            if stalled_rounds > 0 {
                stalled_rounds -= 1;
                continue;
            }
            while let Some(frame) = in_flight.pop_front() {
                assert_eq!(frame, read, "in order");
                read += 1;
                if let Some(n) = grants.data_read() {
                    credit.grant(n);
                }
            }
        }
        assert_eq!((sent, read), (FRAMES, FRAMES));
    }

    /// Whether the timer says the call expired, polled once.
    async fn expired(t: &mut IdleTimer) -> bool {
        std::future::poll_fn(|cx| std::task::Poll::Ready(t.poll_expired(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_only_after_a_whole_limit_of_silence() {
        let limit = Duration::from_secs(3);
        let mut never = IdleTimer::new(limit);
        tokio::time::sleep(limit * 10).await;
        assert!(!expired(&mut never).await, "never heard: never timed out");

        let mut t = IdleTimer::new(limit);
        t.heard();
        for _ in 0..5 {
            // Heard every two seconds: the timer, set for the first deadline,
            // finds the call heard from and waits again.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(!expired(&mut t).await);
            t.heard();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!expired(&mut t).await);
        let started = tokio::time::Instant::now();
        let e = std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        assert_eq!(e.kind(), ErrorKind::Disconnected);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "woken at the deadline"
        );
    }
}
