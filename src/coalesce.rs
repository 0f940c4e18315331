//! Single-flight machinery shared by manifest fetches and blob fills. [`Inflight`] is the map
//! of work in progress; whoever starts an entry gets a [`Leave`] guard that removes it on
//! drop, so a finished, failed or panicking run never leaves a dead entry that later callers
//! would join. [`SingleFlight`] runs a future once per key for every concurrent caller, in its
//! own task (tracked, so shutdown waits for it), so the first caller going away does not
//! cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Work in progress by key. Cheap to clone.
pub struct Inflight<K, V> {
    // A std Mutex: held only for a lookup, insert or remove, never across an await and never
    // around I/O.
    map: Arc<Mutex<HashMap<K, V>>>,
}

impl<K, V> Clone for Inflight<K, V> {
    fn clone(&self) -> Self {
        Inflight { map: self.map.clone() }
    }
}

impl<K, V> Default for Inflight<K, V> {
    fn default() -> Self {
        Inflight { map: Arc::default() }
    }
}

/// Removes its key from the map when dropped: when the work ends, fails or panics.
pub struct Leave<K: Hash + Eq, V> {
    map: Arc<Mutex<HashMap<K, V>>>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for Leave<K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Inflight<K, V> {
    /// The entry for `key`: `(value, None)` when joining one in progress; otherwise `start` is
    /// called (under the lock: it must not block) and may decline (`None`) or give the value
    /// to insert, returned with the guard that removes it.
    pub fn join_or_start(&self, key: &K, start: impl FnOnce() -> Option<V>) -> Option<(V, Option<Leave<K, V>>)> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(key) {
            return Some((v.clone(), None));
        }
        let v = start()?;
        map.insert(key.clone(), v.clone());
        let leave = Leave {
            map: self.map.clone(),
            key: key.clone(),
        };
        Some((v, Some(leave)))
    }

    /// A copy of every entry in progress (for the status page).
    pub fn entries(&self) -> Vec<(K, V)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Whether nothing is in progress.
    pub fn is_empty(&self) -> bool {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// At most one run per key at a time. Cheap to clone.
pub struct SingleFlight<K, V> {
    inflight: Inflight<K, watch::Receiver<Option<V>>>,
    tasks: TaskTracker,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            inflight: self.inflight.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs spawned on `tasks`, so shutdown can wait for them.
    pub fn new(tasks: TaskTracker) -> SingleFlight<K, V> {
        SingleFlight {
            inflight: Inflight::default(),
            tasks,
        }
    }

    /// Run `work` for `key`, or wait for the run already in progress. Returns the value and
    /// whether this call joined another's run; `None` if the work's task panicked. `work` comes
    /// boxed: an upstream exchange is a large future, and held inline it would make every
    /// caller's future (and every request's, cache hits included) as large and as slow to move.
    pub async fn run(&self, key: K, work: Pin<Box<dyn Future<Output = V> + Send>>) -> (Option<V>, bool) {
        let mut sender = None;
        let (mut rx, leave) = self
            .inflight
            .join_or_start(&key, || {
                let (tx, rx) = watch::channel(None);
                sender = Some(tx);
                Some(rx)
            })
            .expect("starting a flight never declines");
        let joined = leave.is_none();
        if let (Some(tx), Some(leave)) = (sender, leave) {
            self.tasks.spawn(async move {
                let v = work.await;
                drop(leave);
                let _ = tx.send(Some(v));
            });
        }
        loop {
            if let Some(v) = rx.borrow_and_update().clone() {
                return (Some(v), joined);
            }
            if rx.changed().await.is_err() {
                return (None, joined);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf: SingleFlight<&'static str, usize> = SingleFlight::new(TaskTracker::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                sf.run(
                    "k",
                    Box::pin(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        42
                    }),
                )
                .await
            }));
        }
        while sf.inflight.is_empty() || runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let mut joined = 0;
        for h in handles {
            let (v, j) = h.await.unwrap();
            assert_eq!(v, Some(42));
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one run for all callers");
        assert_eq!(joined, 15);
        assert!(sf.inflight.is_empty(), "key removed after the run");
    }

    #[tokio::test]
    async fn a_panicking_run_releases_its_key() {
        let sf: SingleFlight<u8, u8> = SingleFlight::new(TaskTracker::new());
        let (v, _) = sf.run(1, Box::pin(async { panic!("boom") })).await;
        assert_eq!(v, None);
        let (v, joined) = sf.run(1, Box::pin(async { 7 })).await;
        assert_eq!((v, joined), (Some(7), false), "a later call runs afresh");
    }

    #[test]
    fn a_dropped_guard_removes_its_entry_and_a_declined_start_inserts_nothing() {
        let map: Inflight<u8, u8> = Inflight::default();
        assert!(map.join_or_start(&1, || None).is_none(), "declined");
        assert!(map.is_empty());
        let (v, leave) = map.join_or_start(&1, || Some(5)).unwrap();
        assert_eq!((v, leave.is_some()), (5, true), "started");
        let (v, joined) = map.join_or_start(&1, || Some(6)).unwrap();
        assert_eq!((v, joined.is_none()), (5, true), "joined the running entry");
        drop(leave);
        assert!(map.is_empty(), "the guard removed it");
    }
}
