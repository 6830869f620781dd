//! plane's own minimal binding to libzmq 4.3.
//!
//! Why not the `zmq` crate: its `zmq-sys` always builds libzmq without
//! libsodium, so CURVE (ZeroMQ's encryption and authentication) is missing.
//! This crate builds the same libzmq sources (`zeromq-src`) with CURVE on,
//! against the libsodium that `libsodium-sys-stable` builds from its bundled
//! tarball: no system package, only a C/C++ compiler and `make`.
//!
//! Only what plane uses is declared: contexts, sockets, the options plane
//! sets, multipart send/receive, the socket monitor (to see failed
//! handshakes) and the CURVE key helpers. Each declaration follows libzmq
//! 4.3.4's `zmq.h`. The safe layer is small on purpose: a [`Context`], a
//! [`Socket`] (`Send`, not `Sync`, as libzmq requires), an [`Error`] holding
//! libzmq's `errno`.

#![deny(missing_docs)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::sync::Arc;

// libsodium is linked into libzmq (static); referencing the crate keeps it
// in the link even though nothing here calls it directly.
use libsodium_sys as _;

/// The raw C functions (libzmq 4.3.4, `zmq.h`). Only those plane uses;
/// each is documented in libzmq's manual under its own name.
#[allow(missing_docs, non_camel_case_types)]
pub mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    /// `zmq_msg_t`: 64 opaque bytes, pointer-aligned (`zmq.h` aligns it on
    /// `void *` with GCC and on 8 bytes with MSVC x64).
    #[repr(C, align(8))]
    pub struct zmq_msg_t {
        _opaque: [u8; 64],
    }

    impl zmq_msg_t {
        /// Uninitialised storage, to hand to `zmq_msg_init*`.
        pub const fn zeroed() -> Self {
            zmq_msg_t { _opaque: [0; 64] }
        }
    }

    extern "C" {
        pub fn zmq_errno() -> c_int;
        pub fn zmq_strerror(errnum: c_int) -> *const c_char;
        pub fn zmq_has(capability: *const c_char) -> c_int;

        pub fn zmq_ctx_new() -> *mut c_void;
        pub fn zmq_ctx_term(context: *mut c_void) -> c_int;
        pub fn zmq_ctx_shutdown(context: *mut c_void) -> c_int;

        pub fn zmq_socket(context: *mut c_void, kind: c_int) -> *mut c_void;
        pub fn zmq_close(socket: *mut c_void) -> c_int;
        pub fn zmq_setsockopt(
            socket: *mut c_void,
            option: c_int,
            value: *const c_void,
            len: usize,
        ) -> c_int;
        pub fn zmq_getsockopt(
            socket: *mut c_void,
            option: c_int,
            value: *mut c_void,
            len: *mut usize,
        ) -> c_int;
        pub fn zmq_bind(socket: *mut c_void, addr: *const c_char) -> c_int;
        pub fn zmq_connect(socket: *mut c_void, addr: *const c_char) -> c_int;
        pub fn zmq_disconnect(socket: *mut c_void, addr: *const c_char) -> c_int;
        pub fn zmq_socket_monitor(socket: *mut c_void, addr: *const c_char, events: c_int)
            -> c_int;

        pub fn zmq_send(socket: *mut c_void, buf: *const c_void, len: usize, flags: c_int)
            -> c_int;
        pub fn zmq_msg_init(msg: *mut zmq_msg_t) -> c_int;
        pub fn zmq_msg_recv(msg: *mut zmq_msg_t, socket: *mut c_void, flags: c_int) -> c_int;
        pub fn zmq_msg_data(msg: *mut zmq_msg_t) -> *mut c_void;
        pub fn zmq_msg_size(msg: *const zmq_msg_t) -> usize;
        pub fn zmq_msg_more(msg: *const zmq_msg_t) -> c_int;
        pub fn zmq_msg_close(msg: *mut zmq_msg_t) -> c_int;

        pub fn zmq_curve_keypair(public: *mut c_char, secret: *mut c_char) -> c_int;
        pub fn zmq_curve_public(public: *mut c_char, secret: *const c_char) -> c_int;
        pub fn zmq_z85_encode(dest: *mut c_char, data: *const u8, size: usize) -> *mut c_char;
    }
}

