//! A value the cores read and a reloader thread replaces: the TLS
//! configuration (`tls.rs`) and the `[[limit]]` rules (`route_limits.rs`).
//!
//! [`Reloadable`] is shared by the cores: the value behind a lock taken only
//! to replace it or to copy it out, and a generation bumped on each
//! replacement. [`CoreCopy`] is a core's own copy, taken again when the
//! generation moves: the per-use cost is one atomic load, and a core never
//! touches a counter another core writes (an `Rc`, not the shared `Arc`).
//!
//! [`stamp`] is how each reloader tells that its file changed (the TLS
//! certificate and key, `--config`, the upstreams file): its modification
//! time and length, looked at every interval.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// What tells that a file changed: its modification time and length.
pub type FileStamp = (SystemTime, u64);

/// `path`'s stamp now; `None` when it cannot be read (a reloader sees the
/// file come back as a change).
pub fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The value in force, shared by the cores.
pub struct Reloadable<T> {
    current: RwLock<Arc<T>>,
    generation: AtomicU64,
}

impl<T> Reloadable<T> {
    pub fn new(value: T) -> Self {
        Reloadable {
            current: RwLock::new(Arc::new(value)),
            generation: AtomicU64::new(0),
        }
    }

    /// The value in force now.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Put `value` in force: the cores take it at their next use.
    pub fn replace(&self, value: T) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// A core's copy of a [`Reloadable`] value, `!Send`.
pub struct CoreCopy<T> {
    shared: Arc<Reloadable<T>>,
    made: Cell<u64>,
    /// An `Rc` of the shared `Arc`: cloned per use without touching the
    /// `Arc`'s count, one cache line for every core (this extra allocation
    /// is made once per reload).
    #[allow(clippy::redundant_allocation)]
    copy: RefCell<Rc<Arc<T>>>,
}

impl<T> CoreCopy<T> {
    pub fn new(shared: Arc<Reloadable<T>>) -> Self {
        let made = shared.generation();
        let copy = Rc::new(shared.current());
        CoreCopy {
            shared,
            made: Cell::new(made),
            copy: RefCell::new(copy),
        }
    }

    /// The value in force now.
    #[allow(clippy::redundant_allocation)]
    pub fn now(&self) -> Rc<Arc<T>> {
        let generation = self.shared.generation();
        if generation != self.made.get() {
            *self.copy.borrow_mut() = Rc::new(self.shared.current());
            self.made.set(generation);
        }
        self.copy.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_copy_follows_each_replacement() {
        let shared = Arc::new(Reloadable::new(1));
        let core = CoreCopy::new(shared.clone());
        assert_eq!(**core.now(), 1);
        shared.replace(2);
        assert_eq!(**core.now(), 2);
        assert_eq!(*shared.current(), 2);
    }
}
