//! In-memory kv plane (placeholder until implemented).
use std::sync::Arc;

use super::MemConfig;
use crate::error::{Error, Result};
use crate::kv::*;

#[derive(Default)]
pub(crate) struct KvHub {}

/// The in-memory kv backend.
pub struct MemKv {
    caps: KvCapabilities,
    _hub: Arc<KvHub>,
}

impl MemKv {
    pub(crate) fn new(hub: Arc<KvHub>, config: &MemConfig) -> Self {
        let mut caps = KvCapabilities::default();
        caps.max_value = config.max_value;
        MemKv { caps, _hub: hub }
    }
}

impl KvBackend for MemKv {
    fn name(&self) -> &'static str {
        super::NAME
    }
    fn capabilities(&self) -> &KvCapabilities {
        &self.caps
    }
    async fn create_bucket(&self, _c: BucketConfig) -> Result<Arc<dyn DynKvBucketBackend>> {
        Err(Error::unsupported("kv"))
    }
    async fn open_bucket(&self, _n: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        Err(Error::unsupported("kv"))
    }
    async fn delete_bucket(&self, _n: &str) -> Result<()> {
        Err(Error::unsupported("kv"))
    }
}
