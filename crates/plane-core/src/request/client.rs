//! The caller's side of a call: end-marker discipline, deadline, cancellation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::poll_fn;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::{Cancel, Frame, ReplyTransport};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::metrics::{self as m, Labels};
use crate::policy::OnError;

/// What one call attempt reports when it ends, and the client slot it holds.
pub(crate) struct CallMeta {
    /// `endpoint` and `backend` labels.
    pub(crate) labels: Labels,
    pub(crate) started: std::time::Instant,
    /// The handle's in-flight slot, released when the call ends.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    pub(crate) on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Replies may still come.
    Open,
    /// A graceful stop was sent; replies may still come until the end marker.
    Stopping,
    /// The end marker, an error or a kill ended the stream.
    Done,
}

/// The replies of one call, ending at the server's explicit end marker.
///
/// Yields `Ok(reply)` items, then `None` after the end marker. A typed error
/// from the handler, a timeout, or a transport that stops without an end
/// marker (`Disconnected`) is yielded once as `Err` and ends the stream.
/// Dropping an unfinished `Replies` kills the handler.
pub struct Replies {
    transport: Box<dyn ReplyTransport>,
    state: State,
    deadline: Option<Pin<Box<Sleep>>>,
    /// A reply read while awaiting the prologue of a streamed call, handed out first.
    pending: Option<Message>,
    meta: CallMeta,
    /// Whether a reply was handed to the reader (for [`OnError::Continue`]).
    delivered: bool,
    suppressed: Option<Error>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("state", &self.state)
            .finish()
    }
}

impl Replies {
    pub(crate) fn new(
        transport: Box<dyn ReplyTransport>,
        timeout: Option<Duration>,
        meta: CallMeta,
    ) -> Self {
        meta.labels.gauge(m::CLIENT_IN_FLIGHT).increment(1.0);
        Replies {
            transport,
            state: State::Open,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            pending: None,
            meta,
            delivered: false,
            suppressed: None,
        }
    }

    /// The error a best-effort ([`OnError::Continue`]) call swallowed to end
    /// its stream cleanly after some replies, if any.
    pub fn suppressed_error(&self) -> Option<&Error> {
        self.suppressed.as_ref()
    }

    /// End the stream: record the outcome once and give the slot back.
    fn finish(&mut self, outcome: std::result::Result<(), ErrorKind>) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        let labels = &self.meta.labels;
        let name = match outcome {
            Ok(()) => "ok",
            Err(kind) => {
                labels
                    .counter_with(m::CLIENT_ERRORS, "kind", kind.as_str())
                    .increment(1);
                if kind == ErrorKind::Timeout {
                    labels.counter(m::CLIENT_TIMEOUTS).increment(1);
                }
                kind.as_str()
            }
        };
        labels
            .counter_with(m::CLIENT_REQUESTS, "outcome", name)
            .increment(1);
        labels
            .histogram(m::CLIENT_DURATION)
            .record(self.meta.started.elapsed().as_secs_f64());
        labels.gauge(m::CLIENT_IN_FLIGHT).decrement(1.0);
        self.meta.permit = None;
    }

    /// Whether the stream has ended (end marker, error, or kill).
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.pending.is_none()
    }

    /// Ask the handler to stop gracefully. Replies it still sends, and its end
    /// marker, are delivered as usual.
    pub fn stop(&mut self) {
        if self.state == State::Open {
            self.transport.cancel(Cancel::Stop);
            self.state = State::Stopping;
        }
    }

    /// Kill the handler now; the stream ends without waiting for it.
    pub fn kill(mut self) {
        self.kill_in_place();
    }

    fn kill_in_place(&mut self) {
        if self.state != State::Done {
            self.transport.cancel(Cancel::Kill);
            self.finish(Err(ErrorKind::Cancelled));
        }
    }

    /// The next reply; `None` after the end marker.
    pub async fn next_reply(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.poll_reply(cx)).await
    }

    /// Wait for the first frame of a streamed call: `Accepted`, or a refusal.
    pub(crate) async fn await_prologue(&mut self) -> Result<()> {
        match poll_fn(|cx| self.poll_frame(cx)).await {
            Some(Ok(Frame::Accepted)) => Ok(()),
            // A server may skip the prologue and reply directly; keep the reply.
            Some(Ok(Frame::Data(m))) => {
                self.pending = Some(m);
                Ok(())
            }
            Some(Ok(Frame::Last(m))) => {
                self.pending = Some(m);
                Ok(())
            }
            Some(Ok(Frame::End)) => Ok(()),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    /// One transport frame, with the deadline and the end-marker rule applied.
    /// Errors are returned once and end the stream.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        if self.state == State::Done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                self.transport.cancel(Cancel::Kill);
                self.finish(Err(ErrorKind::Timeout));
                return Poll::Ready(Some(Err(Error::new(
                    ErrorKind::Timeout,
                    "no complete reply before the deadline",
                ))));
            }
        }
        let item = match self.transport.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match item {
            Some(Ok(frame)) => {
                if let Frame::Data(msg) | Frame::Last(msg) = &frame {
                    self.meta
                        .labels
                        .counter(m::CLIENT_BYTES_RECEIVED)
                        .increment(msg.payload_len() as u64);
                }
                if matches!(frame, Frame::Last(_) | Frame::End) {
                    self.finish(Ok(()));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                self.finish(Err(e.kind()));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.finish(Err(ErrorKind::Disconnected));
                Poll::Ready(Some(Err(Error::new(
                    ErrorKind::Disconnected,
                    "reply stream ended without its end marker",
                ))))
            }
        }
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        if let Some(m) = self.pending.take() {
            self.delivered = true;
            return Poll::Ready(Some(Ok(m)));
        }
        loop {
            return match self.poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Ok(Frame::End))) => Poll::Ready(None),
                // A late or duplicate prologue carries nothing for the reader.
                Poll::Ready(Some(Ok(Frame::Accepted))) => continue,
                Poll::Ready(Some(Ok(Frame::Data(m) | Frame::Last(m)))) => {
                    self.delivered = true;
                    Poll::Ready(Some(Ok(m)))
                }
                Poll::Ready(Some(Err(e)))
                    if self.delivered && self.meta.on_error == OnError::Continue =>
                {
                    // Best effort: the caller keeps what arrived and the
                    // stream ends cleanly; the error stays observable.
                    tracing::warn!(error = %e, "best-effort stream ended by an error");
                    self.suppressed = Some(e);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            };
        }
    }
}

impl Stream for Replies {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_reply(cx)
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        // An unfinished call whose caller walked away is a kill, exactly like
        // a lost connection: the handler must not keep working for nobody.
        self.kill_in_place();
    }
}
