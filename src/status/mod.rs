//! The operator's status page (`GET /` on the metrics listener): health and readiness with
//! the reason, each upstream's breaker, last error and rate limit, the store against its cap,
//! hit ratio and bytes saved since start, fills in progress, the most pulled images and the
//! recent errors. [`Activity`] records what only the page needs; [`snapshot`] collects the
//! rest from the shared state; `page` renders HTML. The handler in `server.rs` only calls
//! [`snapshot`] and [`render`]. No policy here: nothing on the page changes what berth does.

mod activity;
mod page;

use std::sync::atomic::Ordering;
use std::time::SystemTime;

pub use activity::{Activity, ErrorEntry, Totals, UpstreamActivity, RECENT_ERRORS, TRACKED_IMAGES};
pub use page::{escape, render, Snapshot, StorageRow, UpstreamRow};

use crate::state::AppState;

/// How many of the most pulled images the page lists.
pub const TOP_IMAGES: usize = 10;

/// Everything the page shows, read from `state` now.
pub fn snapshot(state: &AppState) -> Snapshot {
    let m = &state.metrics;
    let activity = m.activity();
    let mut not_ready = Vec::new();
    if !state.ready.load(Ordering::Relaxed) {
        not_ready.push("starting or shutting down");
    }
    let writable = state.health.problem().is_none();
    if !writable {
        not_ready.push("the store cannot be written (cached content is still served)");
    }
    let upstreams = state
        .upstreams
        .all()
        .iter()
        .map(|u| {
            let (circuit, opened) = u.circuit();
            UpstreamRow {
                name: u.name().to_string(),
                url: state
                    .config
                    .upstreams
                    .get(u.name())
                    .map_or(String::new(), |c| c.url.to_string()),
                circuit,
                opened,
                activity: activity.upstream(u.name()),
            }
        })
        .collect();
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let free = unsigned(m.storage_free.get());
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        now: SystemTime::now(),
        started: activity.started(),
        ready: not_ready.is_empty(),
        not_ready,
        upstreams,
        storage: StorageRow {
            used: unsigned(m.storage_used.get()),
            limit: state.config.storage.max_size,
            free: (free > 0).then_some(free),
            objects: unsigned(m.storage_objects.get()),
            writable,
        },
        totals: activity.totals(),
        fills: state.fills.in_progress(),
        top_pulls: activity.top_pulls(TOP_IMAGES),
        errors: activity.recent_errors(),
    }
}