// Socket types (`zmq.h`).
const ZMQ_PAIR: c_int = 0;
const ZMQ_PUB: c_int = 1;
const ZMQ_SUB: c_int = 2;
const ZMQ_REP: c_int = 4;
const ZMQ_DEALER: c_int = 5;
const ZMQ_ROUTER: c_int = 6;
const ZMQ_XPUB: c_int = 9;

// Socket options (`zmq.h`).
const ZMQ_SUBSCRIBE: c_int = 6;
const ZMQ_UNSUBSCRIBE: c_int = 7;
const ZMQ_FD: c_int = 14;
const ZMQ_EVENTS: c_int = 15;
const ZMQ_LINGER: c_int = 17;
const ZMQ_MAXMSGSIZE: c_int = 22;
const ZMQ_SNDHWM: c_int = 23;
const ZMQ_RCVHWM: c_int = 24;
const ZMQ_RCVTIMEO: c_int = 27;
const ZMQ_LAST_ENDPOINT: c_int = 32;
const ZMQ_ROUTER_MANDATORY: c_int = 33;
const ZMQ_IMMEDIATE: c_int = 39;
const ZMQ_XPUB_VERBOSE: c_int = 40;
const ZMQ_CURVE_SERVER: c_int = 47;
const ZMQ_CURVE_PUBLICKEY: c_int = 48;
const ZMQ_CURVE_SECRETKEY: c_int = 49;
const ZMQ_CURVE_SERVERKEY: c_int = 50;
const ZMQ_ZAP_DOMAIN: c_int = 55;

/// `ZMQ_DONTWAIT`: fail with [`Error::EAGAIN`] instead of blocking.
pub const DONTWAIT: i32 = 1;
const ZMQ_SNDMORE: c_int = 2;
/// `ZMQ_POLLIN` in [`Socket::get_events`]: a message can be received.
pub const POLLIN: i32 = 1;
/// `ZMQ_POLLOUT` in [`Socket::get_events`]: a message can be sent.
pub const POLLOUT: i32 = 2;

/// Socket monitor events (`ZMQ_EVENT_*`), for [`Socket::monitor`].
pub mod event {
    /// A connection to a peer was made (TCP level, before the handshake).
    pub const CONNECTED: u16 = 0x0001;
    /// A connection was accepted (TCP level, before the handshake).
    pub const ACCEPTED: u16 = 0x0020;
    /// A connection was closed.
    pub const DISCONNECTED: u16 = 0x0200;
    /// The ZMTP handshake failed, no detail.
    pub const HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
    /// The ZMTP handshake (including CURVE) succeeded.
    pub const HANDSHAKE_SUCCEEDED: u16 = 0x1000;
    /// The handshake failed on a protocol error (wrong mechanism, bad
    /// CURVE box: for example the client used another server key).
    pub const HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
    /// The handshake failed because authentication (ZAP) refused the peer.
    pub const HANDSHAKE_FAILED_AUTH: u16 = 0x4000;
}

/// The socket types plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    /// `ZMQ_PAIR` (a monitor's reading end).
    Pair,
    /// `ZMQ_PUB`.
    Pub,
    /// `ZMQ_SUB`.
    Sub,
    /// `ZMQ_REP` (a ZAP handler).
    Rep,
    /// `ZMQ_DEALER`.
    Dealer,
    /// `ZMQ_ROUTER`.
    Router,
    /// `ZMQ_XPUB`.
    Xpub,
}

/// `ZMQ_PAIR`.
pub const PAIR: SocketType = SocketType::Pair;
/// `ZMQ_PUB`.
pub const PUB: SocketType = SocketType::Pub;
/// `ZMQ_SUB`.
pub const SUB: SocketType = SocketType::Sub;
/// `ZMQ_REP`.
pub const REP: SocketType = SocketType::Rep;
/// `ZMQ_DEALER`.
pub const DEALER: SocketType = SocketType::Dealer;
/// `ZMQ_ROUTER`.
pub const ROUTER: SocketType = SocketType::Router;
/// `ZMQ_XPUB`.
pub const XPUB: SocketType = SocketType::Xpub;

