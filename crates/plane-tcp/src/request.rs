//! The TCP request plane: one listener per handle, serving every endpoint
//! instance registered through it, and one pooled connection per peer
//! process for calls. The plane itself is [`plane_peer::PeerRequests`];
//! this module is its TCP links ([`TcpLinks`]).
//!
//! # Connections
//!
//! Every call between two processes shares one TCP connection
//! (`TCP_NODELAY` set), envelopes multiplexed on it by request id, each in
//! the wire codec's length-delimited form (`wire::encode_delimited`). One
//! task per connection reads and routes; one writes, a batch of queued
//! envelopes per write. A connection that ends (reset, closed, garbage on
//! it) ends every call on it — the plane reports `Disconnected` — and the
//! next call connects afresh.
//!
//! # TLS
//!
//! With `tls=true` every connection runs TLS 1.3 (rustls) before the first
//! envelope, with the identities, pinning, CA mode and mutual TLS of
//! [`plane_peer::tls`]: a server publishes its certificate's fingerprint
//! ([`FINGERPRINT_METADATA`]) and name ([`SERVER_NAME_METADATA`]) in its
//! discovery record, which is also how a caller knows the instance speaks
//! TLS. A plain caller and a TLS server (or the reverse) refuse each other
//! with `Connection` naming the mismatch. A server refusing the caller's
//! certificate sends a TLS alert, which ends the caller's calls with
//! `Unauthorized`.
//!
//! # Liveness
//!
//! A peer whose host vanished leaves a connection that says nothing, so the
//! server sends a `heartbeat` envelope for every call in flight at every
//! heartbeat interval (`heartbeat_ms`), and a caller that hears nothing
//! about a call for its idle timeout (`idle_timeout_ms`) ends it
//! `Disconnected`.
//!
//! # Backpressure
//!
//! Credit (`plane_peer::WINDOW` data frames per call) bounds how far a
//! handler runs ahead of its reader; the per-connection queues are bounded,
//! and a caller's reader that stops reading holds up the other calls on its
//! connection once its call's buffer is full (head-of-line blocking, as on
//! any one-connection multiplexer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use plane_core::discovery::Instance;
use plane_core::message::names;
use plane_core::request::{Cancel, InstanceId};
use plane_core::wire::{self, DelimitedDecoder, Envelope, EnvelopeKind, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::events::EventWriter;
use plane_peer::net::{self, Connected, Listener};
use plane_peer::tls::{Published, Tls};
use plane_peer::{
    self as peer, ends_call, CallLink, Control, Endpoints, LinkSettings, PeerRequests, Pool,
    ReplyWriter, RequestLinks, ServedCall,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use crate::error::io_error;
use crate::TcpConfig;

/// Envelopes buffered per call on the caller's side.
const CALL_BUFFER: usize = 64;
/// Encoded envelopes waiting for a connection's writer.
const CONNECTION_QUEUE: usize = 1024;
/// Envelopes written in one write at most.
const WRITE_BATCH: usize = 64;
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Discovery metadata key of a TLS server's certificate fingerprint.
pub const FINGERPRINT_METADATA: &str = "tcp-sha256";
/// Discovery metadata key of the TLS name a TLS server is verified under.
pub const SERVER_NAME_METADATA: &str = "tcp-server-name";
/// ALPN protocol of plane over TLS on TCP.
pub const ALPN: &[u8] = b"plane-tcp/1";

const PUBLISHED: Published = Published {
    fingerprint: FINGERPRINT_METADATA,
    server_name: SERVER_NAME_METADATA,
    alpn: ALPN,
};

/// How a mismatch names the two forms.
const FORMS: net::Forms = net::Forms {
    plain: "plain TCP",
    tls: "TLS (tls=true)",
};

/// The reading half of a connection, plain or TLS.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plain or TLS.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Split a plain connection without a lock between the halves.
fn plain_halves(stream: TcpStream) -> (Reader, Writer) {
    let (read, write) = stream.into_split();
    (Box::new(read), Box::new(write))
}

fn tls_halves<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (Reader, Writer) {
    let (read, write) = tokio::io::split(stream);
    (Box::new(read), Box::new(write))
}

/// The TCP request plane. Build it with [`TcpRequests::connect`] (or
/// through the registry with a `tcp://` URL) and wrap it in
/// [`plane_core::Requests`]; its own methods are on [`TcpRequests::links`].
pub type TcpRequests = PeerRequests<TcpLinks>;

/// What the TCP request plane is made of: the listener serving this
/// process's endpoint instances and a connection per peer process.
pub struct TcpLinks {
    config: TcpConfig,
    endpoints: Endpoints,
    listener: Mutex<Listener>,
    /// By address and the fingerprint published there, so a peer restarted
    /// with another certificate gets a new connection.
    connections: Pool<(String, String), Connection>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
}

impl std::fmt::Debug for TcpLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLinks")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `env` in the length-delimited form.
fn delimited(env: &Envelope) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(env.encoded_len() + wire::LENGTH_PREFIX_LEN);
    wire::encode_delimited(env, &mut buf).map_err(|e| {
        Error::new(ErrorKind::PayloadTooLarge, format!("envelope refused: {e}")).with_source(e)
    })?;
    Ok(buf.freeze())
}

/// How a server takes its connections.
#[derive(Clone)]
struct Accept {
    endpoints: Endpoints,
    limits: Limits,
    heartbeat: Duration,
    /// TLS handshake first, bounded by `handshake`.
    tls: Option<TlsAcceptor>,
    handshake: Duration,
}

impl Accept {
    fn new(config: &TcpConfig, endpoints: Endpoints, limits: Limits, tls: Option<&Tls>) -> Self {
        Accept {
            endpoints,
            limits,
            heartbeat: config.timings.heartbeat,
            tls: tls.map(|t| TlsAcceptor::from(t.server_config())),
            handshake: config.timings.connect_timeout,
        }
    }
}

/// Serve `accept`'s endpoints on `config`'s address, bound now.
fn listen(config: &TcpConfig, accept: Accept) -> Result<Listener> {
    Listener::serve(net::bind(config.bind)?, move |stream| {
        serve_connection(stream, accept.clone())
    })
}

impl RequestLinks for TcpLinks {
    type Transport = crate::Tcp;
    type Link = TcpLink;

    fn bind(config: TcpConfig, endpoints: Endpoints) -> Result<Self> {
        let limits = peer::limits(config.max_payload);
        let tls = config
            .tls
            .as_ref()
            .map(|c| Tls::new(c, PUBLISHED).map(Arc::new))
            .transpose()?;
        let accept = Accept::new(&config, endpoints.clone(), limits, tls.as_deref());
        let listener = listen(&config, accept)?;
        Ok(TcpLinks {
            config,
            endpoints,
            listener: Mutex::new(listener),
            connections: Pool::default(),
            limits,
            tls,
        })
    }

    fn settings(&self) -> LinkSettings {
        net::settings(self.config.max_payload, &self.config.timings)
    }

    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        Ok(net::record(
            endpoint,
            instance,
            self.local_addr(),
            self.config.advertise.as_deref(),
            self.tls.as_deref(),
        ))
    }

    async fn open(&self, instance: &Instance, request: Envelope) -> Result<TcpLink> {
        let bytes = delimited(&request)?;
        let id = request.id;
        let mut fresh = false;
        loop {
            let conn = self.connection(instance, fresh).await?;
            let (tx, rx) = mpsc::channel(CALL_BUFFER);
            lock(&conn.calls).insert(id, tx);
            let link = TcpLink {
                id,
                replies: rx,
                conn,
                ended: false,
            };
            if link.conn.queue.send(bytes.clone()).await.is_ok() {
                return Ok(link);
            }
            // Refused by the peer's TLS: another connection fares no better.
            if let Some(refusal) = link.conn.refusal() {
                return Err(refusal);
            }
            // The cached connection died since it was last used: one more
            // try on a new one, then the directory's retry takes over.
            if fresh {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!("peer {} is unreachable", instance.address),
                ));
            }
            fresh = true;
        }
    }

    async fn rebind(&self) -> Result<()> {
        let fresh = listen(&self.config, self.accept())?;
        // Dropping the old listener aborts it and every connection it
        // served: calls in flight are lost, as in a crashed process.
        drop(std::mem::replace(&mut *lock(&self.listener), fresh));
        self.connections.clear();
        Ok(())
    }
}

