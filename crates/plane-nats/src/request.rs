//! The request plane on core NATS request/reply.
//!
//! Subjects (with the default prefix `plane`):
//!
//! | subject | who subscribes | carries |
//! |---|---|---|
//! | `plane.req.<endpoint>` | every instance, queue group `plane.<endpoint>` | calls routed by the broker |
//! | `plane.req.<endpoint>.<instance>` | that instance | calls addressed to one instance |
//! | `plane.ctl.<endpoint>` | every instance | stop / kill / credit before the instance is known |
//! | `plane.ctl.<endpoint>.<instance>` | that instance | stop / kill / credit |
//! | `plane.all.<endpoint>` | every instance | broadcast calls |
//!
//! Replies go to the caller's inbox (the NATS reply subject), one NATS
//! message per frame, with the frame kind in the `plane-frame` header.
//!
//! A broadcast is published once on `plane.all.<endpoint>` as a streamed
//! call, so every instance that takes it says so (`accepted`) before it
//! answers; all answers share one inbox and each frame names its instance
//! (`plane-instance`). The broker cannot say how many instances there are, so
//! the broadcast runs to its deadline, when the instances that took it and
//! stayed silent are reported.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, HeaderMap, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use plane_core::request::flow::{Credit, Grants, IdleTimer};
use plane_core::request::{
    Answer, Call, Cancel, Dispatcher, Frame, GatherTransport, Incoming, InstanceId, Reach,
    ReplySink, ReplyTransport, RequestBackend, RequestCapabilities, RequestId, Route,
    ServeTransport,
};
use plane_core::{Error, ErrorKind, Message, Result};
use tokio::sync::watch;

use crate::inbox::{self, Inbox, Next};
use crate::mapping::{
    self, CREDIT, CTL, ERROR_CODE, ERROR_KIND, ERROR_MESSAGE, FRAME, ID, INSTANCE, STREAM,
};

/// Frames a streaming handler may send ahead of the caller's reads.
///
/// The caller grants credit for half a window at a time as it reads, so a
/// stalled reader stalls the handler's `send` instead of growing a buffer.
pub const STREAM_WINDOW: u32 = 64;

/// Replies buffered per call in the inbox: the credit window, plus room for
/// the prologue, heartbeats and the final frame.
const CALL_BUFFER: usize = STREAM_WINDOW as usize * 2 + 16;

/// Replies buffered for one broadcast: each instance sends its prologue, its
/// answer, and a heartbeat per interval while it works, so the instances
/// this admits depend on the deadline (`docs/nats.md`); past it, those still
/// waiting are reported `Overloaded`.
const BROADCAST_BUFFER: usize = 4096;

/// Bytes of a request or reply's budget kept back for the headers plane adds
/// on NATS (`plane-id`, `plane-frame`, …) and the NATS header framing. The
/// declared `max_payload` is the server's limit minus this.
pub const HEADER_RESERVE: usize = 1024;

mod frame {
    pub const ACCEPTED: &str = "accepted";
    pub const DATA: &str = "data";
    pub const LAST: &str = "last";
    pub const END: &str = "end";
    pub const ERROR: &str = "error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const ABORT: &str = "abort";
    pub const STOP: &str = "stop";
    pub const KILL: &str = "kill";
    pub const CREDIT: &str = "credit";
}

struct Subjects {
    prefix: String,
}

impl Subjects {
    fn call(&self, endpoint: &str) -> String {
        format!("{}.req.{endpoint}", self.prefix)
    }
    fn direct(&self, endpoint: &str, instance: InstanceId) -> String {
        format!("{}.req.{endpoint}.{instance}", self.prefix)
    }
    fn group(&self, endpoint: &str) -> String {
        format!("{}.{endpoint}", self.prefix)
    }
    fn ctl(&self, endpoint: &str) -> String {
        format!("{}.ctl.{endpoint}", self.prefix)
    }
    fn ctl_direct(&self, endpoint: &str, instance: InstanceId) -> String {
        format!("{}.ctl.{endpoint}.{instance}", self.prefix)
    }
    fn all(&self, endpoint: &str) -> String {
        format!("{}.all.{endpoint}", self.prefix)
    }
}

