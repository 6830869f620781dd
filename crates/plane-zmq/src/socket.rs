//! A libzmq socket driven by tokio.
//!
//! libzmq exposes one file descriptor per socket (`ZMQ_FD`) that becomes
//! readable, edge-triggered, whenever the socket's state *may* have changed;
//! the real state is `ZMQ_EVENTS`. So the loop is: try the non-blocking
//! operation; when it would block, clear tokio's readiness and check again
//! before sleeping (an edge that arrived in between is then not lost).

use bytes::Bytes;
use plane_core::{Error, ErrorKind, Result};
use plane_zmq_sys as zmq;
use tokio::io::unix::AsyncFd;

use crate::error::zmq_error;

/// What a non-blocking send did.
pub(crate) enum Sent {
    /// Queued in libzmq.
    Done,
    /// The high-water mark is reached (or, with `ZMQ_IMMEDIATE`, no peer is
    /// connected yet): try again later.
    WouldBlock,
    /// A ROUTER with `ZMQ_ROUTER_MANDATORY` knows no peer of that identity:
    /// it disconnected.
    Unreachable,
}

/// A socket behind a mutex: `zmq::Socket` is `Send` but not `Sync`, and the
/// loops that own one hold references to it across awaits. The lock is only
/// ever taken for one non-blocking call, by one task, so it is uncontended.
struct Locked {
    socket: std::sync::Mutex<zmq::Socket>,
    fd: std::os::fd::RawFd,
}

impl std::os::fd::AsRawFd for Locked {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd
    }
}

pub(crate) struct AsyncSocket {
    fd: AsyncFd<Locked>,
    // Dropped after the socket, so the context is never terminated while
    // one of its sockets is open.
    _context: zmq::Context,
}

impl AsyncSocket {
    pub(crate) fn new(context: &zmq::Context, socket: zmq::Socket) -> Result<Self> {
        let raw = socket
            .get_fd()
            .map_err(|e| zmq_error("cannot read a zmq socket's descriptor", e))?;
        let locked = Locked {
            socket: std::sync::Mutex::new(socket),
            fd: raw,
        };
        // `register_with_interest` is the same call marked `unsafe` for I/O
        // safety: the descriptor must stay open while registered. It does:
        // the `AsyncFd` owns the socket, and deregisters before dropping it.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(locked, tokio::io::Interest::READABLE).map_err(|e| {
            Error::new(ErrorKind::Connection, "cannot register a zmq socket").with_source(e)
        })?;
        Ok(AsyncSocket {
            fd,
            _context: context.clone(),
        })
    }

    fn socket(&self) -> std::sync::MutexGuard<'_, zmq::Socket> {
        self.fd
            .get_ref()
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on the socket (connect, disconnect, set an option). Like
    /// every operation it may change the socket's state, so callers check for
    /// messages afterwards rather than wait for an edge.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&zmq::Socket) -> R) -> R {
        f(&self.socket())
    }

    /// One message if one is waiting.
    pub(crate) fn try_recv(&self) -> Result<Option<Vec<Bytes>>> {
        match self.socket().recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => Ok(Some(parts.into_iter().map(Bytes::from).collect())),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(zmq_error("zmq receive failed", e)),
        }
    }

    /// Queue one multipart message without waiting.
    pub(crate) fn try_send(&self, parts: &[Bytes]) -> Result<Sent> {
        match self
            .socket()
            .send_multipart(parts.iter().map(|p| &p[..]), zmq::DONTWAIT)
        {
            Ok(()) => Ok(Sent::Done),
            Err(zmq::Error::EAGAIN) => Ok(Sent::WouldBlock),
            Err(zmq::Error::EHOSTUNREACH) => Ok(Sent::Unreachable),
            Err(e) => Err(zmq_error("zmq send failed", e)),
        }
    }

    /// Wait until libzmq signals a possible state change.
    pub(crate) async fn changed(&self) {
        match self.fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            // The reactor is gone (runtime shutting down): nothing to wait for.
            Err(_) => std::future::pending().await,
        }
    }
}
