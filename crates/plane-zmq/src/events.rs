//! The ZeroMQ events plane: at-most-once PUB/SUB between peers.
//!
//! # Topology
//!
//! Every events handle binds one XPUB socket and registers it in
//! [discovery](plane_core::discovery) as an instance of the reserved endpoint
//! [`EVENTS_ENDPOINT`] (`plane-events`). Each subscription has its own SUB
//! socket: it subscribes to the literal prefix of its pattern
//! ([`subject::literal_prefix`]) so publishers filter what they send, matches
//! exactly with [`subject::matches`] in the library, connects to every
//! publisher listed in discovery, and follows the discovery watch to connect
//! to publishers that appear and disconnect from ones that leave.
//!
//! # Messages
//!
//! An event is one multipart message: a topic as the first part (what
//! ZeroMQ filters on), then the wire envelope in the multipart form
//! ([`event_envelope`]: origin in the `plane-publisher` and `plane-seq`
//! headers). The first byte of a topic says what it is; none of them can
//! start (or occur in) a UTF-8 subject, and they sort in this order:
//!
//! | topic | what |
//! |---|---|
//! | `\xfd` + subject | an event for the subscriptions outside groups; they subscribe to `\xfd` + the literal prefix of their pattern |
//! | `\xfe<token>.<group>.<pattern>` | an event for one worker-group member: the topic the member subscribed to, `<token>` its 32 random hex digits |
//! | `\xffplane-hello.<token>` | a publisher's answer to a joining subscription (below), then the publisher's instance id as a second part |
//!
//! The `\xfd` marker keeps the other topics out of ordinary subscriptions:
//! a pattern such as `>` has an empty literal prefix, and without a marker
//! its subscription would match every member's topic too.
//!
//! # Joining
//!
//! PUB/SUB forgets what is published before a subscription reaches the
//! publisher ("slow joiner"). So `subscribe` returns only once every
//! publisher known at that moment confirmed the subscription: the SUB socket
//! also subscribes to a unique hello topic, `\xffplane-hello.<token>`, which
//! libzmq sends after the event or member topic (a SUB socket sends its
//! subscriptions to a new connection in lexicographic order, and `\xff`
//! sorts last); the publisher's XPUB sees it and answers on that topic. A
//! publisher that does not answer within [`ZmqConfig::connect_timeout`] (a
//! stale record, say) is not waited for any longer; its events reach the
//! subscription once it connects.
//!
//! # Overload
//!
//! The subscription's reader task drains its socket into a bounded buffer of
//! the subscription's capacity and byte bound (`SubscribeOptions::capacity`
//! and `max_bytes`) and never waits; when the buffer is full the
//! event is dropped and counted, and the subscriber reads one `Overloaded`
//! item at the gap. The sockets' own queues are counted in events only
//! ([`ZmqConfig::events_hwm`]; libzmq has no byte bound). A publisher never waits for subscribers. Events are also
//! lost, without that report, if a subscribing *process* stops reading its
//! sockets altogether until the publisher's high-water mark
//! ([`ZmqConfig::events_hwm`]) fills: ZeroMQ drops without telling anyone,
//! and subscribers see that only as a gap in the publisher's sequence.
//!
//! # Worker groups
//!
//! Every event starts at exactly one publisher, and every subscription —
//! group member or not — connects to every publisher in discovery, so each
//! publisher can know every member of every group and send each event to one
//! of them. A member's SUB socket subscribes to its own member topic (and its
//! hello topic) only, never to the `\xfd` event topics. The XPUB is verbose:
//! the publisher reads each `\x01` + member topic subscription, and the
//! `\x00` + member topic unsubscription libzmq passes up when the member's
//! socket unsubscribes, closes or disconnects (its topic is unique, so its
//! last subscriber is gone). A group is (group name, pattern), as on the
//! in-memory backend; for each event the publisher sends the plain event
//! topic once (for subscriptions outside groups) and, per group whose pattern
//! matches, one copy with the member topic of the member whose turn it is
//! (round-robin, in the order they subscribed at this publisher; see
//! [`Groups`]). Since the member topic is sent before the hello topic, a
//! member's `subscribe` returns only once every known publisher counts it in.
//!
//! libzmq does not tell the sender that one subscriber's queue is full (the
//! XPUB is lossy), so a full member cannot be passed over for the next one:
//! the event is lost for the group as described under Overload. Events the
//! publisher sent to a member before it heard of its departure are lost with
//! that member, at most once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use plane_core::discovery::{Discovery, DiscoveryEvent, DiscoveryWatch, Instance, Registration};
use plane_core::events::buffer::EventBuffer;
use plane_core::events::groups::{Groups, Offered};
use plane_core::events::{
    Event, EventsBackend, EventsCapabilities, SubscribeOptions, SubscriptionTransport,
};
use plane_core::request::InstanceId;
use plane_core::subject;
use plane_core::wire::{self, Limits};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::events::{decode_event, event_envelope, AbortOnDrop, BufferedSubscription};
use plane_zmq_sys as zmq;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::zmq_error;
use crate::request::{advertised, socket};
use crate::socket::AsyncSocket;
use crate::ZmqConfig;