/// The request plane over core NATS.
pub struct NatsRequests {
    client: Client,
    inbox: Inbox,
    subjects: Arc<Subjects>,
    heartbeat: Duration,
    caps: RequestCapabilities,
    /// Set when the connection ran out of reconnect attempts.
    gave_up: crate::GaveUp,
}

impl NatsRequests {
    /// The request plane on `client`, naming subjects under `prefix`, with
    /// streaming handlers sending a heartbeat every `heartbeat`.
    pub fn new(client: Client, prefix: &str, heartbeat: Duration) -> Self {
        let mut caps = RequestCapabilities::default();
        caps.streaming = true;
        caps.cancellation = true;
        // Both map onto the queue group: the broker spreads calls over the
        // instances (its choice is randomised, not a strict rotation).
        caps.round_robin = true;
        caps.random = true;
        caps.power_of_two = false;
        caps.direct = true;
        caps.broadcast = true;
        caps.max_payload = crate::max_payload(&client);
        NatsRequests {
            inbox: Inbox::new(client.clone(), CALL_BUFFER),
            client,
            subjects: Arc::new(Subjects {
                prefix: prefix.to_owned(),
            }),
            heartbeat,
            caps,
            gave_up: crate::GaveUp::default(),
        }
    }

    /// Report `Down` once the connection behind `gave_up` stopped
    /// reconnecting.
    pub(crate) fn reporting(mut self, gave_up: crate::GaveUp) -> Self {
        self.gave_up = gave_up;
        self
    }
}

impl RequestBackend for NatsRequests {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &RequestCapabilities {
        &self.caps
    }

    fn connection_state(&self) -> plane_core::health::ConnectionState {
        crate::state(&self.client, &self.gave_up)
    }

    async fn call(&self, call: Call) -> Result<Box<dyn ReplyTransport>> {
        let subject = match call.route {
            Route::Instance(i) => self.subjects.direct(&call.endpoint, i),
            Route::RoundRobin | Route::Random => self.subjects.call(&call.endpoint),
            Route::PowerOfTwo => return Err(Error::unsupported("power_of_two")),
        };
        let (inbox, replies) = self.inbox.open().await?;
        let id = call.id.to_string();
        let mut extra = vec![(ID, id.as_str())];
        if call.stream {
            extra.push((STREAM, "1"));
        }
        let (headers, payload) = mapping::encode(&call.message, &extra);
        self.client
            .publish_with_reply_and_headers(subject, inbox, headers, payload)
            .await
            .map_err(crate::error::publish)?;
        Ok(Box::new(CallTransport {
            client: self.client.clone(),
            replies,
            id,
            ctl: self.subjects.ctl(&call.endpoint),
            idle: IdleTimer::new(self.heartbeat * 3),
            grants: Grants::new(STREAM_WINDOW),
        }))
    }

