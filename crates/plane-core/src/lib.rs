//! plane-core: the transport-neutral heart of plane.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod message;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use message::{Body, Headers};
