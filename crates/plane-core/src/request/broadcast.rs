//! Broadcast calls: one call answered by every live instance of an endpoint.
//!
//! A backend reaches the instances in one of two ways ([`Reach`]). One that
//! knows them (a registry, a discovery directory) names them, and the plane
//! sends each a direct call of its own; one whose broker fans a message out
//! (NATS) sends the call once and gathers the answers itself. Either way the
//! caller gets a [`Broadcast`]: each instance's [`Answer`], in the order they
//! come, ended at the latest by the call's deadline. An instance that took the
//! call but has not answered by then is reported with `Timeout`, never
//! silently left out, and it does not hold up the others.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, Sleep};

use crate::error::{Error, ErrorKind, Result};
use crate::ids::InstanceId;
use crate::message::Message;

/// One instance's answer to a broadcast call.
#[derive(Debug)]
pub struct Answer {
    /// The instance that answered (or failed to).
    pub instance: InstanceId,
    /// Its reply, or the typed error its call ended with.
    pub reply: Result<Message>,
}

/// How a backend reaches every instance of an endpoint for a broadcast.
pub enum Reach {
    /// The instances serving the endpoint now: the plane sends each a call
    /// addressed to it ([`Route::Instance`](super::Route::Instance)).
    Instances(Vec<InstanceId>),
    /// The backend sent the call to every instance itself; the answers
    /// arrive on this transport.
    Gathered(Box<dyn GatherTransport>),
}

impl fmt::Debug for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reach::Instances(ids) => f.debug_tuple("Instances").field(ids).finish(),
            Reach::Gathered(_) => f.write_str("Gathered"),
        }
    }
}

/// A backend's receiving side of a broadcast it sent itself.
pub trait GatherTransport: Send + 'static {
    /// The next instance's answer; `None` once the transport knows every
    /// instance has answered. Each instance answers at most once.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>>;
    /// The instances that took the call but have not answered: at the
    /// deadline each is reported with `Timeout`. Dropping the transport
    /// afterwards cancels what they still run.
    fn unanswered(&self) -> Vec<InstanceId>;
}

/// The answers to one broadcast call, as a [`Stream`] of [`Answer`]s.
///
/// Ends when every instance reached has answered, and at the latest at the
/// call's deadline. Dropping it cancels the calls still running (a kill).
pub struct Broadcast {
    inner: Inner,
}

enum Inner {
    /// One direct call per instance, each with the call's deadline.
    Calls(FuturesUnordered<BoxFuture<'static, Answer>>),
    Gathered {
        transport: Box<dyn GatherTransport>,
        deadline: Pin<Box<Sleep>>,
        /// Filled at the deadline with the instances still silent.
        overdue: Option<VecDeque<InstanceId>>,
    },
}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Calls(calls) => write!(f, "Broadcast({} calls running)", calls.len()),
            Inner::Gathered { .. } => f.write_str("Broadcast(gathered)"),
        }
    }
}

impl Broadcast {
    /// Answers of one call per instance, each future yielding its own.
    pub(crate) fn calls(calls: impl IntoIterator<Item = BoxFuture<'static, Answer>>) -> Self {
        Broadcast {
            inner: Inner::Calls(calls.into_iter().collect()),
        }
    }

    /// Answers a backend gathers, cut off at `deadline`.
    pub(crate) fn gathered(transport: Box<dyn GatherTransport>, deadline: Instant) -> Self {
        Broadcast {
            inner: Inner::Gathered {
                transport,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                overdue: None,
            },
        }
    }

    /// Collect every answer (until the end or the deadline).
    pub async fn collect(self) -> Vec<Answer> {
        futures_util::StreamExt::collect(self).await
    }
}

fn overdue(instance: InstanceId) -> Answer {
    Answer {
        instance,
        reply: Err(Error::new(
            ErrorKind::Timeout,
            "the instance took the broadcast call but did not answer before its deadline",
        )),
    }
}

impl Stream for Broadcast {
    type Item = Answer;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        match &mut self.get_mut().inner {
            // An empty set of calls is the end, which is what it yields.
            Inner::Calls(calls) => Pin::new(calls).poll_next(cx),
            Inner::Gathered {
                transport,
                deadline,
                overdue: late,
            } => {
                if let Some(late) = late {
                    return Poll::Ready(late.pop_front().map(overdue));
                }
                if let Poll::Ready(answer) = transport.poll_answer(cx) {
                    return Poll::Ready(answer);
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let mut silent: VecDeque<InstanceId> = transport.unanswered().into();
                        let first = silent.pop_front().map(overdue);
                        *late = Some(silent);
                        Poll::Ready(first)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    /// Hands out `answers` one by one, then waits for ever, reporting
    /// `silent` as having taken the call.
    struct Scripted {
        answers: VecDeque<Answer>,
        silent: Vec<InstanceId>,
    }

    impl GatherTransport for Scripted {
        fn poll_answer(&mut self, _cx: &mut Context<'_>) -> Poll<Option<Answer>> {
            match self.answers.pop_front() {
                Some(a) => Poll::Ready(Some(a)),
                None => Poll::Pending,
            }
        }
        fn unanswered(&self) -> Vec<InstanceId> {
            self.silent.clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gathered_broadcast_reports_the_silent_at_its_deadline() {
        let (quick, silent) = (InstanceId(1), InstanceId(2));
        let transport = Scripted {
            answers: VecDeque::from([Answer {
                instance: quick,
                reply: Ok(Message::from("hi")),
            }]),
            silent: vec![silent],
        };
        let started = Instant::now();
        let mut b = Broadcast::gathered(Box::new(transport), started + Duration::from_secs(1));
        let first = b.next().await.expect("the quick answer");
        assert_eq!(first.instance, quick);
        assert!(first.reply.is_ok());
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "not held up by the silent one"
        );
        let late = b.next().await.expect("the silent one, reported");
        assert_eq!(late.instance, silent);
        assert_eq!(late.reply.unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(1), "at the deadline");
        assert!(b.next().await.is_none(), "then the end");
    }

    #[tokio::test]
    async fn a_broadcast_of_calls_ends_when_each_answered() {
        let calls = [1u64, 2, 3].map(|i| {
            Box::pin(async move {
                Answer {
                    instance: InstanceId(i),
                    reply: Ok(Message::default()),
                }
            }) as BoxFuture<'static, Answer>
        });
        let mut ids: Vec<u64> = Broadcast::calls(calls)
            .collect()
            .await
            .into_iter()
            .map(|a| a.instance.0)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(Broadcast::calls([]).collect().await.is_empty());
    }
}