    async fn broadcast(&self, call: &Call) -> Result<Reach> {
        let (inbox, mut replies) = self.inbox.open_sized(BROADCAST_BUFFER).await?;
        let id = call.id.to_string();
        // Streamed, so that every instance taking the call says so at once.
        let (headers, payload) =
            mapping::encode(&call.message, &[(ID, id.as_str()), (STREAM, "1")]);
        self.client
            .publish_with_reply_and_headers(
                self.subjects.all(&call.endpoint),
                inbox,
                headers,
                payload,
            )
            .await
            .map_err(crate::error::publish)?;
        // The broker answers at once when nobody subscribes; otherwise the
        // first frame is the quickest instance's prologue.
        let first = std::future::poll_fn(|cx| replies.poll_next(cx)).await;
        if let Next::Message(msg) = &first {
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    "no instance serves the endpoint",
                ));
            }
        }
        let mut gather = Gather {
            client: self.client.clone(),
            replies,
            id,
            waiting: HashMap::new(),
            answered: HashSet::new(),
            ready: VecDeque::new(),
            ended: false,
        };
        gather.take(first);
        Ok(Reach::Gathered(Box::new(gather)))
    }

    async fn serve(&self, dispatcher: Dispatcher) -> Result<Box<dyn ServeTransport>> {
        let endpoint = &dispatcher.endpoint().to_owned();
        let instance = dispatcher.instance();
        let s = &self.subjects;
        let sub_err = crate::error::subscribe;
        let calls = self
            .client
            .queue_subscribe(s.call(endpoint), s.group(endpoint))
            .await
            .map_err(sub_err)?;
        let direct = self
            .client
            .subscribe(s.direct(endpoint, instance))
            .await
            .map_err(sub_err)?;
        let ctl = self
            .client
            .subscribe(s.ctl(endpoint))
            .await
            .map_err(sub_err)?;
        let ctl_direct = self
            .client
            .subscribe(s.ctl_direct(endpoint, instance))
            .await
            .map_err(sub_err)?;
        let all = self
            .client
            .subscribe(s.all(endpoint))
            .await
            .map_err(sub_err)?;
        // Callers on other connections must find the instance as soon as
        // `serve` returns: wait until the server has the subscriptions.
        crate::sync(&self.client).await?;
        let (close_tx, close_rx) = watch::channel(false);
        let server = ServeLoop {
            client: self.client.clone(),
            dispatcher,
            ctl_subject: s.ctl_direct(endpoint, instance),
            instance: instance.to_string(),
            heartbeat: self.heartbeat,
            calls: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(server.run(
            calls,
            direct,
            all,
            futures_util::stream::select(ctl, ctl_direct),
            close_rx,
        ));
        Ok(Box::new(NatsServeTransport { close: close_tx }))
    }
}

struct NatsServeTransport {
    close: watch::Sender<bool>,
}

impl ServeTransport for NatsServeTransport {
    fn close(&self) {
        self.close.send_replace(true);
    }
}

/// A plane caller's call in progress at this instance.
struct Live {
    sink: Weak<NatsSink>,
    /// The stream's flow-control window, for streamed calls.
    credits: Option<Arc<Credit>>,
}

/// The plane callers' calls in progress, by id: who gets heartbeats, and
/// where credit goes.
type Calls = Arc<Mutex<HashMap<RequestId, Live>>>;

struct ServeLoop {
    client: Client,
    dispatcher: Dispatcher,
    ctl_subject: String,
    /// This instance's id, named in every frame of a broadcast's answer.
    instance: String,
    heartbeat: Duration,
    calls: Calls,
}

