//! What the brokerless transports over TCP sockets (`plane-tcp`,
//! `plane-http`) share, feature `net`: the listener, bound at once and
//! serving each accepted connection in a task of its own until dropped; the
//! caller's connection (`TCP_NODELAY`, TLS when the peer publishes it,
//! bounded by the connect timeout); and the URL keys they both read.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use plane_core::discovery::Instance;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;

use crate::tls::{Published, Tls, TlsConfig};
use crate::{LinkSettings, Timings};
use plane_core::request::InstanceId;

/// A socket that could not be bound, connected or used: `Connection`,
/// saying `what` failed.
pub fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}")).with_source(e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bind `addr` now, synchronously, so that a bad address fails a plane's
/// constructor rather than its first call.
///
/// # Errors
/// `Connection` when the address cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| io_error(&format!("cannot bind {addr}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error("cannot set up the listener", e))?;
    TcpListener::from_std(listener).map_err(|e| io_error("cannot set up the listener", e))
}

/// A listener serving its connections, and every task it started: dropped,
/// it aborts them all, as a crashed process would lose them.
pub struct Listener {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Accept on `listener` until dropped; each connection (`TCP_NODELAY`
    /// set) is served by `serve` in a task of its own.
    ///
    /// # Errors
    /// `Connection` when the listener has no address.
    pub fn serve<F, Fut>(listener: TcpListener, serve: F) -> Result<Self>
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener
            .local_addr()
            .map_err(|e| io_error("listener address", e))?;
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let task = tokio::spawn(accept_loop(listener, serve, Arc::downgrade(&tasks)));
        lock(&tasks).push(task.abort_handle());
        Ok(Listener { addr, tasks })
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F, tasks: Weak<Mutex<Vec<AbortHandle>>>)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let task = tokio::spawn(serve(stream));
        let Some(tasks) = tasks.upgrade() else { return };
        let mut tasks = lock(&tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// The TLS side of an accepted connection, within `timeout`; `None` (and
/// the connection closed, with rustls' alert if it refused the client) when
/// the handshake fails or times out.
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// A caller's connection to a peer: plain, or TLS when both sides run it.
#[derive(Debug)]
pub enum Connected {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS 1.3 over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// How a transport names its two forms in the error of a mismatch
/// (`plain TCP` and `TLS (tls=true)`, say).
#[derive(Debug, Clone, Copy)]
pub struct Forms {
    /// The plain form.
    pub plain: &'static str,
    /// The TLS form.
    pub tls: &'static str,
}

/// Connect to `instance` (`TCP_NODELAY` set), under TLS when `tls` is given,
/// all within `timeout`.
///
/// # Errors
/// `Connection` when the instance cannot be reached, serves the other form
/// than this process (the error names both, as `forms` says), or publishes
/// an invalid TLS name; `Unauthorized` when its TLS refused this process's
/// certificate during the handshake.
pub async fn connect(
    instance: &Instance,
    tls: Option<&Tls>,
    published: &Published,
    forms: Forms,
    timeout: Duration,
) -> Result<Connected> {
    let address = instance.address.as_str();
    let (ours, theirs) = match (tls.is_some(), published.is_in(instance)) {
        (true, false) => (forms.tls, forms.plain),
        (false, true) => (forms.plain, forms.tls),
        _ => ("", ""),
    };
    if !ours.is_empty() {
        return Err(Error::new(
            ErrorKind::Connection,
            format!(
                "instance {} at {address} serves {theirs}; this handle uses {ours}",
                instance.id
            ),
        ));
    }
    let connecting = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| io_error(&format!("cannot connect to {address}"), e))?;
        // Small replies are not to wait for Nagle's algorithm.
        stream
            .set_nodelay(true)
            .map_err(|e| io_error("cannot set TCP_NODELAY", e))?;
        let Some(tls) = tls else {
            return Ok(Connected::Plain(stream));
        };
        let name = tls.server_name_of(instance);
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!(
                    "instance {} publishes an invalid TLS name `{name}`: {e}",
                    instance.id
                ),
            )
        })?;
        let stream = TlsConnector::from(tls.client_config(instance)?)
            .connect(name, stream)
            .await
            .map_err(|e| {
                crate::tls::refusal_in(&e)
                    .unwrap_or_else(|| io_error(&format!("TLS with {address} failed"), e))
            })?;
        Ok(Connected::Tls(Box::new(stream)))
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connection,
                format!("connecting to {address} timed out after {timeout:?}"),
            )
        })?
}

