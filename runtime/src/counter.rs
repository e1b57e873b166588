//! Per-core counters that another thread reads (the metrics renderers of
//! todo-server and todo-lb): each counter has one writer, its core, so an
//! increment is a relaxed load and store, not a locked read-modify-write.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Add `n` to a counter only this thread writes.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}
