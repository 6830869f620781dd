//! Connection state of a backend, for health checks.

/// Whether a backend's transport is usable, as cheaply as the backend can tell.
///
/// Backends without a connection (the in-memory one) are always `Up`; a
/// networked backend reports what its client library knows, without doing I/O.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connected (or nothing to connect to).
    Up,
    /// Connecting or reconnecting; operations may wait or fail with `Connection`.
    Connecting,
    /// Disconnected and not currently trying.
    Down,
}

impl ConnectionState {
    /// Lower-case name: `up`, `connecting`, `down`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Up => "up",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Down => "down",
        }
    }

    /// Whether operations can be expected to work.
    pub const fn is_up(self) -> bool {
        matches!(self, ConnectionState::Up)
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