impl SocketType {
    fn raw(self) -> c_int {
        match self {
            SocketType::Pair => ZMQ_PAIR,
            SocketType::Pub => ZMQ_PUB,
            SocketType::Sub => ZMQ_SUB,
            SocketType::Rep => ZMQ_REP,
            SocketType::Dealer => ZMQ_DEALER,
            SocketType::Router => ZMQ_ROUTER,
            SocketType::Xpub => ZMQ_XPUB,
        }
    }
}

/// A libzmq error: its `errno` value (system codes, or libzmq's own above
/// `ZMQ_HAUSNUMERO`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error(i32);

impl Error {
    /// The operation would block (`DONTWAIT`, or a receive timeout).
    pub const EAGAIN: Error = Error(libc::EAGAIN);
    /// A ROUTER with `ZMQ_ROUTER_MANDATORY` has no peer of that identity.
    pub const EHOSTUNREACH: Error = Error(libc::EHOSTUNREACH);
    /// An invalid argument (option value, key, address).
    pub const EINVAL: Error = Error(libc::EINVAL);
    /// Interrupted by a signal.
    pub const EINTR: Error = Error(libc::EINTR);

    /// The `errno` value.
    pub fn code(self) -> i32 {
        self.0
    }

    fn last() -> Error {
        // SAFETY: reads libzmq's thread-local errno.
        Error(unsafe { ffi::zmq_errno() })
    }

    fn message(self) -> String {
        // SAFETY: zmq_strerror returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(ffi::zmq_strerror(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({}: {})", self.0, self.message())
    }
}

impl std::error::Error for Error {}

/// A libzmq result.
pub type Result<T> = std::result::Result<T, Error>;

fn check(rc: c_int) -> Result<c_int> {
    if rc < 0 {
        Err(Error::last())
    } else {
        Ok(rc)
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::EINVAL)
}

/// Whether this libzmq was built with `capability` (`"curve"`, `"ipc"`...).
pub fn has(capability: &str) -> bool {
    let Ok(c) = CString::new(capability) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { ffi::zmq_has(c.as_ptr()) == 1 }
}

/// A CURVE keypair, both halves Z85-encoded (40 characters each).
pub fn curve_keypair() -> Result<(String, String)> {
    let mut public = [0 as c_char; 41];
    let mut secret = [0 as c_char; 41];
    // SAFETY: both buffers hold 40 characters and the NUL.
    check(unsafe { ffi::zmq_curve_keypair(public.as_mut_ptr(), secret.as_mut_ptr()) })?;
    Ok((z85_string(&public), z85_string(&secret)))
}

/// The Z85 public key of a Z85 secret key (40 characters).
///
/// # Errors
/// `EINVAL` if `secret` is not 40 Z85 characters; `ENOTSUP` without CURVE.
pub fn curve_public(secret: &str) -> Result<String> {
    if secret.len() != 40 {
        return Err(Error::EINVAL);
    }
    let secret = c_string(secret)?;
    let mut public = [0 as c_char; 41];
    // SAFETY: `secret` is 40 characters and a NUL; `public` holds 41.
    check(unsafe { ffi::zmq_curve_public(public.as_mut_ptr(), secret.as_ptr()) })?;
    Ok(z85_string(&public))
}

/// The Z85 text of a 32-byte binary CURVE key (as a ZAP request carries
/// it); `None` for any other length.
pub fn z85_key(key: &[u8]) -> Option<String> {
    if key.len() != 32 {
        return None;
    }
    let mut out = [0 as c_char; 41];
    // SAFETY: 32 bytes (a multiple of 4) encode to 40 characters and a NUL.
    let rc = unsafe { ffi::zmq_z85_encode(out.as_mut_ptr(), key.as_ptr(), key.len()) };
    (!rc.is_null()).then(|| z85_string(&out))
}

