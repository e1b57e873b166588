//! Per-core state: everything one core's connections share, in one `!Send`
//! place. Nothing here is touched by another core except the metrics array
//! (read by `/metrics`, see [`crate::metrics`]).

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use todo_model::{IdGenerator, Snapshot};

use crate::accounts::Accounts;
use crate::auth::Verifier;
use crate::backend::Backend;
use crate::cache::{PageCache, TokenCache};
use crate::config::ServeConfig;
use crate::metrics::CoreMetrics;
use crate::read_model::Shared;
use crate::search::Search;
use todo_http::conditional::version_headers;
use todo_http::DateCache;

/// What every core shares with the others (each a handle built for it):
/// the read model, the password threads, the search thread, the secret that
/// signs session tokens.
#[derive(Clone)]
pub struct Services {
    pub model: Shared,
    pub accounts: Accounts,
    pub search: Search,
    pub secret: Arc<[u8]>,
    pub rules: crate::auth::TokenRules,
    /// The access log's writer, when the log is on.
    pub log: Option<crate::access_log::Sink>,
}

pub struct Core {
    pub index: usize,
    /// The snapshot this core serves; replaced whole when a newer one arrives.
    snapshot: RefCell<Rc<Snapshot>>,
    /// The extra header lines of the last `limit=N` answered from the
    /// snapshot (see [`Core::hot_extra`]).
    hot: RefCell<HotExtra>,
    pub services: Services,
    pub tokens: RefCell<TokenCache>,
    pub pages: RefCell<PageCache>,
    /// Scratch space for building a page cache key without allocating.
    pub scratch: RefCell<Vec<u8>>,
    pub date: DateCache,
    pub config: Arc<ServeConfig>,
    /// All cores' metrics; this core writes only `metrics[index]`.
    pub all_metrics: Arc<[CoreMetrics]>,
    pub backend: Backend,
    pub verifier: Verifier,
    pub ids: RefCell<IdGenerator>,
    /// Request ids and trace contexts made on this core.
    pub trace_ids: crate::trace::Ids,
    /// This core's access log (off unless `--access-log`).
    pub log: crate::access_log::AccessLog,
    /// Set when shutting down: `/readyz` answers 503 so balancers drain us.
    pub draining: Cell<bool>,
    /// The snapshot cannot be confirmed current (its source is unreachable).
    stale: Cell<bool>,
    /// Connections open on this core (the drain waits for zero).
    pub open: Cell<usize>,
    /// Quiet connections (see `conn.rs`): socket and when it is idle too
    /// long. They hold no timer; [`Core::sweep_quiet`] closes the expired.
    pub quiet: RefCell<HashMap<RawFd, Instant>>,
    /// Buffers of quiet connections, reused by the next busy one, so an idle
    /// connection holds no buffer (see `conn.rs`).
    buffers: RefCell<Vec<Vec<u8>>>,
}

/// Buffers kept in a core's pool at most; more are freed.
const POOLED_BUFFERS: usize = 256;