/// The discovery endpoint under which publishers register their XPUB socket.
pub const EVENTS_ENDPOINT: &str = "plane-events";
/// First byte of an event topic for subscriptions outside groups.
const EVENT: u8 = 0xfd;
/// First byte of a worker-group member's topic.
const MEMBER: u8 = 0xfe;
/// First bytes of a hello topic; `\xff` sorts after every other topic.
const HELLO: &[u8] = b"\xffplane-hello.";
/// Events waiting for the publisher task.
const PUBLISH_QUEUE: usize = 1024;

/// The ZeroMQ events plane. Build it with [`ZmqEvents::connect`] (or through
/// the registry with a `zmq+tcp://` URL) and wrap it in
/// [`plane_core::Events`].
#[derive(Clone)]
pub struct ZmqEvents {
    node: Arc<Node>,
}

impl std::fmt::Debug for ZmqEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqEvents")
            .field("address", &self.node.address)
            .finish()
    }
}

struct Node {
    config: ZmqConfig,
    context: zmq::Context,
    discovery: Discovery,
    address: String,
    publish: mpsc::Sender<Outgoing>,
    /// Kept so the record is renewed; dropped (and so expiring) with the node.
    registration: Mutex<Option<Registration>>,
    task: tokio::task::JoinHandle<()>,
    limits: Limits,
    capabilities: EventsCapabilities,
    /// The allow-list's ZAP handler, if CURVE has one.
    _zap: Option<crate::curve::Zap>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
        plane_peer::events::deregister_publisher(
            self.registration
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

fn events_hwm(s: &zmq::Socket, config: &ZmqConfig) -> Result<()> {
    let set = |r: zmq::Result<()>| r.map_err(|e| zmq_error("cannot set a zmq socket option", e));
    set(s.set_sndhwm(config.events_hwm))?;
    set(s.set_rcvhwm(config.events_hwm))
}

/// The address the XPUB binds when the configuration names none: the
/// ROUTER's host on a free port, or the ROUTER's socket path plus `.events`.
fn default_events_bind(bind: &str) -> String {
    match bind.strip_prefix("tcp://").and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) => format!("tcp://{host}:0"),
        None => format!("{bind}.events"),
    }
}

