//! The sans-IO wire protocol. (Interim: only the request id, until the full
//! codec lands.)

use std::fmt;
use std::str::FromStr;

/// A 128-bit request id, a UUIDv7 when generated here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u128);

impl RequestId {
    /// A new time-ordered UUIDv7 id.
    pub fn new_v7() -> Self {
        RequestId(uuid::Uuid::now_v7().as_u128())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

impl FromStr for RequestId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| RequestId(u.as_u128()))
            .map_err(|e| {
                crate::Error::new(crate::ErrorKind::Decode, "invalid request id").with_source(e)
            })
    }
}
