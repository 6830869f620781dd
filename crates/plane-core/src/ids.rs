//! The identities plane puts on the wire: calls, serving instances,
//! publishers.
//!
//! They live together, below every plane module, so that a module naming an
//! id (discovery naming an instance, the wire codec naming a call) does not
//! import the plane that mints it.

use crate::error::{Error, ErrorKind, Result};
pub use crate::wire::RequestId;

/// Identifies one serving instance of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u64);

impl InstanceId {
    /// A random instance id.
    pub fn random() -> Self {
        InstanceId(rand::random())
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        u64::from_str_radix(s, 16).map(InstanceId).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, "invalid instance id").with_source(e)
        })
    }
}

/// Identifies one publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublisherId(pub u128);

impl PublisherId {
    /// A new random, time-ordered id.
    pub fn new() -> Self {
        PublisherId(uuid::Uuid::now_v7().as_u128())
    }
}

impl Default for PublisherId {
    fn default() -> Self {
        PublisherId::new()
    }
}

impl std::fmt::Display for PublisherId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for PublisherId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        u128::from_str_radix(s, 16)
            .map(PublisherId)
            .map_err(|e| Error::new(ErrorKind::Decode, "invalid publisher id").with_source(e))
    }
}