impl ZmqEvents {
    /// Bind the XPUB as `config` says and register it in `discovery`.
    ///
    /// # Errors
    /// `Connection` when the address cannot be bound; discovery errors.
    pub async fn connect(config: ZmqConfig, discovery: Discovery) -> Result<Self> {
        config.validate()?;
        let context = zmq::Context::new();
        // Before the XPUB binds, so no handshake goes unchecked.
        let zap = crate::curve::start_zap(&context, config.curve.as_ref())?;
        let s = socket(&context, zmq::XPUB, &config)?;
        s.set_xpub_verbose(true)
            .map_err(|e| zmq_error("cannot set a zmq socket option", e))?;
        events_hwm(&s, &config)?;
        let bind = config
            .events_bind
            .clone()
            .unwrap_or_else(|| default_events_bind(&config.bind));
        s.bind(&bind)
            .map_err(|e| zmq_error(&format!("cannot bind {bind}"), e))?;
        let bound = match s.get_last_endpoint() {
            Ok(a) => a,
            Err(_) => bind,
        };
        let address = advertised(&bound, config.events_advertise.as_deref());
        let id = InstanceId::random();
        let s = AsyncSocket::new(&context, s)?;
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let task = tokio::spawn(publisher_loop(s, rx, id));
        let limits = Limits::default().with_max_envelope_bytes(
            config
                .max_payload
                .saturating_add(wire::MAX_HEADER_BYTES)
                .min(u32::MAX as usize),
        );
        let mut capabilities = EventsCapabilities::default();
        capabilities.wildcards = true;
        // Each publisher picks one member per group (see the module docs).
        capabilities.groups = true;
        // One socket, fed in publish order, one connection per subscriber.
        capabilities.ordered_per_publisher = true;
        capabilities.max_payload = config.max_payload;
        let node = Arc::new(Node {
            config,
            context,
            discovery: discovery.clone(),
            address: address.clone(),
            publish: tx,
            registration: Mutex::new(None),
            task,
            limits,
            capabilities,
            _zap: zap,
        });
        let registration = discovery
            .register(Instance::new(EVENTS_ENDPOINT, id, address))
            .await?;
        *node.registration.lock().unwrap_or_else(|p| p.into_inner()) = Some(registration);
        Ok(ZmqEvents { node })
    }

    /// The address the XPUB publishes from, as registered in discovery.
    pub fn address(&self) -> &str {
        &self.node.address
    }
}

/// An event on its way to the publisher task: its subject and its envelope
/// in the multipart form, without a topic.
struct Outgoing {
    subject: String,
    envelope: Vec<Bytes>,
}

/// The topic of worker-group member `token` (hex digits, no `.`) of `group`
/// subscribing to `pattern`.
fn member_topic(token: &str, group: &str, pattern: &str) -> Bytes {
    let mut t = vec![MEMBER];
    t.extend_from_slice(format!("{token}.{group}.{pattern}").as_bytes());
    Bytes::from(t)
}

/// The group and pattern of a member topic; `None` (logged) for a topic that
/// is not one, or names an invalid group or pattern.
fn parse_member_topic(topic: &[u8]) -> Option<(&str, &str)> {
    let parsed = topic
        .strip_prefix(&[MEMBER])
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.split_once('.'))
        .and_then(|(_token, rest)| rest.split_once('.'))
        .filter(|(group, pattern)| {
            subject::validate_name("group", group).is_ok()
                && subject::validate_pattern(pattern).is_ok()
        });
    if parsed.is_none() {
        tracing::debug!(topic = ?topic, "malformed member subscription ignored");
    }
    parsed
}

/// The worker-group members subscribed at one publisher, as its XPUB
/// reported them. Owned by the publisher task.
#[derive(Default)]
struct Members {
    next: u64,
    /// Member topic → its id, pattern and group.
    known: HashMap<Bytes, (u64, String, String)>,
    /// The member topics by group.
    groups: Groups<Bytes>,
}

impl Members {
    fn join(&mut self, topic: Bytes) {
        if self.known.contains_key(&topic) {
            return;
        }
        let Some((group, pattern)) = parse_member_topic(&topic) else {
            return;
        };
        let (group, pattern) = (group.to_owned(), pattern.to_owned());
        self.next += 1;
        self.groups.join(&pattern, &group, self.next, topic.clone());
        self.known.insert(topic, (self.next, pattern, group));
    }