impl TcpLinks {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        lock(&self.listener).addr()
    }

    /// Connect to this handle's own listener, write `bytes` as they are (not
    /// an envelope), and return what the server answers within `wait`, up
    /// to 64 KiB. A test hook (feature `testkit`) for checking that a peer
    /// survives garbage.
    ///
    /// # Errors
    /// `Connection` if the listener cannot be reached.
    #[cfg(feature = "testkit")]
    pub async fn send_raw(&self, bytes: &[u8], wait: Duration) -> Result<Vec<u8>> {
        net::send_raw(self.local_addr(), bytes, wait)
            .await
            .map_err(|e| io_error("cannot reach the listener", e))
    }

    /// How this handle's listener takes connections.
    fn accept(&self) -> Accept {
        Accept::new(
            &self.config,
            self.endpoints.clone(),
            self.limits,
            self.tls.as_deref(),
        )
    }

    /// The shared connection to `instance`'s process.
    async fn connection(&self, instance: &Instance, fresh: bool) -> Result<Connection> {
        let fingerprint = self.tls.as_ref().map_or("", |t| t.fingerprint_of(instance));
        let key = (instance.address.clone(), fingerprint.to_owned());
        let alive = |c: &Connection| {
            !c.queue.is_closed() && !c.closed.load(std::sync::atomic::Ordering::Acquire)
        };
        self.connections
            .get(&key, fresh, alive, || self.connect(instance))
            .await
    }

    async fn connect(&self, instance: &Instance) -> Result<Connection> {
        let connected = net::connect(
            instance,
            self.tls.as_deref(),
            &PUBLISHED,
            FORMS,
            self.config.timings.connect_timeout,
        )
        .await?;
        let (read, write, first) = match connected {
            Connected::Plain(stream) => {
                let (read, write) = plain_halves(stream);
                (read, write, Vec::new())
            }
            Connected::Tls(stream) => {
                let (mut read, write) = tls_halves(*stream);
                let timeout = self.config.timings.connect_timeout;
                let first = read_hello(&mut read, &instance.address, timeout).await?;
                (read, write, first)
            }
        };
        let (queue, outgoing) = mpsc::channel(CONNECTION_QUEUE);
        let (dead, dead_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(write, outgoing, dead_rx));
        let calls: Calls = Arc::default();
        let refused: Refused = Arc::default();
        let reader = tokio::spawn(read_replies(
            read,
            first,
            calls.clone(),
            refused.clone(),
            self.limits,
            dead,
        ));
        Ok(Connection {
            queue,
            calls,
            refused,
            tasks: Arc::new([writer.abort_handle(), reader.abort_handle()]),
            closed: Arc::default(),
        })
    }
}

