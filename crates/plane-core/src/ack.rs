//! Acknowledgement of at-least-once deliveries, shared by durable events and
//! work-queue jobs.
//!
//! A backend implements [`Acker`] for one delivery; the plane wraps it in an
//! [`AckHandle`] that enforces "settle at most once" identically on every
//! backend, so a second `ack`/`nack` fails with
//! [`crate::ErrorKind::AlreadyAcked`] and never reaches the
//! transport.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::{Error, ErrorKind, Result};

/// Backend side of one delivery's acknowledgement.
pub trait Acker: Send + Sync + 'static {
    /// Acknowledge: the delivery is done and must not come back.
    fn ack(&self) -> BoxFuture<'_, Result<()>>;
    /// Negative acknowledgement: redeliver, after `delay` if given.
    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'_, Result<()>>;
    /// Still working: push the ack deadline out by a full ack wait.
    fn extend(&self) -> BoxFuture<'_, Result<()>>;
}

/// The settle-once guard around an [`Acker`].
pub struct AckHandle {
    acker: Box<dyn Acker>,
    settled: AtomicBool,
    nack_delay_supported: bool,
    extend_supported: bool,
}

impl AckHandle {
    /// Wrap a backend acker; the flags come from the plane's capabilities.
    pub fn new(acker: Box<dyn Acker>, nack_delay_supported: bool, extend_supported: bool) -> Self {
        AckHandle {
            acker,
            settled: AtomicBool::new(false),
            nack_delay_supported,
            extend_supported,
        }
    }

    fn settle(&self) -> Result<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::AlreadyAcked,
                "delivery was already acknowledged",
            ));
        }
        Ok(())
    }

    /// Acknowledge after processing. A second settle fails with `AlreadyAcked`.
    pub async fn ack(&self) -> Result<()> {
        self.settle()?;
        self.acker.ack().await
    }

    /// Ask for redelivery, optionally after `delay`.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        if delay.is_some() && !self.nack_delay_supported {
            return Err(Error::unsupported("nack_delay"));
        }
        self.settle()?;
        self.acker.nack(delay).await
    }

    /// Extend the ack deadline. Fails with `AlreadyAcked` once settled.
    pub async fn extend(&self) -> Result<()> {
        if !self.extend_supported {
            return Err(Error::unsupported("extend"));
        }
        if self.settled.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::AlreadyAcked,
                "delivery was already acknowledged",
            ));
        }
        self.acker.extend().await
    }

    /// Whether the delivery was acked or nacked through this handle.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckHandle")
            .field("settled", &self.is_settled())
            .finish()
    }
}