impl ServeLoop {
    async fn run(
        self,
        mut calls: Subscriber,
        mut direct: Subscriber,
        mut all: Subscriber,
        mut ctl: impl Stream<Item = async_nats::Message> + Unpin,
        mut close: watch::Receiver<bool>,
    ) {
        let (mut calls_open, mut direct_open, mut all_open) = (true, true, true);
        let mut draining = false;
        // One ticker for every call, rather than a timer task per call: a
        // unary call usually ends long before its first heartbeat is due.
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => self.heartbeats(),
                msg = calls.next(), if calls_open => match msg {
                    Some(msg) => self.on_call(msg, false),
                    None => calls_open = false,
                },
                msg = direct.next(), if direct_open => match msg {
                    Some(msg) => self.on_call(msg, false),
                    None => direct_open = false,
                },
                msg = all.next(), if all_open => match msg {
                    Some(msg) => self.on_call(msg, true),
                    None => all_open = false,
                },
                msg = ctl.next() => match msg {
                    Some(msg) => self.on_control(&msg),
                    None => return,
                },
                // The only change ever sent is to `true`; an error means the
                // transport was dropped. Both mean closed.
                _ = close.changed(), if !draining => {
                    // Closed, or the transport dropped. Drain rather than
                    // unsubscribe: the server stops routing here, and calls
                    // already on their way are still delivered (and refused
                    // as draining by the dispatcher) instead of vanishing.
                    draining = true;
                    let _ = calls.drain().await;
                    let _ = direct.drain().await;
                    let _ = all.drain().await;
                }
                // Control subscriptions live on while calls are in flight,
                // so a caller can still stop or kill them during a drain.
                _ = self.dispatcher.wait_idle(Duration::from_secs(3600)),
                    if draining && !calls_open && !direct_open && !all_open => return,
            }
        }
    }

    /// Take one call; a `broadcast` one names this instance in each frame.
    fn on_call(&self, msg: async_nats::Message, broadcast: bool) {
        let Some(reply) = msg.reply.clone() else {
            // A publish without a reply subject cannot be answered.
            tracing::debug!(subject = %msg.subject, "ignoring call without reply subject");
            return;
        };
        let headers = msg.headers.as_ref();
        let plane_caller = mapping::get(headers, ID).is_some();
        let parsed = parse_call(&msg);
        let credits = (plane_caller && matches!(parsed, Ok((_, true))))
            .then(|| Arc::new(Credit::new(STREAM_WINDOW)));
        let id = parsed
            .as_ref()
            .map(|(i, _)| i.id)
            .unwrap_or_else(|_| RequestId::new_v7());
        let sink = Arc::new(NatsSink {
            client: self.client.clone(),
            reply,
            id,
            ctl: self.ctl_subject.clone(),
            credits: credits.clone(),
            registry: Arc::downgrade(&self.calls),
            done: AtomicBool::new(false),
            plane_caller,
            instance: broadcast.then(|| self.instance.clone()),
        });
        // A call refused before dispatch is answered at once and never
        // heartbeated (a heartbeat must not overtake its refusal).
        if plane_caller && parsed.is_ok() {
            lock(&self.calls).insert(
                id,
                Live {
                    sink: Arc::downgrade(&sink),
                    credits,
                },
            );
        }
        match parsed {
            Ok((incoming, _)) => self.dispatcher.dispatch(incoming, sink),
            Err(e) => {
                tokio::spawn(async move {
                    let _ = sink.send_error(e).await;
                });
            }
        }
    }

    fn on_control(&self, msg: &async_nats::Message) {
        let headers = msg.headers.as_ref();
        let Some(id) = mapping::get(headers, ID).and_then(|s| s.parse::<RequestId>().ok()) else {
            return;
        };
        match mapping::get(headers, FRAME) {
            Some(frame::STOP) => self.dispatcher.stop(id),
            Some(frame::KILL) => self.dispatcher.kill(id),
            Some(frame::CREDIT) => {
                if let Some(credit) = lock(&self.calls).get(&id).and_then(|l| l.credits.as_ref()) {
                    credit.grant_header(mapping::get(headers, CREDIT));
                }
            }
            _ => {}
        }
    }

    /// Tell every plane caller whose call is still open that it is alive.
    fn heartbeats(&self) {
        let sinks: Vec<Arc<NatsSink>> = lock(&self.calls)
            .values()
            .filter_map(|l| l.sink.upgrade())
            .filter(|s| !s.done.load(Ordering::Acquire))
            .collect();
        if sinks.is_empty() {
            return;
        }
        // Publishing waits for the connection's buffer; the loop must not.
        tokio::spawn(async move {
            let empty = Message::default();
            for sink in sinks {
                if sink.publish(frame::HEARTBEAT, &empty, &[]).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The call in a NATS message, and whether the caller expects a stream.
pub(crate) fn parse_call(msg: &async_nats::Message) -> Result<(Incoming, bool)> {
    let headers = msg.headers.as_ref();
    let id = match mapping::get(headers, ID) {
        None => RequestId::new_v7(),
        Some(s) => s
            .parse::<RequestId>()
            .map_err(|_| Error::new(ErrorKind::Decode, format!("malformed {ID} header")))?,
    };
    let stream = match mapping::get(headers, STREAM) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("malformed {STREAM} header"),
            ))
        }
    };
    let message = mapping::decode(headers, msg.payload.clone(), &[ID, STREAM])?;
    Ok((
        Incoming {
            id,
            message,
            stream,
        },
        stream,
    ))
}

