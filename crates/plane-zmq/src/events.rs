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
//! An event is one multipart message: the subject as the first frame (what
//! ZeroMQ filters on), then the wire envelope in the multipart form
//! ([`event_envelope`]: origin in the `plane-publisher` and `plane-seq`
//! headers).
//!
//! # Joining
//!
//! PUB/SUB forgets what is published before a subscription reaches the
//! publisher ("slow joiner"). So `subscribe` returns only once every
//! publisher known at that moment confirmed the subscription: the SUB socket
//! also subscribes to a unique hello topic, `\xffplane-hello.<token>`, which
//! libzmq sends after the subject prefix (subscriptions are sent in
//! lexicographic order, and `\xff` never occurs in UTF-8 subjects); the
//! publisher's XPUB sees it and answers on that topic. A publisher that does
//! not answer within [`ZmqConfig::connect_timeout`] (a stale record, say) is
//! not waited for any longer; its events reach the subscription once it
//! connects.
//!
//! # Overload
//!
//! The subscription's reader task drains its socket into a bounded buffer of
//! the subscription's capacity and never waits; when the buffer is full the
//! event is dropped and counted, and the subscriber reads one `Overloaded`
//! item at the gap. A publisher never waits for subscribers. Events are also
//! lost, without that report, if a subscribing *process* stops reading its
//! sockets altogether until the publisher's high-water mark
//! ([`ZmqConfig::events_hwm`]) fills: ZeroMQ drops without telling anyone,
//! and subscribers see that only as a gap in the publisher's sequence.
//!
//! Worker groups are not offered: ZeroMQ has no way to send an event to one
//! member of a group, and electing one on the subscribers' side would depend
//! on every member seeing the same membership at the same moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use plane_core::discovery::{Discovery, DiscoveryEvent, DiscoveryWatch, Instance, Registration};
use plane_core::events::{
    ConsumerConfig, DeliveryTransport, Event, EventsBackend, EventsCapabilities, PublishAck,
    StreamConfig, SubscribeOptions, SubscriptionTransport,
};
use plane_core::peer::events::{decode_event, event_envelope, BufferedSubscription, EventBuffer};
use plane_core::request::InstanceId;
use plane_core::subject;
use plane_core::wire::{self, Limits};
use plane_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::request::{advertised, socket};
use crate::socket::{zmq_error, AsyncSocket, Sent};
use crate::ZmqConfig;

/// The discovery endpoint under which publishers register their XPUB socket.
pub const EVENTS_ENDPOINT: &str = "plane-events";
/// First bytes of a hello topic; `\xff` sorts after every UTF-8 subject.
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
    publish: mpsc::Sender<Vec<Bytes>>,
    /// Kept so the record is renewed; dropped (and so expiring) with the node.
    registration: Mutex<Option<Registration>>,
    task: tokio::task::JoinHandle<()>,
    limits: Limits,
    capabilities: EventsCapabilities,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
        let registration = self
            .registration
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (Some(r), Ok(rt)) = (registration, tokio::runtime::Handle::try_current()) {
            // Remove the record now rather than when its lease runs out.
            rt.spawn(async move {
                if let Err(e) = r.deregister().await {
                    tracing::debug!(error = %e, "cannot deregister an events publisher");
                }
            });
        }
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
        let context = zmq::Context::new();
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
            Ok(Ok(a)) => a,
            _ => bind,
        };
        let address = advertised(&bound, config.events_advertise.as_deref());
        let id = InstanceId::random();
        let s = AsyncSocket::new(&context, s)?;
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let task = tokio::spawn(publisher_loop(s, rx, id));
        let limits = Limits::default().with_max_frame_bytes(
            config
                .max_payload
                .saturating_add(wire::MAX_HEADER_BYTES)
                .min(u32::MAX as usize),
        );
        let mut capabilities = EventsCapabilities::default();
        capabilities.wildcards = true;
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

