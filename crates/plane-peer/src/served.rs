//! The serving side's bookkeeping of a brokerless request plane: which
//! endpoint instances a process serves, routed by [`Endpoints`] and
//! registered in [discovery](plane_core::discovery), and how they are withdrawn
//! and re-registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use plane_core::discovery::{Discovery, Instance, Registration};
use plane_core::error::Result;
use plane_core::request::{Dispatcher, InstanceId, ServeTransport};

use super::Endpoints;

/// Endpoint name and instance.
type Key = (String, InstanceId);

/// The endpoint instances one process serves through one transport listener:
/// the routing table its listener reads ([`Served::endpoints`]) and the
/// discovery registration of each instance. Cheap to clone.
#[derive(Clone)]
pub struct Served {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    endpoints: Endpoints,
    /// `None` while an instance is being re-registered.
    registrations: Mutex<HashMap<Key, Option<Registration>>>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Option<Registration>>> {
        self.registrations.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Served {
    /// Nothing served yet; instances will be registered in `discovery`.
    pub fn new(discovery: Discovery) -> Self {
        Served {
            inner: Arc::new(Inner {
                discovery,
                endpoints: Endpoints::new(),
                registrations: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The routing table of the served instances, for the listener.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// Route calls for `dispatcher`'s endpoint instance to it and register
    /// `record` (that instance at this process's address) in discovery.
    /// Closing the returned transport withdraws both; it does nothing once
    /// this `Served` and its clones are gone.
    ///
    /// # Errors
    /// Whatever registering fails with; the instance is then not routed.
    pub async fn serve(
        &self,
        dispatcher: Dispatcher,
        record: Instance,
    ) -> Result<Box<dyn ServeTransport>> {
        let key = (dispatcher.endpoint().to_owned(), dispatcher.instance());
        self.inner.endpoints.insert(dispatcher);
        let registration = match self.inner.discovery.register(record).await {
            Ok(r) => r,
            Err(e) => {
                self.inner.endpoints.remove(&key.0, key.1);
                return Err(e);
            }
        };
        self.inner.lock().insert(key.clone(), Some(registration));
        Ok(Box::new(ServedInstance {
            served: Arc::downgrade(&self.inner),
            key,
        }))
    }

    /// Register every served instance again, with the record `record` makes
    /// for it: after a restart on a new address. Each old record is removed
    /// first; an instance closed meanwhile is not registered again.
    ///
    /// # Errors
    /// Whatever making a record, registering or deregistering fails with;
    /// instances after the failing one are left as they were.
    pub async fn reregister(
        &self,
        record: impl Fn(&str, InstanceId) -> Result<Instance>,
    ) -> Result<()> {
        let keys: Vec<Key> = self.inner.lock().keys().cloned().collect();
        for key in keys {
            let old = self.inner.lock().get_mut(&key).and_then(Option::take);
            if let Some(old) = old {
                old.deregister().await?;
            }
            let registration = self
                .inner
                .discovery
                .register(record(&key.0, key.1)?)
                .await?;
            let leftover = match self.inner.lock().get_mut(&key) {
                Some(slot) => {
                    *slot = Some(registration);
                    None
                }
                // Closed while we re-registered: undo.
                None => Some(registration),
            };
            if let Some(r) = leftover {
                r.deregister().await?;
            }
        }
        Ok(())
    }
}

/// One served instance, as the plane's `Server` holds it.
struct ServedInstance {
    served: Weak<Inner>,
    key: Key,
}

impl ServeTransport for ServedInstance {
    fn close(&self) {
        let Some(served) = self.served.upgrade() else {
            return;
        };
        served.endpoints.remove(&self.key.0, self.key.1);
        let registration = served.lock().remove(&self.key).flatten();
        if let Some(r) = registration {
            // Remove the record now rather than when its lease runs out, so
            // callers stop picking this instance at once.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = r.deregister().await {
                        tracing::warn!(error = %e, "cannot deregister a closed endpoint instance");
                    }
                });
            }
        }
    }
}