/// The replies of one call, to the caller's inbox.
struct NatsSink {
    client: Client,
    reply: Subject,
    id: RequestId,
    ctl: String,
    credits: Option<Arc<Credit>>,
    registry: Weak<Mutex<HashMap<RequestId, Live>>>,
    /// A terminal frame was sent.
    done: AtomicBool,
    /// The caller speaks plane (sent a `plane-id`): it gets heartbeats, and
    /// an `abort` frame if the handler dies without an end marker.
    plane_caller: bool,
    /// For a broadcast: this instance's id, since every instance's frames
    /// share the caller's one reply subject.
    instance: Option<String>,
}

impl NatsSink {
    async fn publish(&self, kind: &str, message: &Message, extra: &[(&str, &str)]) -> Result<()> {
        let (mut headers, payload) = mapping::encode(message, extra);
        headers.insert(FRAME, kind);
        if let Some(instance) = &self.instance {
            headers.insert(INSTANCE, instance.as_str());
        }
        // Only a call still open can be stopped, killed or given credit:
        // a frame that ends it has no use for the control subject.
        if !matches!(kind, frame::LAST | frame::END | frame::ERROR) {
            headers.insert(CTL, self.ctl.as_str());
        }
        self.client
            .publish_with_headers(self.reply.clone(), headers, payload)
            .await
            .map_err(crate::error::publish)
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).remove(&self.id);
        }
    }
}

impl ReplySink for NatsSink {
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let empty = Message::default();
            match frame {
                Frame::Accepted => self.publish(frame::ACCEPTED, &empty, &[]).await,
                Frame::Data(m) => {
                    if let Some(credits) = &self.credits {
                        credits.take().await?;
                    }
                    self.publish(frame::DATA, &m, &[]).await
                }
                Frame::Last(m) => {
                    self.finish();
                    self.publish(frame::LAST, &m, &[]).await
                }
                Frame::End => {
                    self.finish();
                    self.publish(frame::END, &empty, &[]).await
                }
            }
        })
    }

    fn send_error(&self, error: Error) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.finish();
            let code = error.kind().code().to_string();
            let text = mapping::header_safe(error.message());
            // The message is also the body, for plain NATS callers.
            let body = Message::from(Bytes::from(text.clone().into_bytes()));
            self.publish(
                frame::ERROR,
                &body,
                &[
                    (ERROR_CODE, code.as_str()),
                    (ERROR_KIND, error.kind().as_str()),
                    (ERROR_MESSAGE, text.as_str()),
                ],
            )
            .await
        })
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) || !self.plane_caller {
            return;
        }
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).remove(&self.id);
        }
        // The handler was killed or the instance stopped before the end
        // marker: say so now instead of letting the caller wait for the
        // heartbeat to go quiet.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let reply = self.reply.clone();
        let mut headers = HeaderMap::new();
        headers.insert(FRAME, frame::ABORT);
        if let Some(instance) = &self.instance {
            headers.insert(INSTANCE, instance.as_str());
        }
        rt.spawn(async move {
            let _ = client
                .publish_with_headers(reply, headers, Bytes::new())
                .await;
        });
    }
}

/// The caller's side of one call: its route in the shared inbox.
struct CallTransport {
    client: Client,
    replies: inbox::Replies,
    id: String,
    /// Where stop, kill and credit go: the endpoint's control subject until
    /// a reply names the serving instance's.
    ctl: String,
    /// Heard from once the server proved to be a plane server (it sends
    /// heartbeats); a plain NATS responder is never timed out for silence.
    idle: IdleTimer,
    grants: Grants,
}

impl CallTransport {
    fn control(&self, kind: &'static str, credit: Option<u32>) {
        send_control(&self.client, self.ctl.clone(), &self.id, kind, credit);
    }
}

