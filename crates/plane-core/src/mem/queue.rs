//! In-memory queue plane (placeholder until implemented).
use std::sync::Arc;

use super::MemConfig;
use crate::error::{Error, Result};
use crate::queue::*;

#[derive(Default)]
pub(crate) struct QueueHub {}

/// The in-memory queue backend.
pub struct MemQueues {
    caps: QueueCapabilities,
    _hub: Arc<QueueHub>,
}

impl MemQueues {
    pub(crate) fn new(hub: Arc<QueueHub>, config: &MemConfig) -> Self {
        let mut caps = QueueCapabilities::default();
        caps.max_payload = config.max_payload;
        MemQueues { caps, _hub: hub }
    }
}

impl QueuesBackend for MemQueues {
    fn name(&self) -> &'static str {
        super::NAME
    }
    fn capabilities(&self) -> &QueueCapabilities {
        &self.caps
    }
    async fn create_queue(&self, _c: QueueConfig) -> Result<Arc<dyn DynQueueBackend>> {
        Err(Error::unsupported("queue"))
    }
    async fn open_queue(&self, _n: &str) -> Result<Arc<dyn DynQueueBackend>> {
        Err(Error::unsupported("queue"))
    }
    async fn delete_queue(&self, _n: &str) -> Result<()> {
        Err(Error::unsupported("queue"))
    }
}