/// Write what `outgoing` queues, a batch per write, until the queue closes,
/// a write fails, or `dead` says the connection's reader ended.
async fn write_loop(
    mut write: Writer,
    mut outgoing: mpsc::Receiver<Bytes>,
    mut dead: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buf = BytesMut::new();
    loop {
        tokio::select! {
            n = outgoing.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return;
                }
                let ok = if batch.len() == 1 {
                    write.write_all(&batch[0]).await.is_ok()
                } else {
                    buf.clear();
                    for b in &batch {
                        buf.extend_from_slice(b);
                    }
                    write.write_all(&buf).await.is_ok()
                };
                batch.clear();
                if !ok {
                    return;
                }
            }
            _ = &mut dead => return,
        }
    }
}

/// Read `read` into `decoder` and hand each whole envelope to `each`, until
/// the connection ends (`Ok` with the read error, if that is how it ended)
/// or carries something undecodable.
/// `first`: bytes already read from `read`, decoded before anything else.
async fn read_envelopes(
    read: &mut Reader,
    first: &[u8],
    limits: Limits,
    mut each: impl AsyncEnvelopeFn,
) -> std::result::Result<Option<std::io::Error>, wire::WireError> {
    let mut decoder = DelimitedDecoder::with_limits(limits);
    decoder.push(first);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        while let Some(env) = decoder.next_envelope()? {
            if !each.call(env).await {
                return Ok(None);
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) => return Ok(None),
            Err(e) => return Ok(Some(e)),
            Ok(n) => decoder.push(&chunk[..n]),
        }
    }
}