fn z85_string(buf: &[c_char; 41]) -> String {
    // SAFETY: libzmq NUL-terminates the 40 characters it writes.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

struct RawContext(*mut c_void);

// SAFETY: a libzmq context is thread-safe.
unsafe impl Send for RawContext {}
// SAFETY: as above.
unsafe impl Sync for RawContext {}

impl Drop for RawContext {
    fn drop(&mut self) {
        // Every socket holds the context, so none is open any more and
        // zmq_ctx_term does not block. Retried if a signal interrupts it.
        // SAFETY: the pointer came from zmq_ctx_new and is terminated once.
        while unsafe { ffi::zmq_ctx_term(self.0) } < 0 && Error::last() == Error::EINTR {}
    }
}

/// A libzmq context (its I/O thread). Cheap to clone; terminated when the
/// last clone and the last socket made from it are dropped.
#[derive(Clone)]
pub struct Context {
    raw: Arc<RawContext>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context")
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    /// A new context.
    ///
    /// # Panics
    /// If libzmq cannot make one (out of memory or file descriptors).
    pub fn new() -> Context {
        // SAFETY: no arguments; a null return is checked.
        let raw = unsafe { ffi::zmq_ctx_new() };
        assert!(!raw.is_null(), "zmq_ctx_new failed: {}", Error::last());
        Context {
            raw: Arc::new(RawContext(raw)),
        }
    }

    /// A new socket of type `kind`.
    pub fn socket(&self, kind: SocketType) -> Result<Socket> {
        // SAFETY: a live context; a null return is checked.
        let raw = unsafe { ffi::zmq_socket(self.raw.0, kind.raw()) };
        if raw.is_null() {
            return Err(Error::last());
        }
        Ok(Socket {
            raw,
            _context: self.raw.clone(),
        })
    }
}

/// A libzmq socket. `Send` (libzmq allows moving a socket between threads
/// with a memory barrier, which moving a Rust value provides) but not `Sync`
/// (it may only be used by one thread at a time).
pub struct Socket {
    raw: *mut c_void,
    // Dropped after the socket is closed (fields drop in order after `drop`).
    _context: Arc<RawContext>,
}

// SAFETY: see the type's docs; `&Socket` is not shared across threads since
// the type is not `Sync`.
unsafe impl Send for Socket {}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Socket")
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the pointer came from zmq_socket and is closed once.
        unsafe { ffi::zmq_close(self.raw) };
    }
}

impl Socket {
    fn set_bytes(&self, option: c_int, value: &[u8]) -> Result<()> {
        // SAFETY: `value` is valid for `value.len()` bytes.
        check(unsafe { ffi::zmq_setsockopt(self.raw, option, value.as_ptr().cast(), value.len()) })
            .map(drop)
    }

    fn set_int(&self, option: c_int, value: i32) -> Result<()> {
        self.set_bytes(option, &value.to_ne_bytes())
    }

    fn get_int(&self, option: c_int) -> Result<i32> {
        let mut value: c_int = 0;
        let mut len = std::mem::size_of::<c_int>();
        // SAFETY: `value` is an int and `len` says so.
        check(unsafe {
            ffi::zmq_getsockopt(
                self.raw,
                option,
                (&mut value as *mut c_int).cast(),
                &mut len,
            )
        })?;
        Ok(value)
    }

    /// `ZMQ_SNDHWM`: messages queued per peer before sends block or drop.
    pub fn set_sndhwm(&self, value: i32) -> Result<()> {
        self.set_int(ZMQ_SNDHWM, value)
    }

    /// `ZMQ_RCVHWM`: messages held per peer before libzmq stops reading.
    pub fn set_rcvhwm(&self, value: i32) -> Result<()> {
        self.set_int(ZMQ_RCVHWM, value)
    }

    /// `ZMQ_LINGER`, in milliseconds: how long unsent messages are kept
    /// after close (`-1` forever).
    pub fn set_linger(&self, value: i32) -> Result<()> {
        self.set_int(ZMQ_LINGER, value)
    }

    /// `ZMQ_RCVTIMEO`, in milliseconds (`-1` blocks forever).
    pub fn set_rcvtimeo(&self, value: i32) -> Result<()> {
        self.set_int(ZMQ_RCVTIMEO, value)
    }