impl ReplyTransport for CallTransport {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        loop {
            let msg = match self.replies.poll_next(cx) {
                Poll::Ready(Next::Message(msg)) => msg,
                Poll::Ready(Next::Closed) => return Poll::Ready(None),
                Poll::Ready(Next::Overflow) => {
                    return Poll::Ready(Some(Err(Error::new(
                        ErrorKind::Overloaded,
                        "the serving instance sent more replies than flow control allows",
                    ))))
                }
                Poll::Pending => return self.idle.poll_expired(cx).map(|e| Some(Err(e))),
            };
            if msg.status == Some(StatusCode::NO_RESPONDERS) {
                return Poll::Ready(Some(Err(Error::new(
                    ErrorKind::NoResponders,
                    "no instance serves the endpoint",
                ))));
            }
            let headers = msg.headers.as_ref();
            let Some(kind) = mapping::get(headers, FRAME).map(str::to_owned) else {
                // A plain NATS responder: its one reply is the final reply.
                return Poll::Ready(Some(
                    mapping::decode(headers, msg.payload, &[]).map(Frame::Last),
                ));
            };
            self.idle.heard();
            if let Some(ctl) = mapping::get(headers, CTL) {
                if ctl != self.ctl {
                    self.ctl = ctl.to_owned();
                }
            }
            let strip = [FRAME, CTL];
            let frame = match kind.as_str() {
                frame::HEARTBEAT => continue,
                frame::ACCEPTED => Ok(Frame::Accepted),
                frame::DATA => {
                    if let Some(n) = self.grants.data_read() {
                        self.control(frame::CREDIT, Some(n));
                    }
                    mapping::decode(headers, msg.payload, &strip).map(Frame::Data)
                }
                frame::LAST => mapping::decode(headers, msg.payload, &strip).map(Frame::Last),
                frame::END => Ok(Frame::End),
                frame::ERROR => Err(typed_error(headers)),
                frame::ABORT => Err(Error::new(
                    ErrorKind::Disconnected,
                    "the serving instance stopped before the end of the reply stream",
                )),
                other => Err(Error::new(
                    ErrorKind::Decode,
                    format!("unknown plane-frame `{}`", mapping::header_safe(other)),
                )),
            };
            return Poll::Ready(Some(frame));
        }
    }

    fn cancel(&mut self, how: Cancel) {
        self.control(
            match how {
                Cancel::Stop => frame::STOP,
                Cancel::Kill => frame::KILL,
            },
            None,
        );
    }
}

/// Send a stop, kill or credit frame for call `id` to `subject`, from a
/// context that cannot wait (a poll, a `Drop`).
fn send_control(
    client: &Client,
    subject: String,
    id: &str,
    kind: &'static str,
    credit: Option<u32>,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(FRAME, kind);
    headers.insert(ID, id);
    if let Some(n) = credit {
        headers.insert(CREDIT, n.to_string());
    }
    let client = client.clone();
    rt.spawn(async move {
        let _ = client
            .publish_with_headers(subject, headers, Bytes::new())
            .await;
    });
}

/// The caller's side of a broadcast: every instance's frames on one inbox.
struct Gather {
    client: Client,
    replies: inbox::Replies,
    id: String,
    /// Instances that took the call and have not answered, with the
    /// control subject that reaches each.
    waiting: HashMap<InstanceId, String>,
    answered: HashSet<InstanceId>,
    /// Answers decided but not yet handed out (a cut-off inbox reports every
    /// waiting instance at once).
    ready: VecDeque<Answer>,
    /// The inbox is gone: nothing more will arrive.
    ended: bool,
}