/// The hello a TLS server sends as soon as its handshake is done: a
/// heartbeat of no call, which callers of any version ignore.
fn hello() -> Envelope {
    Envelope::new(EnvelopeKind::Heartbeat, RequestId::default())
}

/// Under TLS 1.3 a server checks the caller's certificate only after the
/// caller's side of the handshake is done, and refuses with an alert the
/// caller sees on its next read. Reading to the server's [`hello`] before
/// the first call makes that read happen at once: a refusal is
/// `Unauthorized` here, not a connection that dies later (once the caller
/// has written, the server's reset can discard the alert unread). Returns
/// what was read, for the reply reader.
async fn read_hello(read: &mut Reader, address: &str, timeout: Duration) -> Result<Vec<u8>> {
    let mut chunk = vec![0u8; READ_CHUNK];
    match tokio::time::timeout(timeout, read.read(&mut chunk)).await {
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!("{address} said nothing within {timeout:?} of its TLS handshake"),
        )),
        Ok(Ok(0)) => Err(Error::new(
            ErrorKind::Connection,
            format!("{address} closed the connection after its TLS handshake"),
        )),
        Ok(Err(e)) => Err(plane_peer::tls::refusal_in(&e)
            .unwrap_or_else(|| io_error(&format!("TLS with {address} failed"), e))),
        Ok(Ok(n)) => {
            chunk.truncate(n);
            Ok(chunk)
        }
    }
}

/// What [`read_envelopes`] hands envelopes to; `false` stops reading.
trait AsyncEnvelopeFn {
    fn call(&mut self, env: Envelope) -> impl std::future::Future<Output = bool> + Send;
}

// ---------------------------------------------------------------- caller side

/// The calls in flight on one connection, by request id.
type Calls = Arc<Mutex<HashMap<RequestId, mpsc::Sender<Envelope>>>>;

/// Why a connection ended, when the peer's TLS refused this process's
/// certificate (or its lack of one).
type Refused = Arc<std::sync::OnceLock<String>>;

/// The caller's connection to one peer process. Cheap to clone.
#[derive(Clone)]
struct Connection {
    queue: mpsc::Sender<Bytes>,
    calls: Calls,
    refused: Refused,
    /// Its writer and reader tasks.
    tasks: Arc<[AbortHandle; 2]>,
    /// Taken for dead by [`close`](Connection::close); the aborted tasks
    /// may not have stopped yet.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Connection {
    /// Take the connection for dead: stop its tasks (the pool then sees its
    /// queue closed and connects afresh) and end every call on it
    /// (`Disconnected`).
    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for task in self.tasks.iter() {
            task.abort();
        }
        lock(&self.calls).clear();
    }

    /// `Unauthorized` if the peer's TLS refused this process.
    fn refusal(&self) -> Option<Error> {
        self.refused
            .get()
            .map(|why| Error::new(ErrorKind::Unauthorized, why.clone()))
    }
}

struct RouteReplies {
    calls: Calls,
}

impl AsyncEnvelopeFn for RouteReplies {
    async fn call(&mut self, env: Envelope) -> bool {
        let id = env.id;
        let Some(replies) = lock(&self.calls).get(&id).cloned() else {
            return true;
        };
        let end = ends_call(&env);
        // Waiting here is the backpressure of a slow reader (and holds up
        // the other calls on this connection meanwhile).
        let delivered = replies.send(env).await.is_ok();
        if end || !delivered {
            lock(&self.calls).remove(&id);
        }
        true
    }
}

/// Route replies to their calls until the connection ends; then every call
/// on it ends (its sender dropped: `Disconnected`), and so does the writer.
async fn read_replies(
    mut read: Reader,
    first: Vec<u8>,
    calls: Calls,
    refused: Refused,
    limits: Limits,
    dead: oneshot::Sender<()>,
) {
    let route = RouteReplies {
        calls: calls.clone(),
    };
    match read_envelopes(&mut read, &first, limits, route).await {
        Err(e) => tracing::debug!(error = %e, "malformed reply stream; closing the connection"),
        Ok(Some(e)) => {
            if let Some(refusal) = plane_peer::tls::refusal_in(&e) {
                // Tell the calls why, rather than leave them `Disconnected`.
                let _ = refused.set(refusal.message().to_owned());
                for (id, call) in lock(&calls).iter() {
                    let _ = call.try_send(Envelope::error(*id, &refusal));
                }
            }
        }
        Ok(None) => {}
    }
    lock(&calls).clear();
    drop(dead);
}

