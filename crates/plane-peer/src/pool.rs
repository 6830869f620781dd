//! Connections to peers, cached per peer: every brokerless transport keeps
//! one connection (a QUIC connection, a DEALER socket) per peer process and
//! shares it between all calls to that process.
//!
//! A connection is made once even when many calls want it at the same
//! moment; one that is no longer alive (its peer closed it, restarted, or
//! moved to a new address and so to a new key) is replaced on next use; a
//! failed connect is not cached, so the next call tries again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use plane_core::error::Result;
use tokio::sync::OnceCell;

/// Connections of type `C`, one per peer key `K`. Cheap to share behind an
/// `Arc`; the transport holds one per listener.
pub struct Pool<K, C> {
    map: Mutex<HashMap<K, Arc<OnceCell<C>>>>,
}

impl<K, C> Default for Pool<K, C> {
    fn default() -> Self {
        Pool {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, C> std::fmt::Debug for Pool<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peers", &self.map.lock().map_or(0, |m| m.len()))
            .finish()
    }
}

impl<K: Eq + Hash + Clone, C: Clone> Pool<K, C> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<C>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to `key`: the cached one while `alive` says it is,
    /// else one made by `connect` (at most one connect runs per key at a
    /// time; the others wait for it). `fresh` replaces the cached one
    /// regardless, for a caller that just found it dead.
    ///
    /// # Errors
    /// What `connect` failed with; nothing is cached then.
    pub async fn get<F, Fut>(
        &self,
        key: &K,
        fresh: bool,
        alive: impl Fn(&C) -> bool,
        connect: F,
    ) -> Result<C>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C>>,
    {
        let cell = {
            let mut map = self.lock();
            let stale = map
                .get(key)
                .is_some_and(|c| fresh || c.get().is_some_and(|c| !alive(c)));
            if stale {
                map.remove(key);
            }
            map.entry(key.clone()).or_default().clone()
        };
        let result = cell.get_or_try_init(connect).await.cloned();
        if result.is_err() {
            // Let the next call try again rather than inherit the failure.
            self.forget_cell(key, &cell);
        }
        result
    }

    /// Forget the connection to `key` if it is the one `same` recognises
    /// (not a newer one another call made meanwhile).
    pub fn forget(&self, key: &K, same: impl Fn(&C) -> bool) {
        let mut map = self.lock();
        if map.get(key).and_then(|c| c.get()).is_some_and(same) {
            map.remove(key);
        }
    }

    /// Forget every connection (after the listener restarted).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn forget_cell(&self, key: &K, cell: &Arc<OnceCell<C>>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_core::error::{Error, ErrorKind};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_connect_per_peer_until_it_dies_or_fails() {
        let pool: Pool<&str, usize> = Pool::default();
        let made = AtomicUsize::new(0);
        let connect = || async { Ok(made.fetch_add(1, Ordering::SeqCst)) };
        let (a, b) = tokio::join!(
            pool.get(&"p", false, |_| true, connect),
            pool.get(&"p", false, |_| true, connect)
        );
        assert_eq!((a.unwrap(), b.unwrap()), (0, 0), "made once, shared");
        // Dead: replaced on next use.
        assert_eq!(
            pool.get(&"p", false, |c| *c != 0, connect).await.unwrap(),
            1
        );
        // Asked fresh: replaced too.
        assert_eq!(pool.get(&"p", true, |_| true, connect).await.unwrap(), 2);
        // A failed connect is not cached.
        let failing = || async { Err::<usize, _>(Error::new(ErrorKind::Connection, "down")) };
        assert!(pool.get(&"q", false, |_| true, failing).await.is_err());
        assert_eq!(pool.get(&"q", false, |_| true, connect).await.unwrap(), 3);
        // Forgetting a connection another call already replaced keeps the new one.
        pool.forget(&"q", |c| *c == 99);
        assert_eq!(pool.get(&"q", false, |_| true, connect).await.unwrap(), 3);
        pool.forget(&"q", |c| *c == 3);
        assert_eq!(pool.get(&"q", false, |_| true, connect).await.unwrap(), 4);
        assert_eq!(made.load(Ordering::SeqCst), 5);
    }
}
