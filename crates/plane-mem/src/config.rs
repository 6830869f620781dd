//! The configuration of a hub's handles: one struct read from a `mem://`
//! URL's query (keys in `docs/mem.md`, the crate docs), checked by one
//! [`MemConfig::validate`].

use plane_core::error::{Error, ErrorKind, Result};
use plane_core::registry::QueryParams;
use url::Url;

/// Configuration of an in-memory hub's handles, from the URL query.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemConfig {
    /// Largest request, reply, event or job payload (body plus headers).
    pub max_payload: usize,
    /// Largest kv value.
    pub max_value: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            max_payload: 8 * 1024 * 1024,
            max_value: 1024 * 1024,
        }
    }
}

impl MemConfig {
    /// Read the configuration from a `mem://` URL's query (keys in the
    /// crate docs).
    ///
    /// # Errors
    /// `InvalidConfig` for an unknown key or a bad value.
    pub fn from_url(url: &Url) -> Result<Self> {
        let mut q = QueryParams::new(url)?;
        let d = MemConfig::default();
        let config = MemConfig {
            max_payload: q.take("max_payload")?.unwrap_or(d.max_payload),
            max_value: q.take("max_value")?.unwrap_or(d.max_value),
        };
        q.finish()?;
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration: reading a URL calls this. The hub's own
    /// constructors ([`Hub::requests`](crate::Hub::requests), …) take a
    /// configuration as given, for tests that want odd limits; a zero limit
    /// there refuses every payload rather than failing.
    ///
    /// # Errors
    /// `InvalidConfig` when a limit is zero.
    pub fn validate(&self) -> Result<()> {
        if self.max_payload == 0 || self.max_value == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload and max_value must be positive",
            ));
        }
        Ok(())
    }
}