    /// `ZMQ_MAXMSGSIZE`: a larger inbound message disconnects the peer.
    pub fn set_maxmsgsize(&self, value: i64) -> Result<()> {
        self.set_bytes(ZMQ_MAXMSGSIZE, &value.to_ne_bytes())
    }

    /// `ZMQ_ROUTER_MANDATORY`: a send to an unknown identity fails with
    /// [`Error::EHOSTUNREACH`] instead of being dropped.
    pub fn set_router_mandatory(&self, value: bool) -> Result<()> {
        self.set_int(ZMQ_ROUTER_MANDATORY, value.into())
    }

    /// `ZMQ_IMMEDIATE`: queue only to completed connections.
    pub fn set_immediate(&self, value: bool) -> Result<()> {
        self.set_int(ZMQ_IMMEDIATE, value.into())
    }

    /// `ZMQ_XPUB_VERBOSE`: pass every subscription up, not only new ones.
    pub fn set_xpub_verbose(&self, value: bool) -> Result<()> {
        self.set_int(ZMQ_XPUB_VERBOSE, value.into())
    }

    /// `ZMQ_SUBSCRIBE`: receive messages starting with `prefix`.
    pub fn set_subscribe(&self, prefix: &[u8]) -> Result<()> {
        self.set_bytes(ZMQ_SUBSCRIBE, prefix)
    }

    /// `ZMQ_UNSUBSCRIBE`: undo one [`set_subscribe`](Self::set_subscribe).
    pub fn set_unsubscribe(&self, prefix: &[u8]) -> Result<()> {
        self.set_bytes(ZMQ_UNSUBSCRIBE, prefix)
    }

    /// `ZMQ_CURVE_SERVER`: this socket is the CURVE server of its
    /// connections (it needs [`set_curve_secretkey`](Self::set_curve_secretkey)).
    pub fn set_curve_server(&self, value: bool) -> Result<()> {
        self.set_int(ZMQ_CURVE_SERVER, value.into())
    }

    /// `ZMQ_CURVE_PUBLICKEY`: this socket's long-term public key (Z85).
    pub fn set_curve_publickey(&self, z85: &str) -> Result<()> {
        self.set_bytes(ZMQ_CURVE_PUBLICKEY, z85.as_bytes())
    }

    /// `ZMQ_CURVE_SECRETKEY`: this socket's long-term secret key (Z85).
    pub fn set_curve_secretkey(&self, z85: &str) -> Result<()> {
        self.set_bytes(ZMQ_CURVE_SECRETKEY, z85.as_bytes())
    }

    /// `ZMQ_CURVE_SERVERKEY`: the server's public key (Z85); makes this
    /// socket a CURVE client.
    pub fn set_curve_serverkey(&self, z85: &str) -> Result<()> {
        self.set_bytes(ZMQ_CURVE_SERVERKEY, z85.as_bytes())
    }

    /// `ZMQ_ZAP_DOMAIN`: the domain a server passes to the ZAP handler.
    pub fn set_zap_domain(&self, domain: &str) -> Result<()> {
        self.set_bytes(ZMQ_ZAP_DOMAIN, domain.as_bytes())
    }

    /// `ZMQ_FD`: the descriptor that becomes readable (edge-triggered)
    /// when [`get_events`](Self::get_events) may have changed.
    pub fn get_fd(&self) -> Result<std::os::raw::c_int> {
        // ZMQ_FD is an int on Unix (a SOCKET on Windows, which plane does
        // not support).
        self.get_int(ZMQ_FD)
    }

    /// `ZMQ_EVENTS`: [`POLLIN`] and/or [`POLLOUT`].
    pub fn get_events(&self) -> Result<i32> {
        self.get_int(ZMQ_EVENTS)
    }

