//! Instance selection for backends that choose instances on the caller's side
//! (the in-memory backend, and brokerless transports fed by discovery).

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::{InstanceId, Route};
use crate::error::{Error, ErrorKind, Result};

/// Picks one instance per call according to a [`Route`]. One per endpoint
/// (or per caller) so that round-robin turns are fair within it.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer whose round-robin starts at the first instance.
    pub fn new() -> Self {
        Balancer::default()
    }

    /// Index of the chosen candidate.
    ///
    /// `id_of` names a candidate and `load_of` reports its calls in flight
    /// (used by power-of-two choices).
    ///
    /// # Errors
    /// `NoResponders` when there are no candidates, or when a directly
    /// addressed instance is not among them.
    pub fn pick<T>(
        &self,
        route: Route,
        candidates: &[T],
        id_of: impl Fn(&T) -> InstanceId,
        load_of: impl Fn(&T) -> usize,
    ) -> Result<usize> {
        let n = candidates.len();
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NoResponders,
                "no instance serves the endpoint",
            ));
        }
        Ok(match route {
            Route::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Route::Random => rand::rng().random_range(0..n),
            Route::PowerOfTwo => {
                if n == 1 {
                    0
                } else {
                    let mut rng = rand::rng();
                    let a = rng.random_range(0..n);
                    // A second, different index: shift by 1..n-1.
                    let b = (a + rng.random_range(1..n)) % n;
                    if load_of(&candidates[b]) < load_of(&candidates[a]) {
                        b
                    } else {
                        a
                    }
                }
            }
            Route::Instance(id) => {
                candidates
                    .iter()
                    .position(|c| id_of(c) == id)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NoResponders,
                            format!("instance {id} does not serve the endpoint"),
                        )
                    })?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies() {
        let b = Balancer::new();
        let c = [
            (InstanceId(1), 5usize),
            (InstanceId(2), 0),
            (InstanceId(3), 9),
        ];
        let id = |t: &(InstanceId, usize)| t.0;
        let load = |t: &(InstanceId, usize)| t.1;
        let rr: Vec<usize> = (0..6)
            .map(|_| b.pick(Route::RoundRobin, &c, id, load).unwrap())
            .collect();
        assert_eq!(rr, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(
            b.pick(Route::Instance(InstanceId(3)), &c, id, load)
                .unwrap(),
            2
        );
        assert_eq!(
            b.pick(Route::Instance(InstanceId(7)), &c, id, load)
                .unwrap_err()
                .kind(),
            ErrorKind::NoResponders
        );
        // Power of two never picks the most loaded of the pair; over many picks
        // the idle instance is chosen whenever it is drawn.
        for _ in 0..100 {
            let i = b.pick(Route::PowerOfTwo, &c, id, load).unwrap();
            assert_ne!(i, 2, "instance 3 is the most loaded and is never preferred");
        }
        let empty: [(InstanceId, usize); 0] = [];
        assert_eq!(
            b.pick(Route::Random, &empty, id, load).unwrap_err().kind(),
            ErrorKind::NoResponders
        );
    }
}