impl Gather {
    /// Account for one inbox event, queueing the answer it completes.
    fn take(&mut self, next: Next) {
        let msg = match next {
            Next::Message(msg) => msg,
            Next::Overflow => {
                return self.cut_off(
                    ErrorKind::Overloaded,
                    "the broadcast's reply buffer overflowed",
                )
            }
            Next::Closed => {
                return self.cut_off(
                    ErrorKind::Disconnected,
                    "the connection closed before the instance answered",
                )
            }
        };
        let headers = msg.headers.as_ref();
        // Frames without an instance are not a plane instance's answer (a
        // plain NATS subscriber replying, or the broker's status).
        let Some(instance) =
            mapping::get(headers, INSTANCE).and_then(|i| i.parse::<InstanceId>().ok())
        else {
            return;
        };
        if self.answered.contains(&instance) {
            return;
        }
        let reply = match mapping::get(headers, FRAME) {
            Some(frame::ACCEPTED) => {
                let ctl = mapping::get(headers, CTL).unwrap_or_default().to_owned();
                self.waiting.insert(instance, ctl);
                return;
            }
            Some(frame::DATA) | Some(frame::LAST) => {
                mapping::decode(headers, msg.payload, &[FRAME, CTL, INSTANCE])
            }
            Some(frame::ERROR) => Err(typed_error(headers)),
            Some(frame::ABORT) => Err(Error::new(
                ErrorKind::Disconnected,
                "the instance stopped before it answered",
            )),
            Some(frame::END) => Err(Error::new(
                ErrorKind::Other,
                "the instance ended the call without a reply",
            )),
            _ => return, // heartbeats, and frames of kinds this version does not know
        };
        // A handler that streams answers with its first reply; the rest of
        // its stream is not wanted.
        let still_running = mapping::get(headers, FRAME) == Some(frame::DATA);
        if let Some(ctl) = self.waiting.remove(&instance) {
            if still_running && !ctl.is_empty() {
                send_control(&self.client, ctl, &self.id, frame::KILL, None);
            }
        }
        self.answered.insert(instance);
        self.ready.push_back(Answer { instance, reply });
    }

    /// Nothing more will arrive: report every waiting instance with `kind`.
    fn cut_off(&mut self, kind: ErrorKind, why: &'static str) {
        self.ended = true;
        for (instance, _) in self.waiting.drain() {
            self.answered.insert(instance);
            self.ready.push_back(Answer {
                instance,
                reply: Err(Error::new(kind, why)),
            });
        }
    }
}

impl GatherTransport for Gather {
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        loop {
            if let Some(answer) = self.ready.pop_front() {
                return Poll::Ready(Some(answer));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            // Without a count of instances only the deadline ends the wait.
            match self.replies.poll_next(cx) {
                Poll::Ready(next) => self.take(next),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn unanswered(&self) -> Vec<InstanceId> {
        self.waiting.keys().copied().collect()
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        // Whoever is still working on the call is not waited for any more.
        for (_, ctl) in self.waiting.drain() {
            if !ctl.is_empty() {
                send_control(&self.client, ctl, &self.id, frame::KILL, None);
            }
        }
    }
}

pub(crate) fn typed_error(headers: Option<&HeaderMap>) -> Error {
    let kind = mapping::get(headers, ERROR_CODE)
        .and_then(|c| c.parse::<u16>().ok())
        .map(ErrorKind::from_code)
        .unwrap_or(ErrorKind::Other);
    let message = mapping::get(headers, ERROR_MESSAGE)
        .unwrap_or("")
        .to_owned();
    Error::new(kind, message)
}

/// Publish `garbage` as a call to `endpoint` with a malformed plane header,
/// as a misbehaving peer would, and wait (bounded) for the refusal. A test
/// hook (feature `testkit`).
#[cfg(feature = "testkit")]
pub async fn send_garbage(
    client: &Client,
    prefix: &str,
    endpoint: &str,
    garbage: &[u8],
) -> Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(ID, "not-a-request-id");
    let subject = format!("{prefix}.req.{endpoint}");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request_with_headers(subject, headers, Bytes::copy_from_slice(garbage)),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::Timeout, "no answer to garbage"))?
    .map_err(|e| Error::new(ErrorKind::Other, "garbage request failed").with_source(e))?;
    match mapping::get(reply.headers.as_ref(), FRAME) {
        Some(frame::ERROR) => Ok(()),
        other => Err(Error::new(
            ErrorKind::Other,
            format!("garbage was answered with frame {other:?} instead of an error"),
        )),
    }
}
