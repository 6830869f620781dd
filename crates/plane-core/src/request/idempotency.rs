//! The server's memory of recently answered idempotency keys.
//!
//! A unary call carrying [`names::IDEMPOTENCY_KEY`](crate::message::names::IDEMPOTENCY_KEY)
//! claims its key before its handler runs. Exactly one call runs the handler
//! for a key at a time (the *owner*); a repeat arriving meanwhile waits for the
//! owner to finish, then is answered from the cache — or, if the owner ended
//! without an answer worth repeating (killed, panicked, timed out, a retryable
//! error), claims the key itself and runs the handler. Answers are kept for a
//! window and at most `max_entries` of them (oldest evicted first), so memory
//! stays bounded by `max_entries` × the largest reply.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::message::Message;

/// A unary call's answer, as repeated to a duplicate.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// The final reply.
    Reply(Message),
    /// A typed, non-retryable error.
    Error(ErrorKind, String),
}

impl Answer {
    pub(crate) fn error(e: &Error) -> Self {
        Answer::Error(e.kind(), e.message().to_owned())
    }

    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Answer::Reply(_) => "ok",
            Answer::Error(kind, _) => kind.as_str(),
        }
    }
}

/// What claiming a key found.
pub(crate) enum Claim {
    /// The key was answered within the window.
    Cached(Answer),
    /// Another call with the key is running; resolves when it ends.
    Wait(watch::Receiver<()>),
    /// This call runs the handler for the key.
    Owner(Owner),
}

#[derive(Default)]
struct Inner {
    /// Keys whose owner is running; the receiver resolves when it ends.
    running: HashMap<String, watch::Receiver<()>>,
    done: HashMap<String, (Instant, Answer)>,
    /// Completion order of `done`, for expiry and eviction. May hold stale
    /// pairs (a key completed again later); the time stamp tells them apart.
    order: VecDeque<(Instant, String)>,
}

/// Bounded, time-windowed map of idempotency key → answer.
pub(crate) struct Cache {
    window: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl Cache {
    pub(crate) fn new(window: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(Cache {
            window,
            max_entries,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((at, key)) = inner.order.pop_front() {
                if inner.done.get(&key).is_some_and(|(t, _)| *t == at) {
                    inner.done.remove(&key);
                }
            }
        }
    }

    /// The cached answer for `key`, if there is one within the window.
    pub(crate) fn lookup(&self, key: &str) -> Option<Answer> {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        inner.done.get(key).map(|(_, a)| a.clone())
    }

    /// Claim `key` for a call about to run.
    pub(crate) fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        if let Some((_, answer)) = inner.done.get(key) {
            return Claim::Cached(answer.clone());
        }
        if let Some(rx) = inner.running.get(key) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        inner.running.insert(key.to_owned(), rx);
        Claim::Owner(Owner {
            cache: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// Answers currently remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().done.len()
    }
}

/// The running owner of a key. Dropping it (with or without an answer)
/// releases the key and wakes the calls waiting on it.
pub(crate) struct Owner {
    cache: Arc<Cache>,
    key: String,
    /// Dropped with the owner, which resolves every waiter's receiver.
    _done: watch::Sender<()>,
}

impl Owner {
    /// Remember `answer` for the key (when there is one worth repeating).
    pub(crate) fn complete(self, answer: Option<Answer>) {
        if let Some(answer) = answer {
            let now = Instant::now();
            let mut inner = self.cache.lock();
            inner.done.insert(self.key.clone(), (now, answer));
            inner.order.push_back((now, self.key.clone()));
            while inner.done.len() > self.cache.max_entries {
                let Some((at, key)) = inner.order.pop_front() else {
                    break;
                };
                if inner.done.get(&key).is_some_and(|(t, _)| *t == at) {
                    inner.done.remove(&key);
                }
            }
        }
        // Drop removes the running entry and wakes the waiters, after the
        // answer is in place so that they find it.
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.cache.lock().running.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &'static str) -> Answer {
        Answer::Reply(Message::from(s))
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_window() {
        let cache = Cache::new(Duration::from_secs(10), 100);
        let Claim::Owner(owner) = cache.claim("k") else {
            panic!("first claim owns the key")
        };
        owner.complete(Some(reply("a")));
        assert!(matches!(cache.claim("k"), Claim::Cached(Answer::Reply(_))));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.lookup("k").is_none());
        assert!(matches!(cache.claim("k"), Claim::Owner(_)));
    }

    #[tokio::test]
    async fn oldest_answers_are_evicted_beyond_max_entries() {
        let cache = Cache::new(Duration::from_secs(60), 2);
        for key in ["a", "b", "c"] {
            let Claim::Owner(owner) = cache.claim(key) else {
                panic!("fresh key")
            };
            owner.complete(Some(reply("x")));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("a").is_none());
        assert!(cache.lookup("b").is_some() && cache.lookup("c").is_some());
    }

    #[tokio::test]
    async fn a_waiter_wakes_to_the_answer_or_to_a_free_key() {
        let cache = Cache::new(Duration::from_secs(60), 10);
        let Claim::Owner(owner) = cache.claim("k") else {
            panic!("fresh key")
        };
        let Claim::Wait(mut rx) = cache.claim("k") else {
            panic!("a second claim waits")
        };
        // An owner that ends without an answer frees the key.
        drop(owner);
        assert!(rx.changed().await.is_err());
        let Claim::Owner(owner) = cache.claim("k") else {
            panic!("the key is free again")
        };
        let Claim::Wait(mut rx) = cache.claim("k") else {
            panic!("waits")
        };
        owner.complete(Some(Answer::Error(ErrorKind::NotFound, "gone".into())));
        assert!(rx.changed().await.is_err());
        assert!(matches!(
            cache.claim("k"),
            Claim::Cached(Answer::Error(ErrorKind::NotFound, _))
        ));
    }
}