impl Core {
    pub fn new(
        index: usize,
        snapshot: &Snapshot,
        config: Arc<ServeConfig>,
        all_metrics: Arc<[CoreMetrics]>,
        backend: Backend,
        id_node: u16,
        services: Services,
    ) -> Self {
        // Its own verifier per core (cheap to build; holds no shared state).
        let verifier = Verifier::new(&services.secret, &services.rules)
            .expect("the secret was checked at start-up");
        let log = crate::access_log::AccessLog::new(config.access_log, index, services.log.clone());
        let core = Core {
            index,
            trace_ids: crate::trace::Ids::new(index),
            log,
            snapshot: RefCell::new(Rc::new(snapshot.clone())),
            hot: RefCell::new(HotExtra {
                version: u64::MAX,
                limit: 0,
                date: 0,
                bytes: Vec::with_capacity(160),
                head: Vec::with_capacity(320),
            }),
            services,
            tokens: RefCell::default(),
            pages: RefCell::default(),
            scratch: RefCell::new(Vec::with_capacity(256)),
            date: DateCache::default(),
            config,
            all_metrics,
            backend,
            verifier,
            ids: RefCell::new(IdGenerator::new(id_node)),
            draining: Cell::new(false),
            stale: Cell::new(false),
            open: Cell::new(0),
            buffers: RefCell::new(Vec::new()),
            quiet: RefCell::new(HashMap::new()),
        };
        core.metrics()
            .snapshot(snapshot.version(), todo_model::now_ms(), false);
        core
    }

    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }

    /// The snapshot to serve from. Cloning the `Rc` is a non-atomic increment.
    #[inline]
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Install `next` if it is newer: versions only go forward. The bytes are
    /// copied so each core reads its own memory.
    pub fn install(&self, next: &Snapshot) -> bool {
        // Checked before the copy, so an old snapshot costs nothing.
        next.version() > self.snapshot.borrow().version() && self.install_owned(next.clone())
    }

    /// Install an owned snapshot if it is newer (no copy needed).
    pub fn install_owned(&self, next: Snapshot) -> bool {
        if next.version() <= self.snapshot.borrow().version() {
            return false;
        }
        let version = next.version();
        *self.snapshot.borrow_mut() = Rc::new(next);
        self.metrics()
            .snapshot(version, todo_model::now_ms(), self.stale.get());
        true
    }

    /// The whole head of a kept-alive `200` for `limit` todos of
    /// `snapshot`: status, `Date`, `Content-Type`, `Content-Length`, `ETag`,
    /// `Cache-Control` and, while more todos follow, `Link`. Made once per
    /// (snapshot, limit, second) and then copied: clients repeat the same
    /// `limit`, and framing it afresh (a cursor, an itoa, six copies) would
    /// cost the hot path a good share of its instructions.
    #[inline]
    pub fn hot_head(&self, snapshot: &Snapshot, limit: usize) -> Ref<'_, [u8]> {
        {
            let h = self.hot.borrow();
            if h.version == snapshot.version()
                && h.limit == limit
                && h.date == self.date.generation()
            {
                return Ref::map(h, |h| h.head.as_slice());
            }
        }
        self.make_hot_head(snapshot, limit);
        Ref::map(self.hot.borrow(), |h| h.head.as_slice())
    }

    /// The extra header lines of the head [`Core::hot_head`] made last.
    pub fn hot_extra(&self, snapshot: &Snapshot, limit: usize) -> Ref<'_, [u8]> {
        drop(self.hot_head(snapshot, limit));
        Ref::map(self.hot.borrow(), |h| h.bytes.as_slice())
    }

    #[cold]
    fn make_hot_head(&self, snapshot: &Snapshot, limit: usize) {
        let held = snapshot.len();
        // More than the snapshot holds exist when the model says so.
        let more = limit < held
            || (held == todo_model::SNAPSHOT_MAX
                && limit == held
                && self.services.model.read().len() > held);
        let mut h = self.hot.borrow_mut();
        h.bytes.clear();
        h.bytes
            .extend_from_slice(&version_headers(snapshot.version(), true));
        if more {
            let mut cursor = [0u8; 16];
            let len =
                crate::query::Cursor::encode_created_desc(snapshot.ids()[limit - 1], &mut cursor);
            h.bytes.extend_from_slice(b"\r\nLink: </todos?limit=");
            h.bytes
                .extend_from_slice(itoa::Buffer::new().format(limit).as_bytes());
            h.bytes.extend_from_slice(b"&cursor=");
            h.bytes.extend_from_slice(&cursor[..len]);
            h.bytes.extend_from_slice(b">; rel=\"next\"");
        }
        h.version = snapshot.version();
        h.limit = limit;
        h.date = self.date.generation();
        let HotExtra { head, bytes, .. } = &mut *h;
        head.clear();
        todo_http::response::append(
            head,
            todo_http::response::Head {
                status: 200,
                date: &self.date,
                persist: todo_http::response::Persist::KeepAlive,
                head_only: true,
                text: false,
                extra: bytes,
            },
            &[snapshot.prefix(limit), b"]"],
        );
    }

    pub fn stale(&self) -> bool {
        self.stale.get()
    }

    pub fn set_stale(&self, stale: bool) {
        self.stale.set(stale);
        self.metrics().set_stale(stale);
    }

    /// An empty buffer with at least `capacity` bytes, from the pool when it
    /// has one.
    pub fn take_buffer(&self, capacity: usize) -> Vec<u8> {
        match self.buffers.borrow_mut().pop() {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Give a buffer back to the pool (emptied; large ones are freed so one
    /// big request does not pin memory).
    pub fn put_buffer(&self, mut buf: Vec<u8>, max_capacity: usize) {
        let mut pool = self.buffers.borrow_mut();
        if buf.capacity() != 0 && buf.capacity() <= max_capacity && pool.len() < POOLED_BUFFERS {
            buf.clear();
            pool.push(buf);
        }
    }

    /// Shut down the sockets of quiet connections idle past their deadline,
    /// or all of them while draining. The shutdown wakes each one's
    /// readiness wait and its next read sees the end of stream, so the
    /// connection task closes it.
    pub fn sweep_quiet(&self) {
        let now = Instant::now();
        let draining = self.draining.get();
        self.quiet.borrow_mut().retain(|&fd, until| {
            if draining || *until <= now {
                // SAFETY: `fd` is the socket of a live connection task on
                // this core: it removes its entry before the socket can be
                // closed, and nothing else runs on this thread meanwhile.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                false
            } else {
                true
            }
        });
    }

    pub fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next_id(todo_model::now_ms())
    }
}

/// See [`Core::hot_extra`].
struct HotExtra {
    version: u64,
    limit: usize,
    /// [`todo_http::DateCache::generation`] the head was made at.
    date: u64,
    /// The extra header lines.
    bytes: Vec<u8>,
    /// The whole head, blank line included.
    head: Vec<u8>,
}
