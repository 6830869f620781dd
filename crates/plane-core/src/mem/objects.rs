//! In-memory objects plane (placeholder until implemented).
use std::sync::Arc;

use super::MemConfig;
use crate::error::{Error, Result};
use crate::objects::*;

#[derive(Default)]
pub(crate) struct ObjectHub {}

/// The in-memory objects backend.
pub struct MemObjects {
    caps: ObjectsCapabilities,
    _hub: Arc<ObjectHub>,
}

impl MemObjects {
    pub(crate) fn new(hub: Arc<ObjectHub>, _config: &MemConfig) -> Self {
        MemObjects {
            caps: ObjectsCapabilities::default(),
            _hub: hub,
        }
    }
}

impl ObjectsBackend for MemObjects {
    fn name(&self) -> &'static str {
        super::NAME
    }
    fn capabilities(&self) -> &ObjectsCapabilities {
        &self.caps
    }
    async fn create_bucket(&self, _n: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        Err(Error::unsupported("objects"))
    }
    async fn open_bucket(&self, _n: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        Err(Error::unsupported("objects"))
    }
    async fn delete_bucket(&self, _n: &str) -> Result<()> {
        Err(Error::unsupported("objects"))
    }
}