/// The timings a socket transport starts from: a heartbeat every 500 ms, a
/// call silent for 3 s (six heartbeats missed) given up, 3 s to connect.
pub const TIMINGS: Timings = Timings {
    heartbeat: Duration::from_millis(500),
    idle_timeout: Duration::from_secs(3),
    connect_timeout: Duration::from_secs(3),
};

/// The largest payload a socket transport takes unless configured.
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// What the shared runtime needs to know of a socket transport: its
/// servers heartbeat every call, since a peer whose host vanished leaves a
/// connection that says nothing.
pub fn settings(max_payload: usize, timings: &Timings) -> LinkSettings {
    LinkSettings {
        max_payload,
        connect_timeout: timings.connect_timeout,
        idle_limit: Some(timings.idle_timeout),
    }
}

/// The discovery record of `instance` of `endpoint` served on a listener
/// bound to `bound`: the advertised address, and under TLS what callers
/// need to verify this server.
pub fn record(
    endpoint: &str,
    instance: InstanceId,
    bound: SocketAddr,
    advertise: Option<&str>,
    tls: Option<&Tls>,
) -> Instance {
    let record = Instance::new(endpoint, instance, crate::advertised(bound, advertise));
    match tls {
        Some(tls) => tls.publish(record),
        None => record,
    }
}

/// The URL keys of a socket transport's listener beside the address and
/// discovery: `advertise`, `max_payload`, the [`Timings`], and the TLS keys,
/// which need `tls_on` (else they are refused, `tls_hint` saying how to turn
/// TLS on). Returns the TLS settings when `tls_on`.
///
/// # Errors
/// `InvalidConfig` for a value that does not parse, or TLS keys without TLS.
pub fn read_keys(
    q: &mut QueryParams,
    advertise: &mut Option<String>,
    max_payload: &mut usize,
    timings: &mut Timings,
    tls_on: bool,
    tls_hint: &str,
) -> Result<Option<TlsConfig>> {
    if let Some(a) = q.take_str("advertise") {
        *advertise = Some(a);
    }
    q.set("max_payload", max_payload)?;
    *timings = timings.read(q)?;
    let settings = TlsConfig::default().read(q);
    if tls_on {
        return Ok(Some(settings));
    }
    if settings.is_set() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the TLS keys ({}) need {tls_hint}",
                TlsConfig::KEYS.join(", ")
            ),
        ));
    }
    Ok(None)
}

/// Check what every socket transport's configuration holds, however it was
/// built.
///
/// # Errors
/// `InvalidConfig` naming the setting that is out of range.
pub fn check(backend: &str, max_payload: usize, timings: &Timings, discovery: &str) -> Result<()> {
    if max_payload == 0 {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "max_payload must be positive",
        ));
    }
    timings.check()?;
    if discovery.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("{backend} needs `discovery=<percent-encoded kv url>`"),
        ));
    }
    Ok(())
}

/// Connect to `addr`, write `bytes` as they are (not an envelope), and
/// return what the peer answers within `wait`, up to 64 KiB: the test hook
/// (feature `testkit`) with which the TCP-based transports check that a
/// serving peer survives garbage.
///
/// # Errors
/// When `addr` cannot be reached or the bytes cannot be written.
#[cfg(feature = "testkit")]
pub async fn send_raw(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    wait: std::time::Duration,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        while answer.len() < 64 * 1024 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    Ok(answer)
}
