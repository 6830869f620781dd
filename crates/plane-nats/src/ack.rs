//! Acknowledging JetStream deliveries, with dead-lettering.
//!
//! JetStream stops redelivering after `max_deliver` attempts but does not move
//! the message anywhere. plane does, from the client that holds the last
//! attempt: a nack of the last attempt, or an ack wait that runs out on it,
//! publishes the message to the dead-letter destination (with the
//! `plane-dead-letter-*` headers) and terminates it. The dead-letter publish
//! carries a `Nats-Msg-Id` derived from the stream sequence, so it is stored
//! once even if both paths race.
//!
//! Limitation: if the process holding the last attempt dies, the message is
//! not dead-lettered (it stays in the stream, undelivered).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use plane_core::message::names;
use plane_core::{Error, ErrorKind, Result};
use tokio::time::Instant;

/// Where a delivery goes once its last attempt failed.
#[derive(Clone)]
pub(crate) struct DeadLetter {
    pub js: async_nats::jetstream::Context,
    /// Subject to publish to.
    pub subject: String,
    /// Whether the destination is a stream (wait for its ack) or a core subject.
    pub durable: bool,
    /// Header naming where the message came from, and its value (`None`:
    /// the message's own subject).
    pub source: (&'static str, Option<String>),
}

/// The message a dead letter would carry.
pub(crate) struct Original {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    pub stream: String,
    pub stream_sequence: u64,
    pub attempt: u32,
}

struct State {
    acker: Acker,
    settled: AtomicBool,
    ack_wait: Duration,
    deadline: Mutex<Instant>,
    dead_letter: Option<(DeadLetter, Original)>,
}

/// plane's [`plane_core::ack::Acker`] over a JetStream acker.
pub(crate) struct JsAcker {
    state: Arc<State>,
}

fn ack_error(e: async_nats::Error) -> Error {
    Error::new(ErrorKind::Connection, "jetstream ack failed").with_source(e)
}

impl JsAcker {
    /// `last`: this is the last attempt the consumer allows; with a
    /// dead-letter destination, a nack or an expired ack wait dead-letters it.
    pub(crate) fn new(
        acker: Acker,
        ack_wait: Duration,
        dead_letter: Option<(DeadLetter, Original)>,
    ) -> Self {
        let state = Arc::new(State {
            acker,
            settled: AtomicBool::new(false),
            ack_wait,
            deadline: Mutex::new(Instant::now() + ack_wait),
            dead_letter,
        });
        if state.dead_letter.is_some() {
            // The timer owns the state, so a delivery dropped by a crashed
            // worker is still dead-lettered once its ack wait runs out.
            tokio::spawn(expire(state.clone()));
        }
        JsAcker { state }
    }
}

async fn expire(s: Arc<State>) {
    loop {
        if s.settled.load(Ordering::Acquire) {
            return;
        }
        let deadline = *s.deadline.lock().unwrap_or_else(|p| p.into_inner());
        tokio::time::sleep_until(deadline).await;
        if s.settled.load(Ordering::Acquire) {
            return;
        }
        let now_deadline = *s.deadline.lock().unwrap_or_else(|p| p.into_inner());
        if now_deadline > Instant::now() {
            continue; // extended meanwhile
        }
        if !s.settled.swap(true, Ordering::AcqRel) {
            if let Err(e) = dead_letter(&s).await {
                tracing::warn!(error = %e, "dead-lettering after ack wait failed");
            }
        }
        return;
    }
}

async fn dead_letter(s: &State) -> Result<()> {
    let Some((dl, original)) = &s.dead_letter else {
        return Ok(());
    };
    let mut headers = original.headers.clone().unwrap_or_default();
    let (source_header, source) = &dl.source;
    headers.insert(
        *source_header,
        source.as_deref().unwrap_or(original.subject.as_str()),
    );
    headers.insert(names::DEAD_LETTER_DELIVERIES, original.attempt.to_string());
    headers.insert(
        "Nats-Msg-Id",
        format!("plane-dl-{}-{}", original.stream, original.stream_sequence),
    );
    if dl.durable {
        dl.js
            .publish_with_headers(dl.subject.clone(), headers, original.payload.clone())
            .await
            .map_err(crate::error::js_publish)?
            .await
            .map_err(crate::error::js_publish)?;
    } else {
        let client = dl.js.client();
        client
            .publish_with_headers(dl.subject.clone(), headers, original.payload.clone())
            .await
            .map_err(crate::error::publish)?;
        client
            .flush()
            .await
            .map_err(|e| Error::new(ErrorKind::Connection, "nats flush failed").with_source(e))?;
    }
    s.acker.ack_with(AckKind::Term).await.map_err(ack_error)
}

impl plane_core::ack::Acker for JsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.state.settled.swap(true, Ordering::AcqRel) {
                return Err(Error::new(
                    ErrorKind::AlreadyAcked,
                    "ack wait ran out: the delivery was dead-lettered",
                ));
            }
            self.state.acker.double_ack().await.map_err(ack_error)
        })
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.state.settled.swap(true, Ordering::AcqRel) {
                return Err(Error::new(
                    ErrorKind::AlreadyAcked,
                    "ack wait ran out: the delivery was dead-lettered",
                ));
            }
            if self.state.dead_letter.is_some() {
                return dead_letter(&self.state).await;
            }
            self.state
                .acker
                .ack_with(AckKind::Nak(delay))
                .await
                .map_err(ack_error)
        })
    }

    fn extend(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.state.settled.load(Ordering::Acquire) {
                return Err(Error::new(
                    ErrorKind::AlreadyAcked,
                    "ack wait ran out: the delivery was dead-lettered",
                ));
            }
            *self
                .state
                .deadline
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now() + self.state.ack_wait;
            self.state
                .acker
                .double_ack_with(AckKind::Progress)
                .await
                .map_err(ack_error)
        })
    }
}
