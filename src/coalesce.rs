//! Request coalescing for manifests and tag revalidations: concurrent callers with the same key
//! share one run of the work. The work runs in its own task, so the first caller going away
//! does not cancel it for the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Map<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// At most one run per key at a time. Cheap to clone.
pub struct SingleFlight<K, V> {
    // A std Mutex: held only for a lookup or insert, never across an await.
    inflight: Map<K, V>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            inflight: self.inflight.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::default(),
        }
    }
}

/// Removes the key when the work finishes or its task dies.
struct Leave<K: Hash + Eq, V> {
    map: Map<K, V>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for Leave<K, V> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&self.key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Run `work` for `key`, or wait for the run already in progress. Returns the value and
    /// whether this call joined another's run; `None` if the work's task panicked.
    pub async fn run<F>(&self, key: K, work: F) -> (Option<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.inflight.lock().expect("single-flight lock is never poisoned");
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let leave = Leave {
                        map: self.inflight.clone(),
                        key,
                    };
                    tokio::spawn(async move {
                        let v = work.await;
                        drop(leave);
                        let _ = tx.send(Some(v));
                    });
                    (rx, false)
                }
            }
        };
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
        let sf: SingleFlight<&'static str, usize> = SingleFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                sf.run("k", async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    42
                })
                .await
            }));
        }
        while sf.inflight.lock().unwrap().is_empty() || runs.load(Ordering::SeqCst) == 0 {
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
        assert!(sf.inflight.lock().unwrap().is_empty(), "key removed after the run");
    }

    #[tokio::test]
    async fn a_panicking_run_releases_its_key() {
        let sf: SingleFlight<u8, u8> = SingleFlight::default();
        let (v, _) = sf.run(1, async { panic!("boom") }).await;
        assert_eq!(v, None);
        let (v, joined) = sf.run(1, async { 7 }).await;
        assert_eq!((v, joined), (Some(7), false), "a later call runs afresh");
    }
}
