//! Per-core state: everything one core's connections share, in one `!Send`
//! place, grouped by who uses it. Handlers take the group they read, not the
//! whole [`Core`]:
//!
//! - [`Connections`]: how many are open, the quiet ones and their deadlines,
//!   the spare buffers, whether the core drains (`conn.rs`, `core_main.rs`);
//! - [`Reads`]: the snapshot and the hot path's cached head, the page
//!   cache, the Date cache, the read model and the search threads (the read
//!   routes);
//! - [`Auth`]: bearer tokens verified (and cached) and issued, the password
//!   threads (`/users`, `/sessions`, every route that needs a subject);
//! - [`Writes`]: the backend and the id generator (the write routes);
//! - [`Feed`]: the change feed's history and subscribers (`feed.rs`,
//!   `GET /todos/changes`);
//! - [`Observability`]: metrics, request ids and trace contexts, the access
//!   log (`conn.rs`, `/metrics`).
//!
//! Nothing here is touched by another core except the metrics array (read by
//! `/metrics`, see [`crate::metrics`]) and the handles every core is given
//! from [`Services`]: the read model, the search and password threads, the
//! secret, the access log's writer.

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use todo_model::{IdGenerator, Snapshot};

use crate::access_log::{AccessLog, Sink};
use crate::accounts::Accounts;
use crate::auth::{AuthError, TokenError, TokenRules, Verifier};
use crate::backend::Backend;
use crate::cache::{PageCache, TokenCache};
use crate::config::ServeConfig;
use crate::feed::Feed;
use crate::metrics::CoreMetrics;
use crate::read_model::Shared;
use crate::search::Search;
use todo_http::conditional::version_headers;
use todo_http::DateCache;
use todo_runtime::lifecycle;

/// What every core shares with the others (each a handle built for it):
/// the read model, the password threads, the search thread, the secret that
/// signs session tokens.
#[derive(Clone)]
pub struct Services {
    pub model: Shared,
    pub accounts: Accounts,
    pub search: Search,
    pub secret: Arc<[u8]>,
    pub rules: TokenRules,
    /// The access log's writer, when the log is on.
    pub log: Option<Sink>,
}

/// One core's state (see the module doc for the groups).
pub struct Core {
    pub index: usize,
    pub config: Arc<ServeConfig>,
    pub conns: Connections,
    pub reads: Reads,
    pub auth: Auth,
    pub writes: Writes,
    /// The change feed's history and subscribers (`GET /todos/changes`).
    pub feed: Feed,
    pub obs: Observability,
}

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
        // The embedded store's changes follow the snapshot's version; a
        // follower's first load starts a distributed server's feed.
        let feed_from = matches!(backend, Backend::Embedded(_)).then(|| snapshot.version());
        let core = Core {
            index,
            feed: Feed::new(crate::feed::Settings::of(&config), feed_from),
            conns: Connections::default(),
            reads: Reads {
                snapshot: RefCell::new(Rc::new(snapshot.clone())),
                stale: Cell::new(false),
                hot: RefCell::new(HotHead {
                    version: u64::MAX,
                    limit: 0,
                    date: 0,
                    bytes: Vec::with_capacity(160),
                    head: Vec::with_capacity(320),
                }),
                pages: RefCell::default(),
                scratch: RefCell::new(Vec::with_capacity(256)),
                date: DateCache::default(),
                model: services.model,
                search: services.search,
                default_limit: config.default_limit,
                page_cache: config.page_cache,
            },
            auth: Auth {
                verifier,
                tokens: RefCell::default(),
                secret: services.secret,
                rules: services.rules,
                session_ttl: config.session_ttl,
                accounts: services.accounts,
            },
            writes: Writes {
                backend,
                ids: RefCell::new(IdGenerator::new(id_node)),
            },
            obs: Observability {
                index,
                all_metrics,
                ids: crate::trace::Ids::new(index),
                log: AccessLog::new(config.access_log, index, services.log),
            },
            config,
        };
        core.obs
            .metrics()
            .snapshot(snapshot.version(), todo_model::now_ms(), false);
        core
    }

    /// Install `next` if it is newer: versions only go forward. The bytes are
    /// copied so each core reads its own memory.
    pub fn install(&self, next: &Snapshot) -> bool {
        // Checked before the copy, so an old snapshot costs nothing.
        next.version() > self.reads.snapshot().version() && self.install_owned(next.clone())
    }

    /// Install an owned snapshot if it is newer (no copy needed).
    pub fn install_owned(&self, next: Snapshot) -> bool {
        let version = next.version();
        if !self.reads.install(next) {
            return false;
        }
        self.obs
            .metrics()
            .snapshot(version, todo_model::now_ms(), self.reads.stale());
        true
    }

    /// Whether the snapshot cannot be confirmed current (its source is
    /// unreachable); said in `/metrics` and `/readyz`.
    pub fn set_stale(&self, stale: bool) {
        self.reads.stale.set(stale);
        self.obs.metrics().set_stale(stale);
    }
}

/// Buffers kept in a core's pool at most; more are freed.
const POOLED_BUFFERS: usize = 256;

/// The core's connections: how many are open, the quiet ones (see
/// `conn.rs`), the buffers they gave back, and whether the core drains.
#[derive(Default)]
pub struct Connections {
    /// Connections open on this core (the drain waits for zero).
    pub open: lifecycle::OpenCount,
    /// Set when shutting down: `/readyz` answers 503 so balancers drain us.
    draining: Cell<bool>,
    /// Quiet connections: socket and when it is idle too long. They hold no
    /// timer; [`Connections::sweep_quiet`] closes the expired.
    quiet: RefCell<HashMap<RawFd, Instant>>,
    /// Buffers of quiet connections, reused by the next busy one, so an idle
    /// connection holds no buffer (see `conn.rs`).
    buffers: RefCell<Vec<Vec<u8>>>,
}

