//! One reply inbox per connection, shared by every call.
//!
//! Subscribing a fresh inbox per call costs a `SUB` and an `UNSUB` on the
//! wire and a round through the client's connection task before the call
//! can even be published. Instead the first call subscribes the wildcard
//! `<inbox>.*` once; each call takes the next token under it as its reply
//! subject and registers a bounded channel, and one router task hands every
//! reply to its call by that token.
//!
//! The channel is bounded so that one call's flood cannot grow memory or
//! stall the router (and with it every other call): a plane server never has
//! more than its credit window of data frames ahead of the caller (the
//! request plane sizes the channel from it), so a call whose channel is full
//! is talking to a peer that ignores flow control; it is cut off and reports
//! `Overloaded`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_nats::{Client, Subject};
use futures_util::StreamExt;
use plane_core::Result;
use tokio::sync::{mpsc, OnceCell};

struct Route {
    tx: mpsc::Sender<async_nats::Message>,
    /// Set when the router cut the call off because its buffer was full.
    overflow: Arc<AtomicBool>,
}

#[derive(Default)]
struct Routes {
    map: Mutex<HashMap<u64, Route>>,
    /// The subscription ended (the client closed): no route will be served.
    closed: AtomicBool,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shared inbox of one client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Inbox {
    client: Client,
    /// `<inbox>.`: a call's reply subject is this plus its token.
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
    routes: Arc<Routes>,
    /// Subscribed on first use, so handles that never call subscribe nothing.
    started: Arc<OnceCell<()>>,
    /// Replies buffered per call.
    call_buffer: usize,
}

impl Inbox {
    /// An inbox on `client` buffering `call_buffer` replies per call.
    pub(crate) fn new(client: Client, call_buffer: usize) -> Self {
        let prefix = format!("{}.", client.new_inbox()).into();
        Inbox {
            client,
            prefix,
            next: Arc::new(AtomicU64::new(0)),
            routes: Arc::default(),
            started: Arc::new(OnceCell::new()),
            call_buffer,
        }
    }

    async fn start(&self) -> Result<()> {
        self.started
            .get_or_try_init(|| async {
                let sub = self
                    .client
                    .subscribe(format!("{}*", self.prefix))
                    .await
                    .map_err(crate::error::subscribe)?;
                tokio::spawn(route(sub, self.prefix.clone(), self.routes.clone()));
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// A reply subject of its own for one call, and where its replies arrive.
    pub(crate) async fn open(&self) -> Result<(Subject, Replies)> {
        self.open_sized(self.call_buffer).await
    }

    /// As [`open`](Inbox::open), buffering `buffer` replies: a broadcast
    /// hears from many instances on one reply subject.
    pub(crate) async fn open_sized(&self, buffer: usize) -> Result<(Subject, Replies)> {
        self.start().await?;
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(buffer);
        let overflow = Arc::new(AtomicBool::new(false));
        self.routes.lock().insert(
            token,
            Route {
                tx,
                overflow: overflow.clone(),
            },
        );
        if self.routes.closed.load(Ordering::Acquire) {
            // The router is gone; it cannot have seen this route.
            self.routes.lock().remove(&token);
        }
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        let _ = write!(subject, "{token}");
        Ok((
            Subject::from(subject),
            Replies {
                rx,
                overflow,
                token,
                routes: self.routes.clone(),
            },
        ))
    }
}

/// Hand each message on the wildcard inbox to its call.
async fn route(mut sub: async_nats::Subscriber, prefix: Arc<str>, routes: Arc<Routes>) {
    while let Some(msg) = sub.next().await {
        let Some(token) = msg
            .subject
            .strip_prefix(&*prefix)
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let mut map = routes.lock();
        let Some(r) = map.get(&token) else {
            // The call already ended (a late heartbeat, say).
            continue;
        };
        match r.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                r.overflow.store(true, Ordering::Release);
                map.remove(&token);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                map.remove(&token);
            }
        }
    }
    routes.closed.store(true, Ordering::Release);
    // Dropping the senders ends every open call: `Disconnected`.
    routes.lock().clear();
}

/// The replies of one call. Deregisters the call when dropped.
pub(crate) struct Replies {
    rx: mpsc::Receiver<async_nats::Message>,
    overflow: Arc<AtomicBool>,
    token: u64,
    routes: Arc<Routes>,
}

/// What the inbox yields for one call.
pub(crate) enum Next {
    Message(async_nats::Message),
    /// The peer sent more than flow control allows: the call was cut off.
    Overflow,
    /// The connection's subscription ended.
    Closed,
}

impl Replies {
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Next::Message(m)),
            Poll::Ready(None) if self.overflow.load(Ordering::Acquire) => {
                Poll::Ready(Next::Overflow)
            }
            Poll::Ready(None) => Poll::Ready(Next::Closed),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.token);
    }
}