    /// `ZMQ_LAST_ENDPOINT`: the address last bound (with the real port
    /// after binding port 0).
    pub fn get_last_endpoint(&self) -> Result<String> {
        let mut buf = [0u8; 1024];
        let mut len = buf.len();
        // SAFETY: `buf` is valid for `len` bytes.
        check(unsafe {
            ffi::zmq_getsockopt(
                self.raw,
                ZMQ_LAST_ENDPOINT,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        let s = CStr::from_bytes_until_nul(&buf[..len]).map_err(|_| Error::EINVAL)?;
        Ok(s.to_string_lossy().into_owned())
    }

    /// Bind to a ZeroMQ address (`tcp://host:port`, `ipc://path`, `inproc://name`).
    pub fn bind(&self, address: &str) -> Result<()> {
        let a = c_string(address)?;
        // SAFETY: a NUL-terminated string.
        check(unsafe { ffi::zmq_bind(self.raw, a.as_ptr()) }).map(drop)
    }

    /// Connect to a ZeroMQ address (asynchronously: libzmq reconnects).
    pub fn connect(&self, address: &str) -> Result<()> {
        let a = c_string(address)?;
        // SAFETY: a NUL-terminated string.
        check(unsafe { ffi::zmq_connect(self.raw, a.as_ptr()) }).map(drop)
    }

    /// Undo a [`connect`](Self::connect).
    pub fn disconnect(&self, address: &str) -> Result<()> {
        let a = c_string(address)?;
        // SAFETY: a NUL-terminated string.
        check(unsafe { ffi::zmq_disconnect(self.raw, a.as_ptr()) }).map(drop)
    }

    /// Publish this socket's `events` (a mask of [`event`] values) on a
    /// PAIR socket bound at `address` (`inproc://...`); read them with
    /// [`read_monitor_event`], often enough that its queue never fills (see
    /// [`monitor_stop`](Self::monitor_stop)).
    pub fn monitor(&self, address: &str, events: i32) -> Result<()> {
        let a = c_string(address)?;
        // SAFETY: a NUL-terminated string.
        check(unsafe { ffi::zmq_socket_monitor(self.raw, a.as_ptr(), events) }).map(drop)
    }

    /// Stop a [`monitor`](Self::monitor). Do it before dropping the reading
    /// end: libzmq sends monitor events blocking, from its I/O thread, so a
    /// monitor nobody reads (or a full one) stalls every socket of the
    /// context.
    pub fn monitor_stop(&self) -> Result<()> {
        // SAFETY: a null endpoint stops the monitor.
        check(unsafe { ffi::zmq_socket_monitor(self.raw, std::ptr::null(), 0) }).map(drop)
    }

    /// Send one message of one or more frames (`flags`: [`DONTWAIT`]).
    /// libzmq queues a multipart message atomically: once the first frame
    /// is accepted the rest are too (same pipe, high-water mark checked on
    /// the first frame only).
    pub fn send_multipart<'a, I>(&self, parts: I, flags: i32) -> Result<()>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut parts = parts.into_iter().peekable();
        while let Some(part) = parts.next() {
            let more = if parts.peek().is_some() {
                ZMQ_SNDMORE
            } else {
                0
            };
            // SAFETY: `part` is valid for its length; libzmq copies it.
            check(unsafe {
                ffi::zmq_send(self.raw, part.as_ptr().cast(), part.len(), flags | more)
            })?;
        }
        Ok(())
    }

    /// Send one single-frame message.
    pub fn send(&self, data: &[u8], flags: i32) -> Result<()> {
        self.send_multipart([data], flags)
    }

    /// Receive one frame, and whether more frames of the message follow.
    fn recv_frame(&self, flags: i32) -> Result<(Vec<u8>, bool)> {
        let mut msg = ffi::zmq_msg_t::zeroed();
        // SAFETY: `msg` is initialised before use and closed on every path;
        // its data is copied out before the close.
        unsafe {
            check(ffi::zmq_msg_init(&mut msg))?;
            if let Err(e) = check(ffi::zmq_msg_recv(&mut msg, self.raw, flags)) {
                ffi::zmq_msg_close(&mut msg);
                return Err(e);
            }
            let size = ffi::zmq_msg_size(&msg);
            let data = ffi::zmq_msg_data(&mut msg).cast::<u8>();
            let bytes = if size == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, size).to_vec()
            };
            let more = ffi::zmq_msg_more(&msg) == 1;
            ffi::zmq_msg_close(&mut msg);
            Ok((bytes, more))
        }
    }