impl Connections {
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Start draining: every connection closes after its next response,
    /// quiet ones at once.
    pub fn drain(&self) {
        self.draining.set(true);
        self.sweep_quiet();
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

    /// The connection on `fd` went quiet until `until`; returns how many
    /// are quiet now.
    pub fn go_quiet(&self, fd: RawFd, until: Instant) -> usize {
        let mut quiet = self.quiet.borrow_mut();
        quiet.insert(fd, until);
        quiet.len()
    }

    /// The connection on `fd` is busy again (or closing); returns how many
    /// are quiet now.
    pub fn wake(&self, fd: RawFd) -> usize {
        let mut quiet = self.quiet.borrow_mut();
        quiet.remove(&fd);
        quiet.len()
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
}

/// What the read routes use: the snapshot (the hot path), the page cache and
/// the read model behind it (queries), the search threads, and the Date
/// cache every answer's head copies.
pub struct Reads {
    /// The snapshot this core serves; replaced whole when a newer one arrives.
    snapshot: RefCell<Rc<Snapshot>>,
    /// The snapshot cannot be confirmed current (its source is unreachable).
    stale: Cell<bool>,
    /// The head of the last `limit=N` answered from the snapshot (see
    /// [`Reads::hot_head`]).
    hot: RefCell<HotHead>,
    pub pages: RefCell<PageCache>,
    /// Scratch space for building a page cache key without allocating.
    pub scratch: RefCell<Vec<u8>>,
    pub date: DateCache,
    /// The read model, shared by every core.
    pub model: Shared,
    pub search: Search,
    /// `limit` when a request gives none (`--default-limit`).
    pub default_limit: usize,
    /// Whether rendered pages are kept (`--page-cache`).
    pub page_cache: bool,
}

impl Reads {
    /// The snapshot to serve from. Cloning the `Rc` is a non-atomic increment.
    #[inline]
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn stale(&self) -> bool {
        self.stale.get()
    }

    /// Install `next` if it is newer: versions only go forward.
    fn install(&self, next: Snapshot) -> bool {
        if next.version() <= self.snapshot.borrow().version() {
            return false;
        }
        *self.snapshot.borrow_mut() = Rc::new(next);
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

    /// The extra header lines of the head [`Reads::hot_head`] made last.
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
                && self.model.read().len() > held);
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
        let HotHead { head, bytes, .. } = &mut *h;
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
}

/// See [`Reads::hot_head`].
struct HotHead {
    version: u64,
    limit: usize,
    /// [`todo_http::DateCache::generation`] the head was made at.
    date: u64,
    /// The extra header lines.
    bytes: Vec<u8>,
    /// The whole head, blank line included.
    head: Vec<u8>,
}

/// Who asks: bearer tokens verified (each verified one cached until it
/// expires) and issued, and the password threads.
pub struct Auth {
    verifier: Verifier,
    tokens: RefCell<TokenCache>,
    secret: Arc<[u8]>,
    rules: TokenRules,
    /// Lifetime of the tokens `POST /sessions` issues (`--session-ttl`).
    pub session_ttl: Duration,
    /// Argon2id hashing and login checks, on the `todo-auth` threads.
    pub accounts: Accounts,
}

impl Auth {
    /// The subject of an `Authorization` value's bearer token, verified
    /// unless this core verified it before and it has not expired.
    pub fn subject(&self, authorization: Option<&[u8]>) -> Result<Rc<str>, TokenError> {
        let now = todo_model::now_ms() / 1000;
        self.tokens
            .borrow_mut()
            .subject(&self.verifier, authorization, now)
    }

    /// Who reads: the subject of a token that verifies, else `None`. A
    /// missing, expired or forged token reads as no token (public todos
    /// only, docs/architecture.md §13), never as an error.
    pub fn viewer(&self, authorization: Option<&[u8]>) -> Option<Rc<str>> {
        authorization.and_then(|value| self.subject(Some(value)).ok())
    }

    /// Why `authorization` names no subject (the 401's message).
    pub fn refusal(&self, authorization: Option<&[u8]>) -> String {
        self.verifier
            .verify(authorization)
            .err()
            .map_or_else(|| "invalid token".to_string(), |e| e.to_string())
    }

    /// A session token for `subject`, valid for [`Auth::session_ttl`].
    pub fn issue(&self, subject: &str) -> Result<String, AuthError> {
        crate::auth::issue(&self.secret, &self.rules, subject, self.session_ttl)
    }
}

/// Where the write routes send commands, and the ids they give them.
pub struct Writes {
    pub backend: Backend,
    /// This core's id node (see `--instance`).
    ids: RefCell<IdGenerator>,
}

impl Writes {
    /// A new todo, category, user or command id, unique across the cores
    /// and instances.
    pub fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next_id(todo_model::now_ms())
    }
}

/// What the core tells about itself: its metrics, the ids it gives
/// requests, its access log.
pub struct Observability {
    index: usize,
    /// All cores' metrics; this core writes only `all_metrics[index]`.
    all_metrics: Arc<[CoreMetrics]>,
    /// Request ids and trace contexts made on this core.
    pub ids: crate::trace::Ids,
    /// This core's access log (off unless `--access-log`).
    pub log: AccessLog,
}

impl Observability {
    /// This core's metrics.
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }

    /// Every core's metrics, for `/metrics`.
    pub fn all_metrics(&self) -> &[CoreMetrics] {
        &self.all_metrics
    }
}
