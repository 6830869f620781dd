//! The connector and session of every brokerless backend, written once.
//!
//! A transport crate says what is its own — its name and schemes, how its
//! configuration is read from a URL and checked, the links its request plane
//! runs over, and how its events plane is built — by implementing
//! [`Transport`]; the registry glue is [`PeerConnector`], and the request
//! plane is [`PeerRequests`] over the transport's links. A session
//! ([`PeerPlanes`]) opens [`Discovery`] once and binds the request plane
//! once, so the planes of one URL share one discovery kv connection and, on
//! QUIC, one endpoint.

use std::marker::PhantomData;

use futures_util::future::BoxFuture;
use plane_core::discovery::{Discovery, DiscoveryConfig};
use plane_core::registry::{Connector, Registry};
use plane_core::session::{Session, SessionBackend};
use plane_core::{Events, Requests, Result};
use tokio::sync::OnceCell;
use url::Url;

use crate::{PeerRequests, RequestLinks};

/// What a brokerless transport crate provides to [`PeerConnector`].
pub trait Transport: Send + Sync + 'static {
    /// Backend name (`"quic"`, `"zmq"`).
    const NAME: &'static str;
    /// URL schemes it answers to.
    const SCHEMES: &'static [&'static str];
    /// Its configuration.
    type Config: Clone + Send + Sync + 'static;

    /// What its request plane runs over.
    type Links: RequestLinks<Transport = Self>;

    /// Read the configuration from a URL of one of [`SCHEMES`](Transport::SCHEMES).
    ///
    /// # Errors
    /// `InvalidConfig` naming the key that is wrong.
    fn config(url: &Url) -> Result<Self::Config>;
    /// Check a configuration however it was built (from a URL or in code);
    /// every plane's constructor calls it.
    ///
    /// # Errors
    /// `InvalidConfig` naming the setting that is out of range.
    fn validate(config: &Self::Config) -> Result<()>;
    /// The kv URL and settings of the discovery plane `config` names.
    fn discovery(config: &Self::Config) -> (&str, &DiscoveryConfig);
    /// Build the events plane of a session. A transport whose events share
    /// the request plane's listener (QUIC) takes [`PeerPlanes::requests`],
    /// so one URL binds one endpoint.
    fn events(planes: &PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>>
    where
        Self: Sized;
}

/// Open the discovery plane that `config` of transport `T` names.
///
/// # Errors
/// Whatever building the kv plane or opening the bucket fails with.
pub async fn discovery_of<T: Transport>(
    config: &T::Config,
    registry: &Registry,
) -> Result<Discovery> {
    let (url, discovery) = T::discovery(config);
    crate::open_discovery(registry, url, discovery).await
}

/// The registry connector of transport `T`.
pub struct PeerConnector<T>(PhantomData<fn() -> T>);

impl<T> PeerConnector<T> {
    /// The connector.
    pub const fn new() -> Self {
        PeerConnector(PhantomData)
    }
}

impl<T> Default for PeerConnector<T> {
    fn default() -> Self {
        PeerConnector::new()
    }
}

impl<T> Clone for PeerConnector<T> {
    fn clone(&self) -> Self {
        PeerConnector::new()
    }
}

impl<T> std::fmt::Debug for PeerConnector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PeerConnector")
            .field(&std::any::type_name::<T>())
            .finish()
    }
}

/// The planes of one brokerless URL: its configuration, the registry that
/// builds its discovery kv, and, each built on first use and then shared,
/// that discovery and the request plane.
pub struct PeerPlanes<T: Transport> {
    config: T::Config,
    registry: Registry,
    discovery: OnceCell<Discovery>,
    requests: OnceCell<PeerRequests<T::Links>>,
}

impl<T: Transport> std::fmt::Debug for PeerPlanes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPlanes")
            .field("backend", &T::NAME)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> PeerPlanes<T> {
    fn open(url: &Url, registry: &Registry) -> Result<Self> {
        Ok(PeerPlanes {
            config: T::config(url)?,
            registry: registry.clone(),
            discovery: OnceCell::new(),
            requests: OnceCell::new(),
        })
    }

    /// The URL's configuration.
    pub fn config(&self) -> &T::Config {
        &self.config
    }

    /// The discovery plane, opened on first use.
    ///
    /// # Errors
    /// Whatever building the kv plane or opening the bucket fails with.
    pub async fn discovery(&self) -> Result<Discovery> {
        self.discovery
            .get_or_try_init(|| discovery_of::<T>(&self.config, &self.registry))
            .await
            .cloned()
    }

    /// The request plane, bound on first use; a failed bind is tried again
    /// on the next call.
    ///
    /// # Errors
    /// Whatever opening discovery or [`PeerRequests::connect`] fails with.
    pub async fn requests(&self) -> Result<PeerRequests<T::Links>> {
        self.requests
            .get_or_try_init(|| async {
                PeerRequests::connect(self.config.clone(), self.discovery().await?)
            })
            .await
            .cloned()
    }
}

impl<T: Transport> SessionBackend for PeerPlanes<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn requests(&self) -> BoxFuture<'_, Result<Requests>> {
        Box::pin(async move { Ok(Requests::new(PeerPlanes::requests(self).await?)) })
    }

    fn events(&self) -> BoxFuture<'_, Result<Events>> {
        T::events(self)
    }
}

impl<T: Transport> Connector for PeerConnector<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn schemes(&self) -> &'static [&'static str] {
        T::SCHEMES
    }

    fn session<'a>(
        &'a self,
        url: &'a Url,
        registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Option<Session>>> {
        Box::pin(async move { Ok(Some(Session::new(PeerPlanes::<T>::open(url, registry)?))) })
    }

    fn requests<'a>(
        &'a self,
        url: &'a Url,
        registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Requests>> {
        Box::pin(
            async move { SessionBackend::requests(&PeerPlanes::<T>::open(url, registry)?).await },
        )
    }

    fn events<'a>(&'a self, url: &'a Url, registry: &'a Registry) -> BoxFuture<'a, Result<Events>> {
        Box::pin(async move { PeerPlanes::<T>::open(url, registry)?.events().await })
    }
}
