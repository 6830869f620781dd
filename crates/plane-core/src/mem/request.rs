//! In-memory request plane (placeholder until implemented).
use std::sync::Arc;

use super::MemConfig;
use crate::error::{Error, Result};
use crate::request::*;

#[derive(Default)]
pub(crate) struct RequestHub {}

/// The in-memory request backend.
pub struct MemRequests {
    caps: RequestCapabilities,
    _hub: Arc<RequestHub>,
}

impl MemRequests {
    pub(crate) fn new(hub: Arc<RequestHub>, config: &MemConfig) -> Self {
        let mut caps = RequestCapabilities::default();
        caps.max_payload = config.max_payload;
        MemRequests { caps, _hub: hub }
    }
}

impl RequestBackend for MemRequests {
    fn name(&self) -> &'static str {
        super::NAME
    }
    fn capabilities(&self) -> &RequestCapabilities {
        &self.caps
    }
    async fn call(&self, _call: Call) -> Result<Box<dyn ReplyTransport>> {
        Err(Error::unsupported("request"))
    }
    async fn serve(
        &self,
        _e: &str,
        _i: InstanceId,
        _d: Dispatcher,
    ) -> Result<Box<dyn ServeTransport>> {
        Err(Error::unsupported("request"))
    }
}