    /// Receive one frame (the first, if the message has more).
    pub fn recv_bytes(&self, flags: i32) -> Result<Vec<u8>> {
        Ok(self.recv_frame(flags)?.0)
    }

    /// Receive a whole message (`flags`: [`DONTWAIT`]). Once its first
    /// frame has arrived the rest are there too (libzmq delivers messages
    /// atomically), so only the first receive can block or fail with
    /// [`Error::EAGAIN`].
    pub fn recv_multipart(&self, flags: i32) -> Result<Vec<Vec<u8>>> {
        let (first, mut more) = self.recv_frame(flags)?;
        let mut parts = vec![first];
        while more {
            let (part, m) = self.recv_frame(0)?;
            parts.push(part);
            more = m;
        }
        Ok(parts)
    }
}

/// One socket monitor event: what happened ([`event`]), its value (an
/// errno for failures) and the peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// One of the [`event`] values.
    pub event: u16,
    /// The event's value: an errno for failures, a descriptor otherwise.
    pub value: u32,
    /// The endpoint it concerns.
    pub address: String,
}

/// Read one event from a PAIR socket connected to a [`Socket::monitor`]
/// address: two frames, the first six bytes (event `u16`, value `u32`, in
/// host order), the second the endpoint.
pub fn read_monitor_event(pair: &Socket, flags: i32) -> Result<MonitorEvent> {
    let parts = pair.recv_multipart(flags)?;
    let head = parts
        .first()
        .filter(|h| h.len() >= 6)
        .ok_or(Error::EINVAL)?;
    Ok(MonitorEvent {
        event: u16::from_ne_bytes([head[0], head[1]]),
        value: u32::from_ne_bytes([head[2], head[3], head[4], head[5]]),
        address: parts
            .get(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_built_in() {
        assert!(has("curve"), "libzmq was built without CURVE");
        let (public, secret) = curve_keypair().unwrap();
        assert_eq!(public.len(), 40);
        assert_eq!(curve_public(&secret).unwrap(), public);
        assert_eq!(curve_public("short"), Err(Error::EINVAL));
    }

    #[test]
    fn curve_router_dealer() {
        let ctx = Context::new();
        let (server_public, server_secret) = curve_keypair().unwrap();
        let router = ctx.socket(ROUTER).unwrap();
        router.set_curve_server(true).unwrap();
        router.set_curve_secretkey(&server_secret).unwrap();
        router.bind("tcp://127.0.0.1:0").unwrap();
        let address = router.get_last_endpoint().unwrap();
        let dealer = ctx.socket(DEALER).unwrap();
        let (public, secret) = curve_keypair().unwrap();
        dealer.set_curve_serverkey(&server_public).unwrap();
        dealer.set_curve_publickey(&public).unwrap();
        dealer.set_curve_secretkey(&secret).unwrap();
        dealer.monitor("inproc://m", 0xffff).unwrap();
        let m = ctx.socket(PAIR).unwrap();
        m.connect("inproc://m").unwrap();
        dealer.connect(&address).unwrap();
        dealer.send(b"hello", 0).unwrap();
        router.set_rcvtimeo(3000).unwrap();
        let got = router.recv_multipart(0);
        while let Ok(e) = read_monitor_event(&m, DONTWAIT) {
            eprintln!("{e:?}");
        }
        assert_eq!(got.unwrap()[1], b"hello");
    }

    #[test]
    fn multipart_round_trip() {
        let ctx = Context::new();
        let a = ctx.socket(PAIR).unwrap();
        a.bind("inproc://round-trip").unwrap();
        let b = ctx.socket(PAIR).unwrap();
        b.connect("inproc://round-trip").unwrap();
        assert_eq!(b.recv_multipart(DONTWAIT), Err(Error::EAGAIN));
        a.send_multipart([&b"one"[..], b"", b"three"], 0).unwrap();
        b.set_rcvtimeo(5000).unwrap();
        assert_eq!(
            b.recv_multipart(0).unwrap(),
            vec![b"one".to_vec(), vec![], b"three".to_vec()]
        );
        assert_eq!(a.get_last_endpoint().unwrap(), "inproc://round-trip");
    }
}