/// The caller's side of one call on a shared connection.
pub struct TcpLink {
    id: RequestId,
    replies: mpsc::Receiver<Envelope>,
    conn: Connection,
    /// The server ended the call, or it was killed: nothing to tell it.
    ended: bool,
}

impl TcpLink {
    fn queue(&self, env: &Envelope) -> bool {
        delimited(env).is_ok_and(|b| self.conn.queue.try_send(b).is_ok())
    }
}

impl CallLink for TcpLink {
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>> {
        self.replies.poll_recv(cx).map(|env| {
            env.map(|env| {
                self.ended |= ends_call(&env);
                Ok(env)
            })
        })
    }

    fn control(&mut self, env: Envelope) -> bool {
        self.queue(&env)
    }

    fn silent(&mut self) {
        // The server heartbeats every call on the connection: one call's
        // silence is the connection's.
        tracing::debug!(id = %self.id, "call silent for the idle limit; dropping its connection");
        self.conn.close();
    }

    fn kill(&mut self) {
        if !self.ended {
            // With the queue full the kill is dropped; the server learns of
            // it when the call's deadline passes or the connection ends.
            if !self.queue(&peer::cancel_envelope(self.id, Cancel::Kill)) {
                tracing::debug!(id = %self.id, "kill dropped: connection queue full");
            }
        }
        self.ended = true;
        lock(&self.conn.calls).remove(&self.id);
        self.replies.close();
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        // A link dropped mid-call (an events subscription ending, a caller
        // gone without a kill) tells the server, which stops the handler.
        self.kill();
    }
}

// ---------------------------------------------------------------- server side

/// The calls served on one connection, by request id.
type ServedCalls = Arc<Mutex<HashMap<RequestId, ServedCall>>>;

/// One connection's serving state, fed its envelopes one at a time.
struct Serve {
    endpoints: Endpoints,
    queue: mpsc::Sender<Bytes>,
    calls: ServedCalls,
    /// Subscriptions on this connection: dropping the sender ends one.
    subscriptions: HashMap<RequestId, oneshot::Sender<()>>,
}

impl AsyncEnvelopeFn for Serve {
    async fn call(&mut self, env: Envelope) -> bool {
        let id = env.id;
        let call = lock(&self.calls).get(&id).cloned();
        if let Some(call) = call {
            match call.control(env) {
                Ok(Control::Continue) => {}
                Ok(Control::Killed) => drop(lock(&self.calls).remove(&id)),
                Err(e) => {
                    lock(&self.calls).remove(&id);
                    call.kill();
                    self.refuse(id, &e).await;
                }
            }
            return true;
        }
        if self.subscriptions.remove(&id).is_some() {
            // Anything from a subscriber after its request ends it.
            return true;
        }
        if env.kind != EnvelopeKind::Request {
            // Control for a call that is over: nothing to do.
            return true;
        }
        if env.headers.get(names::SUBSCRIBE).is_some() {
            let (gone_tx, gone) = oneshot::channel();
            self.subscriptions.insert(id, gone_tx);
            let subscribers = self.endpoints.subscribers().clone();
            let writer = TcpEventWriter {
                queue: self.queue.clone(),
            };
            tokio::spawn(async move {
                let gone = async move {
                    let _ = gone.await;
                };
                subscribers.serve(env, writer, gone).await;
            });
            return true;
        }
        match ServedCall::accept(&self.endpoints, env) {
            Ok((call, incoming)) => {
                lock(&self.calls).insert(id, call.clone());
                call.start(
                    incoming,
                    TcpWriter {
                        id,
                        queue: self.queue.clone(),
                        calls: self.calls.clone(),
                    },
                );
            }
            Err(e) => self.refuse(id, &e).await,
        }
        true
    }
}