/// Owns the XPUB: sends the events queued by `publish`, and answers hello
/// subscriptions. Ends when the node (the only sender) is gone.
async fn publisher_loop(socket: AsyncSocket, mut rx: mpsc::Receiver<Vec<Bytes>>, id: InstanceId) {
    let me = Bytes::from(id.to_string());
    loop {
        loop {
            match socket.try_recv() {
                Ok(Some(frames)) => {
                    // `\x01` + topic subscribes; `\x00` + topic unsubscribes.
                    let Some(first) = frames.first() else {
                        continue;
                    };
                    if first.first() == Some(&1) && first[1..].starts_with(HELLO) {
                        let topic = first.slice(1..);
                        // XPUB never blocks; a lost hello only makes that
                        // subscriber wait its connect timeout.
                        let _ = socket.try_send(&[topic, me.clone()]);
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
            parts = rx.recv() => match parts {
                Some(parts) => match socket.try_send(&parts) {
                    // Without `ZMQ_XPUB_NODROP` a full subscriber pipe drops
                    // the message for that subscriber, it never blocks.
                    Ok(Sent::Done | Sent::WouldBlock | Sent::Unreachable) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "zmq publisher failed");
                        return;
                    }
                },
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
        let mut parts = vec![Bytes::from(event.subject.clone())];
        parts.extend(wire::encode_parts(&event_envelope(&event, 0)));
        self.node
            .publish
            .send(parts)
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
        set(s.set_subscribe(subject::literal_prefix(&options.pattern).as_bytes()))?;
        set(s.set_subscribe(&hello))?;
        let socket = AsyncSocket::new(&node.context, s)?;
        // Watch before connecting, so no publisher appearing meanwhile is
        // missed; the watch starts with every current publisher.
        let watch = node.discovery.watch(EVENTS_ENDPOINT).await?;
        let buffer = EventBuffer::new(options.capacity);
        let mut sub = Subscriber {
            socket,
            pattern: options.pattern,
            hello: Bytes::from(hello),
            buffer: buffer.clone(),
            limits: node.limits,
            publishers: HashMap::new(),
            waiting: HashMap::new(),
        };
        for instance in node.discovery.list(EVENTS_ENDPOINT).await? {
            sub.connect(&instance);
        }
        sub.join(node.config.connect_timeout).await?;
        let task = tokio::spawn(sub.run(watch));
        Ok(Box::new(BufferedSubscription::new(
            buffer,
            AbortOnDrop(task),
        )))
    }

    async fn create_stream(&self, _config: StreamConfig) -> Result<()> {
        Err(Error::unsupported("durable"))
    }

    async fn delete_stream(&self, _name: &str) -> Result<()> {
        Err(Error::unsupported("durable"))
    }

    async fn publish_durable(&self, _event: Event, _msg_id: Option<String>) -> Result<PublishAck> {
        Err(Error::unsupported("durable"))
    }

    async fn consume(&self, _config: ConsumerConfig) -> Result<Box<dyn DeliveryTransport>> {
        Err(Error::unsupported("durable"))
    }
}

/// Aborts a subscription's reader task when the subscription goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One subscription's SUB socket and what it is connected to.
struct Subscriber {
    socket: AsyncSocket,
    pattern: String,
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
        while let Some(frames) = self.socket.try_recv()? {
            self.handle(frames);
        }
        Ok(())
    }

    fn handle(&mut self, frames: Vec<Bytes>) {
        let Some((topic, rest)) = frames.split_first() else {
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
            // Other subscribers' hellos reach subscriptions to every subject.
            return;
        }
        let decoded = wire::decode_parts_with(rest, &self.limits)
            .map_err(plane_core::peer::malformed)
            .and_then(decode_event);
        let (event, dropped) = match decoded {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "malformed event ignored");
                return;
            }
        };
        if event.subject.as_bytes() != &topic[..]
            || !subject::matches(&self.pattern, &event.subject)
        {
            return;
        }
        self.buffer.dropped(dropped);
        self.buffer.offer(event);
    }

    /// Wait until every publisher connected so far confirmed the
    /// subscription, or `timeout` passed.
    async fn join(&mut self, timeout: std::time::Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain()?;
            if self.waiting.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = self.socket.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
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