    fn leave(&mut self, topic: &[u8]) {
        if let Some((id, pattern, group)) = self.known.remove(topic) {
            self.groups.leave(&pattern, &group, id);
        }
    }

    /// Send `out` to the subscriptions outside groups, and to one member of
    /// each matching group.
    fn send(&mut self, socket: &AsyncSocket, out: Outgoing) -> Result<()> {
        let mut topic = Vec::with_capacity(1 + out.subject.len());
        topic.push(EVENT);
        topic.extend_from_slice(out.subject.as_bytes());
        let mut parts = Vec::with_capacity(1 + out.envelope.len());
        parts.push(Bytes::from(topic));
        parts.extend(out.envelope);
        // Without `ZMQ_XPUB_NODROP` a full subscriber pipe drops the message
        // for that subscriber, the send never blocks; so every `Sent` is as
        // good as done.
        socket.try_send(&parts)?;
        let mut failed = None;
        self.groups.deliver(&out.subject, |member, _last_resort| {
            parts[0] = member.clone();
            if let Err(e) = socket.try_send(&parts) {
                failed = Some(e);
            }
            // Whether the member's pipe had room is not known (see the
            // module docs): the member was given its turn.
            Offered::Taken
        });
        failed.map_or(Ok(()), Err)
    }
}

