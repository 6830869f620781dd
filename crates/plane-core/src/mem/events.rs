//! In-memory events plane (placeholder until implemented).
use std::sync::Arc;

use super::MemConfig;
use crate::error::{Error, Result};
use crate::events::*;

#[derive(Default)]
pub(crate) struct EventHub {}

/// The in-memory events backend.
pub struct MemEvents {
    caps: EventsCapabilities,
    _hub: Arc<EventHub>,
}

impl MemEvents {
    pub(crate) fn new(hub: Arc<EventHub>, config: &MemConfig) -> Self {
        let mut caps = EventsCapabilities::default();
        caps.max_payload = config.max_payload;
        MemEvents { caps, _hub: hub }
    }
}

impl EventsBackend for MemEvents {
    fn name(&self) -> &'static str {
        super::NAME
    }
    fn capabilities(&self) -> &EventsCapabilities {
        &self.caps
    }
    async fn publish(&self, _event: Event) -> Result<()> {
        Err(Error::unsupported("events"))
    }
    async fn subscribe(&self, _o: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        Err(Error::unsupported("events"))
    }
    async fn create_stream(&self, _c: StreamConfig) -> Result<()> {
        Err(Error::unsupported("durable"))
    }
    async fn delete_stream(&self, _n: &str) -> Result<()> {
        Err(Error::unsupported("durable"))
    }
    async fn publish_durable(&self, _e: Event, _m: Option<String>) -> Result<PublishAck> {
        Err(Error::unsupported("durable"))
    }
    async fn consume(&self, _c: ConsumerConfig) -> Result<Box<dyn DeliveryTransport>> {
        Err(Error::unsupported("durable"))
    }
}
