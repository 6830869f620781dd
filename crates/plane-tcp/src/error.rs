//! How socket errors become plane's kinds: the mapping every transport over
//! TCP sockets shares ([`plane_peer::net::io_error`], `Connection` naming
//! what failed).

pub(crate) use plane_peer::net::io_error;