/// Owns the XPUB: sends the events queued by `publish`, answers hello
/// subscriptions and tracks group members. Ends when the node (the only
/// sender) is gone.
async fn publisher_loop(socket: AsyncSocket, mut rx: mpsc::Receiver<Outgoing>, id: InstanceId) {
    let me = Bytes::from(id.to_string());
    let mut members = Members::default();
    loop {
        loop {
            match socket.try_recv() {
                Ok(Some(parts)) => {
                    // `\x01` + topic subscribes; `\x00` + topic unsubscribes.
                    let Some(first) = parts.first() else {
                        continue;
                    };
                    match first.split_first() {
                        Some((1, topic)) if topic.starts_with(HELLO) => {
                            // XPUB never blocks; a lost hello only makes that
                            // subscriber wait its connect timeout.
                            let _ = socket.try_send(&[first.slice(1..), me.clone()]);
                        }
                        Some((1, [MEMBER, ..])) => members.join(first.slice(1..)),
                        Some((0, topic @ [MEMBER, ..])) => members.leave(topic),
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "zmq publisher failed");
                    return;
                }
            }
        }
        tokio::select! {
            _ = socket.changed() => {}
            out = rx.recv() => match out {
                Some(out) => {
                    if let Err(e) = members.send(&socket, out) {
                        tracing::warn!(error = %e, "zmq publisher failed");
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

impl EventsBackend for ZmqEvents {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &EventsCapabilities {
        &self.node.capabilities
    }

    async fn publish(&self, event: Event) -> Result<()> {
        let envelope = wire::encode_parts(&event_envelope(&event, 0));
        let out = Outgoing {
            subject: event.subject,
            envelope,
        };
        self.node
            .publish
            .send(out)
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "the events publisher is closed"))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        let node = &self.node;
        let s = socket(&node.context, zmq::SUB, &node.config)?;
        events_hwm(&s, &node.config)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(token.as_bytes());
        let set = |r: zmq::Result<()>| r.map_err(|e| zmq_error("cannot subscribe", e));
        // A group member subscribes to its own topic only, so that it gets
        // nothing but what a publisher chose it for.
        let member = options
            .group
            .as_deref()
            .map(|g| member_topic(&token, g, &options.pattern));
        match &member {
            Some(topic) => set(s.set_subscribe(topic))?,
            None => {
                let mut prefix = vec![EVENT];
                prefix.extend_from_slice(subject::literal_prefix(&options.pattern).as_bytes());
                set(s.set_subscribe(&prefix))?;
            }
        }
        set(s.set_subscribe(&hello))?;
        // Watched while joining, to say why a publisher stayed silent when a
        // handshake failed (CURVE keys that do not fit).
        let monitor = crate::curve::HandshakeMonitor::new(&node.context, &s)?;
        let socket = AsyncSocket::new(&node.context, s)?;
        // Watch before connecting, so no publisher appearing meanwhile is
        // missed; the watch starts with every current publisher.
        let watch = node.discovery.watch(EVENTS_ENDPOINT).await?;
        let buffer = EventBuffer::for_options(&options);
        let mut sub = Subscriber {
            socket,
            pattern: options.pattern,
            member,
            hello: Bytes::from(hello),
            buffer: buffer.clone(),
            limits: node.limits,
            publishers: HashMap::new(),
            waiting: HashMap::new(),
        };
        for instance in node.discovery.list(EVENTS_ENDPOINT).await? {
            sub.connect(&instance);
        }
        let joined = sub.join(node.config.connect_timeout, &monitor).await;
        // Stopped before the reading end goes (see `HandshakeMonitor`).
        let _ = sub.socket.with(zmq::Socket::monitor_stop);
        drop(monitor);
        joined?;
        let task = tokio::spawn(sub.run(watch));
        Ok(Box::new(BufferedSubscription::new(
            buffer,
            AbortOnDrop(task),
        )))
    }
}

/// One subscription's SUB socket and what it is connected to.
struct Subscriber {
    socket: AsyncSocket,
    pattern: String,
    /// The member topic, for a worker-group member.
    member: Option<Bytes>,
    hello: Bytes,
    buffer: EventBuffer,
    limits: Limits,
    /// Connected publishers by instance id.
    publishers: HashMap<InstanceId, String>,
    /// Publishers that have not confirmed the subscription yet.
    waiting: HashMap<InstanceId, String>,
}

impl Subscriber {
    fn connect(&mut self, instance: &Instance) {
        if self.publishers.get(&instance.id) == Some(&instance.address) {
            return;
        }
        self.disconnect(instance.id);
        match self.socket.with(|s| s.connect(&instance.address)) {
            Ok(()) => {
                self.publishers
                    .insert(instance.id, instance.address.clone());
                self.waiting.insert(instance.id, instance.address.clone());
            }
            Err(e) => {
                tracing::warn!(address = %instance.address, error = %e, "cannot connect to an events publisher");
            }
        }
    }

    fn disconnect(&mut self, id: InstanceId) {
        self.waiting.remove(&id);
        if let Some(address) = self.publishers.remove(&id) {
            // Another record may name the same address (a restarted peer).
            if !self.publishers.values().any(|a| *a == address) {
                let _ = self.socket.with(|s| s.disconnect(&address));
            }
        }
    }

    /// Read every waiting message into the buffer.
    fn drain(&mut self) -> Result<()> {
        while let Some(parts) = self.socket.try_recv()? {
            self.handle(parts);
        }
        Ok(())
    }

    fn handle(&mut self, parts: Vec<Bytes>) {
        let Some((topic, rest)) = parts.split_first() else {
            return;
        };
        if topic.starts_with(HELLO) {
            if *topic == self.hello {
                let id = rest
                    .first()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse::<InstanceId>().ok());
                if let Some(id) = id {
                    self.waiting.remove(&id);
                }
            }
            return;
        }
        // The subject the topic names, checked against the event's below; a
        // member's topic names none, and the member's own is all it takes.
        let named = match &self.member {
            Some(own) if topic == own => None,
            Some(_) => return,
            None => match topic.split_first() {
                Some((&EVENT, subject)) => Some(subject),
                _ => return,
            },
        };
        let decoded = wire::decode_parts_with(rest, &self.limits)
            .map_err(plane_peer::malformed)
            .and_then(decode_event);
        let (event, dropped) = match decoded {
            Ok((Some(event), dropped)) => (event, dropped),
            // zmq publishers send no drop notices today (libzmq drops
            // without telling them); one is counted all the same.
            Ok((None, dropped)) => {
                self.buffer.dropped(dropped);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed event ignored");
                return;
            }
        };
        if named.is_some_and(|s| s != event.subject.as_bytes())
            || !subject::matches(&self.pattern, &event.subject)
        {
            return;
        }
        self.buffer.dropped(dropped);
        self.buffer.offer(event);
    }

    /// Wait until every publisher connected so far confirmed the
    /// subscription, or `timeout` passed.
    async fn join(
        &mut self,
        timeout: std::time::Duration,
        monitor: &crate::curve::HandshakeMonitor,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain()?;
            if self.waiting.is_empty() {
                return Ok(());
            }
            // Keep the monitor's queue short (see `HandshakeMonitor`).
            monitor.drain();
            tokio::select! {
                _ = self.socket.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(e) = monitor.failure() {
                        // Events have no error path: say it in the log.
                        tracing::warn!(error = %e, "events subscription cannot reach a publisher");
                    }
                    tracing::debug!(
                        publishers = ?self.waiting.values().collect::<Vec<_>>(),
                        "events publishers did not confirm a subscription in time"
                    );
                    self.waiting.clear();
                    return Ok(());
                }
            }
        }
    }

    /// Read events and follow discovery until the subscription goes away
    /// (which aborts this task).
    async fn run(mut self, mut watch: DiscoveryWatch) {
        let mut watching = true;
        loop {
            if let Err(e) = self.drain() {
                tracing::warn!(error = %e, "zmq subscriber failed");
                self.buffer.end();
                return;
            }
            tokio::select! {
                _ = self.socket.changed() => {}
                change = watch.next(), if watching => match change {
                    Some(DiscoveryEvent::Added(instance)) => self.connect(&instance),
                    Some(DiscoveryEvent::Removed(id)) => self.disconnect(id),
                    // The watch never ends on its own; if it does, keep the
                    // connections there are.
                    None => watching = false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_topics_round_trip_and_sort_between_events_and_hellos() {
        let t = member_topic("0123abcd", "workers", "a.*.>");
        assert_eq!(parse_member_topic(&t), Some(("workers", "a.*.>")));
        assert_eq!(parse_member_topic(b"\xfe0123.bad group.a"), None);
        assert_eq!(parse_member_topic(b"\xfe0123.g.a..b"), None);
        assert_eq!(parse_member_topic(b"\xfdsubject"), None);
        // Sent in this order to a new connection: event prefix, member
        // topic, then the hello that confirms both.
        assert!([EVENT] < [MEMBER] && [MEMBER] < [HELLO[0]]);
    }

    /// What the group tracking relies on, checked against libzmq itself: a
    /// verbose XPUB reads `\x01` and the topic when a SUB subscribes, and
    /// `\x00` and the topic when the topic's only subscriber unsubscribes or
    /// closes its socket.
    #[test]
    fn xpub_reports_unsubscription_and_closed_subscribers() {
        let ctx = zmq::Context::new();
        let xpub = ctx.socket(zmq::XPUB).unwrap();
        xpub.set_xpub_verbose(true).unwrap();
        xpub.set_rcvtimeo(5000).unwrap();
        xpub.bind("tcp://127.0.0.1:0").unwrap();
        let address = xpub.get_last_endpoint().unwrap();
        let recv = || xpub.recv_bytes(0).expect("a (un)subscription in time");

        let closing = ctx.socket(zmq::SUB).unwrap();
        closing.set_linger(0).unwrap();
        closing.set_subscribe(b"\xfeone").unwrap();
        closing.connect(&address).unwrap();
        assert_eq!(recv(), b"\x01\xfeone");
        drop(closing);
        assert_eq!(recv(), b"\x00\xfeone");

        let leaving = ctx.socket(zmq::SUB).unwrap();
        leaving.set_subscribe(b"\xfetwo").unwrap();
        leaving.connect(&address).unwrap();
        assert_eq!(recv(), b"\x01\xfetwo");
        leaving.set_unsubscribe(b"\xfetwo").unwrap();
        assert_eq!(recv(), b"\x00\xfetwo");
    }
}
