//! CURVE on plane's sockets: the keys each socket gets, the ZAP handler that
//! enforces an allow-list of client keys, and the socket monitor that tells
//! a caller its handshake failed (ZeroMQ otherwise drops a failed handshake
//! without a word and retries).

use std::sync::atomic::{AtomicU64, Ordering};

use plane_core::{Error, ErrorKind, Result};
use plane_zmq_sys as zmq;

use crate::config::CurveConfig;
use crate::error::zmq_error;
use crate::socket::{AsyncSocket, Sent};

/// The ZAP domain plane's serving sockets pass to the handler.
const ZAP_DOMAIN: &str = "plane";
/// Where libzmq looks for a ZAP handler (RFC 27), per context.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// Which side of a connection a socket is.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    /// It binds (ROUTER, XPUB): the CURVE server, holding the server secret.
    Serve,
    /// It connects (DEALER, SUB): a CURVE client checking the server's key.
    Connect,
}

/// Give socket `s` its CURVE keys for `role`; nothing without `curve`.
pub(crate) fn apply(s: &zmq::Socket, curve: Option<&CurveConfig>, role: Role) -> Result<()> {
    let Some(c) = curve else {
        return Ok(());
    };
    let set = |r: zmq::Result<()>| r.map_err(|e| zmq_error("cannot set the CURVE keys", e));
    match role {
        Role::Serve => {
            set(s.set_curve_server(true))?;
            set(s.set_curve_secretkey(&c.server_secret))?;
            set(s.set_zap_domain(ZAP_DOMAIN))?;
        }
        Role::Connect => {
            let (public, secret) = match &c.client_secret {
                Some(secret) => (c.client_public()?.unwrap_or_default(), secret.clone()),
                // Any client key will do when no allow-list is checked.
                None => {
                    zmq::curve_keypair().map_err(|e| zmq_error("cannot make a CURVE keypair", e))?
                }
            };
            set(s.set_curve_serverkey(&c.server_public()?))?;
            set(s.set_curve_publickey(&public))?;
            set(s.set_curve_secretkey(&secret))?;
        }
    }
    Ok(())
}

/// The ZAP handler of one context: answers libzmq's authentication requests
/// with the allow-list. Stops (and unbinds) when dropped.
pub(crate) struct Zap {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Zap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the ZAP handler of `context` if `curve` has an allow-list. It must
/// run before the context's serving sockets take connections.
pub(crate) fn start_zap(
    context: &zmq::Context,
    curve: Option<&CurveConfig>,
) -> Result<Option<Zap>> {
    let Some(allowed) = curve.and_then(|c| c.allowed_clients.clone()) else {
        return Ok(None);
    };
    let s = context
        .socket(zmq::REP)
        .map_err(|e| zmq_error("cannot create the ZAP socket", e))?;
    s.set_linger(0)
        .map_err(|e| zmq_error("cannot set a zmq socket option", e))?;
    s.bind(ZAP_ENDPOINT)
        .map_err(|e| zmq_error("cannot bind the ZAP handler", e))?;
    let s = AsyncSocket::new(context, s)?;
    let task = tokio::spawn(async move {
        loop {
            loop {
                let request = match s.try_recv() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "zmq ZAP handler failed");
                        return;
                    }
                };
                let reply = zap_reply(&request, &allowed);
                // A REP socket takes its one reply at once.
                if !matches!(s.try_send(&reply), Ok(Sent::Done)) {
                    tracing::warn!("zmq ZAP handler could not reply");
                    return;
                }
            }
            s.changed().await;
        }
    });
    Ok(Some(Zap { task }))
}

/// The answer to one ZAP request (RFC 27: version, request id, domain,
/// address, routing id, mechanism, credentials): 200 for a CURVE client
/// whose public key is listed, 400 otherwise.
fn zap_reply(request: &[bytes::Bytes], allowed: &[String]) -> Vec<bytes::Bytes> {
    let id = request.get(1).cloned().unwrap_or_default();
    let key = match (request.get(5), request.get(6)) {
        (Some(mechanism), Some(key)) if &mechanism[..] == b"CURVE" => zmq::z85_key(key),
        _ => None,
    };
    let ok = key.as_ref().is_some_and(|k| allowed.contains(k));
    if !ok {
        let peer = request
            .get(3)
            .map(|a| String::from_utf8_lossy(a).into_owned());
        tracing::warn!(?peer, client_key = ?key, "CURVE client refused: key not allowed");
    }
    let (code, text): (&[u8], &[u8]) = if ok {
        (b"200", b"OK")
    } else {
        (b"400", b"client key not allowed")
    };
    vec![
        bytes::Bytes::from_static(b"1.0"),
        id,
        bytes::Bytes::copy_from_slice(code),
        bytes::Bytes::copy_from_slice(text),
        bytes::Bytes::new(),
        bytes::Bytes::new(),
    ]
}