impl Serve {
    async fn refuse(&self, id: RequestId, e: &Error) {
        if let Ok(b) = delimited(&Envelope::error(id, e)) {
            // A refusal to a caller that is gone is nobody's loss.
            let _ = self.queue.send(b).await;
        }
    }
}

async fn serve_connection(stream: TcpStream, accept: Accept) {
    let Accept {
        endpoints,
        limits,
        heartbeat,
        tls,
        handshake,
    } = accept;
    let is_tls = tls.is_some();
    let (mut read, write) = match tls {
        None => plain_halves(stream),
        // In the connection's own task, so a slow or silent client holds
        // up nobody else; a refused one is closed with rustls' alert.
        Some(acceptor) => match net::accept_tls(&acceptor, stream, handshake).await {
            Some(stream) => tls_halves(stream),
            None => return,
        },
    };
    let (queue, outgoing) = mpsc::channel(CONNECTION_QUEUE);
    if is_tls {
        // The caller waits for it (see `read_hello`).
        if let Ok(b) = delimited(&hello()) {
            let _ = queue.try_send(b);
        }
    }
    let (dead, dead_rx) = oneshot::channel::<()>();
    let writer = tokio::spawn(write_loop(write, outgoing, dead_rx));
    let calls: ServedCalls = Arc::default();
    let heartbeats = tokio::spawn(send_heartbeats(calls.clone(), queue.clone(), heartbeat));
    let serve = Serve {
        endpoints,
        queue: queue.clone(),
        calls: calls.clone(),
        subscriptions: HashMap::new(),
    };
    if let Err(e) = read_envelopes(&mut read, &[], limits, serve).await {
        // The stream's framing is lost: refuse and close the connection.
        let error = match e {
            wire::WireError::EnvelopeTooLarge { .. } => {
                Error::new(ErrorKind::PayloadTooLarge, format!("envelope refused: {e}"))
            }
            e => peer::malformed(e),
        };
        tracing::debug!(error = %error, "malformed request stream refused");
        if let Ok(b) = delimited(&Envelope::error(RequestId::default(), &error)) {
            let _ = queue.send(b).await;
        }
        // Let the writer flush the refusal before the connection closes.
        drop(queue);
        heartbeats.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    } else {
        heartbeats.abort();
        drop(dead);
    }
    // However the connection ended, its handlers are killed.
    let served: Vec<ServedCall> = lock(&calls).drain().map(|(_, c)| c).collect();
    for call in served {
        call.kill();
    }
}

/// Heartbeat every call in flight on a connection every `interval`.
async fn send_heartbeats(calls: ServedCalls, queue: mpsc::Sender<Bytes>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids: Vec<RequestId> = lock(&calls).keys().copied().collect();
        for id in ids {
            if let Ok(b) = delimited(&peer::heartbeat_envelope(id)) {
                // A full queue is traffic enough to show the server lives.
                let _ = queue.try_send(b);
            }
        }
    }
}

/// How a served call's replies reach its connection's writer.
struct TcpWriter {
    id: RequestId,
    queue: mpsc::Sender<Bytes>,
    calls: ServedCalls,
}

impl ReplyWriter for TcpWriter {
    fn write(&self, env: Envelope, last: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let bytes = delimited(&env)?;
            if last {
                lock(&self.calls).remove(&self.id);
            }
            self.queue
                .send(bytes)
                .await
                .map_err(|_| Error::new(ErrorKind::Disconnected, "the connection is closed"))
        })
    }

    fn abandon(&mut self) {
        lock(&self.calls).remove(&self.id);
        // Tell the caller now rather than after its idle limit.
        if let Ok(b) = delimited(&Envelope::error(self.id, &peer::abandoned())) {
            let _ = self.queue.try_send(b);
        }
    }
}

/// A subscription's events, written to its connection (each already
/// carries the subscription's request id).
struct TcpEventWriter {
    queue: mpsc::Sender<Bytes>,
}

impl EventWriter for TcpEventWriter {
    async fn write(&mut self, envs: &[Envelope]) -> Result<()> {
        for env in envs {
            self.queue
                .send(delimited(env)?)
                .await
                .map_err(|_| Error::new(ErrorKind::Disconnected, "the connection is closed"))?;
        }
        Ok(())
    }

    fn finish(&mut self) {}
}
