//! Retiring what a reload replaced. A retired config's last holder may be
//! any request or background task, and its drop is no small thing (caches
//! of up to `cache.max_entries` tokens, the route table, a file store that
//! writes as it closes): it must not stall a runtime thread, and with it
//! every connection that thread serves (with `server.workers: 1`, all).

use std::ops::Deref;
use std::sync::Arc;

/// Lets go of `shared`: when this was its last holder, the value is dropped
/// on the blocking pool instead of here; otherwise only the count falls.
pub fn release<T: Send + Sync + 'static>(shared: Arc<T>) {
    if let Some(last) = Arc::into_inner(shared) {
        off_runtime(last);
    }
}

fn off_runtime<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
    }
}

/// An `Arc` [`release`]d however its holder ends: a request's future that
/// hyper drops because its client went away included.
pub struct Held<T: Send + Sync + 'static>(Option<Arc<T>>);

impl<T: Send + Sync + 'static> Held<T> {
    /// Holds `shared` until dropped.
    pub fn new(shared: Arc<T>) -> Self {
        Self(Some(shared))
    }
}

impl<T: Send + Sync + 'static> Deref for Held<T> {
    type Target = Arc<T>;

    fn deref(&self) -> &Arc<T> {
        match &self.0 {
            Some(shared) => shared,
            // Emptied only by `drop`, after which nothing can reach it.
            None => unreachable!("a Held is emptied only as it is dropped"),
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Held<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            release(shared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    /// Records the thread it is dropped on.
    struct Witness(Arc<Mutex<Option<ThreadId>>>);

    impl Drop for Witness {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(std::thread::current().id());
        }
    }

    async fn dropped_on(seen: &Mutex<Option<ThreadId>>) -> ThreadId {
        for _ in 0..1000 {
            if let Some(thread) = *seen.lock().unwrap() {
                return thread;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("never dropped");
    }

    #[tokio::test]
    async fn the_last_holder_drops_off_the_runtime_thread() {
        let here = std::thread::current().id();
        for by_guard in [false, true] {
            let seen = Arc::new(Mutex::new(None));
            let shared = Arc::new(Witness(Arc::clone(&seen)));
            let other = Arc::clone(&shared);
            // Not the last holder: nothing is dropped.
            if by_guard {
                drop(Held::new(other));
            } else {
                release(other);
            }
            tokio::task::yield_now().await;
            assert!(seen.lock().unwrap().is_none());
            if by_guard {
                drop(Held::new(shared));
            } else {
                release(shared);
            }
            assert_ne!(dropped_on(&seen).await, here, "by_guard: {by_guard}");
        }
    }

    #[test]
    fn outside_a_runtime_the_value_is_dropped_at_once() {
        let seen = Arc::new(Mutex::new(None));
        release(Arc::new(Witness(Arc::clone(&seen))));
        assert_eq!(*seen.lock().unwrap(), Some(std::thread::current().id()));
    }
}
