//! An upstream's `max_requests`: places taken by requests in flight and
//! given back when they end, without a lock (nothing ever waits for one: a
//! request that finds none is refused at once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The places of one upstream.
#[derive(Debug)]
pub struct Places {
    max: usize,
    taken: AtomicUsize,
}

/// One place, held until dropped.
#[derive(Debug)]
pub struct Place(Arc<Places>);

impl Places {
    /// `max` places, none taken.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    /// How many it has.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place, unless all are taken.
    pub fn take(self: &Arc<Self>) -> Option<Place> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_max_and_given_back_when_dropped() {
        let places = Places::new(2);
        let first = places.take().unwrap();
        let second = places.take().unwrap();
        assert!(places.take().is_none());
        drop(first);
        let third = places.take().unwrap();
        assert!(places.take().is_none());
        drop((second, third));
        assert_eq!(places.taken.load(Ordering::Acquire), 0);
    }
}