/// The handshakes of one socket, read from its monitor: the failures
/// (wrong keys, CURVE on one side only, a refused client key) and the
/// successes, so that the last one says whether the peer's keys are the
/// problem.
///
/// libzmq sends monitor events blocking, from its I/O thread: a monitor
/// whose queue fills, or whose reading end is gone, stalls the whole
/// context. So whoever holds one calls [`drain`](Self::drain) regularly (a
/// handshake happens at most once per reconnect, every 100 ms, and the queue
/// holds thousands) and stops the monitor (`monitor_stop`) before dropping
/// it; [`Monitored`] does both for a socket it owns.
pub(crate) struct HandshakeMonitor {
    // Behind a mutex so a task may hold `&HandshakeMonitor` across awaits (a
    // socket is not `Sync`); only ever locked by that one task.
    inner: std::sync::Mutex<(zmq::Socket, Option<zmq::MonitorEvent>)>,
}

impl HandshakeMonitor {
    /// Watch `s`; before it connects, so no handshake is missed.
    pub(crate) fn new(context: &zmq::Context, s: &zmq::Socket) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let address = format!(
            "inproc://plane-zmq-monitor-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let events = zmq::event::HANDSHAKE_FAILED_NO_DETAIL
            | zmq::event::HANDSHAKE_FAILED_PROTOCOL
            | zmq::event::HANDSHAKE_FAILED_AUTH
            | zmq::event::HANDSHAKE_SUCCEEDED;
        s.monitor(&address, i32::from(events))
            .map_err(|e| zmq_error("cannot monitor a zmq socket", e))?;
        let pair = context
            .socket(zmq::PAIR)
            .and_then(|pair| {
                pair.set_linger(0)?;
                pair.connect(&address)?;
                Ok(pair)
            })
            .map_err(|e| {
                let _ = s.monitor_stop();
                zmq_error("cannot connect a zmq monitor", e)
            })?;
        Ok(HandshakeMonitor {
            inner: std::sync::Mutex::new((pair, None)),
        })
    }

    /// Read the events that arrived, keeping the last.
    pub(crate) fn drain(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (pair, last) = &mut *inner;
        while let Ok(e) = zmq::read_monitor_event(pair, zmq::DONTWAIT) {
            *last = Some(e);
        }
    }

    /// If the socket's last handshake failed, an `Unauthorized` error saying
    /// how; `None` if it succeeded or none was tried (the peer is down or
    /// unreachable, not refusing).
    pub(crate) fn failure(&self) -> Option<Error> {
        self.drain();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = inner.1.as_ref()?;
        let why = match e.event {
            zmq::event::HANDSHAKE_SUCCEEDED => return None,
            zmq::event::HANDSHAKE_FAILED_AUTH => {
                format!(
                    "the peer refused this client's key (ZAP status {})",
                    e.value
                )
            }
            zmq::event::HANDSHAKE_FAILED_PROTOCOL => format!(
                "protocol error {:#x} (CURVE on one side only, or a malformed handshake)",
                e.value
            ),
            // What a CURVE server does with a HELLO it cannot open (the
            // client used another server key), and sometimes what the client
            // sees first of a mechanism mismatch: the connection closes.
            _ => format!(
                "the peer closed the connection ({}): the keys do not fit \
                 (another server key, or CURVE on one side only)",
                std::io::Error::from_raw_os_error(i32::try_from(e.value).unwrap_or(0))
            ),
        };
        Some(Error::new(
            ErrorKind::Unauthorized,
            format!("the ZeroMQ handshake with {} failed: {why}", e.address),
        ))
    }
}

/// A socket and its [`HandshakeMonitor`], stopped before either closes.
pub(crate) struct Monitored {
    socket: AsyncSocket,
    monitor: HandshakeMonitor,
}

impl std::ops::Deref for Monitored {
    type Target = AsyncSocket;

    fn deref(&self) -> &AsyncSocket {
        &self.socket
    }
}

impl Drop for Monitored {
    fn drop(&mut self) {
        // Before the monitor's reading end goes (fields drop after this).
        let _ = self.socket.with(zmq::Socket::monitor_stop);
    }
}

impl Monitored {
    /// Watch `s`, which is not connected yet, and drive it with tokio.
    pub(crate) fn new(context: &zmq::Context, s: zmq::Socket) -> Result<Self> {
        let monitor = HandshakeMonitor::new(context, &s)?;
        // On an error `s` is closed before the reader goes; not connected,
        // it has no handshake to report meanwhile.
        let socket = AsyncSocket::new(context, s)?;
        Ok(Monitored { socket, monitor })
    }

    /// See [`HandshakeMonitor::drain`].
    pub(crate) fn drain(&self) {
        self.monitor.drain();
    }

    /// See [`HandshakeMonitor::failure`].
    pub(crate) fn failure(&self) -> Option<Error> {
        self.monitor.failure()
    }
}
