//! One core's state, `!Send`, in one place ([`LbCore`]), held as the parts
//! its users read, so each step of the proxy takes its parts and not the
//! whole core:
//!
//! ```text
//! Connections  the client connections: how many are open, the drain     conn.rs, lib.rs
//! Reading      time-outs, request limits, what --balance hash keys on    conn.rs, batch.rs
//! RequestIds   X-Request-Id: the process prefix, the core, a counter     batch.rs
//! Limits       per-client limits (429) and --config's [[limit]] rules    conn.rs, batch.rs
//! Upstreams    the shared set, this core's pools, how an exchange ends   forward.rs
//! EdgeCache    --cache on: this core's micro-cache (cache.rs)            batch.rs, forward.rs
//! ```
//!
//! The `Date` of the balancer's own answers and this core's counters are
//! read by every step; they stay on the core ([`LbCore::date`],
//! [`LbCore::metrics`]).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use todo_http::http1::RequestLimits;
use todo_http::DateCache;

use crate::cache::EdgeCache;
use crate::client_limits::ClientLimits;
use crate::config::{Balance, HashKey, LbConfig, Switch};
use crate::metrics::CoreMetrics;
use crate::pool::{Member, Pool, PoolConfig};
use crate::route_limits::{CoreLimits, RouteLimits};
use crate::upstream::UpstreamSet;

use super::READ_CHUNK;

/// One core's state.
pub struct LbCore {
    /// This core's index: its counters' slot, its part of the request ids.
    pub index: usize,
    /// The `Date` of the balancer's own answers, refreshed every second.
    pub date: DateCache,
    pub conns: Connections,
    pub reading: Reading,
    pub ids: RequestIds,
    pub limits: Limits,
    pub upstreams: Upstreams,
    /// `--cache on`: this core's edge cache (its share of `--cache-bytes`).
    pub cache: Option<EdgeCache>,
    /// Every core's client totals; this core writes only its own (the
    /// admin listener reads them all).
    all_metrics: Arc<[CoreMetrics]>,
}

impl LbCore {
    /// Core `index` of a balancer configured by `config`. Without
    /// `[[limit]]` rules: the caller puts them in [`Limits::routes`].
    pub fn new(
        index: usize,
        config: &LbConfig,
        set: Arc<UpstreamSet>,
        client_limits: Arc<ClientLimits>,
        all_metrics: Arc<[CoreMetrics]>,
        id_prefix: u32,
    ) -> Self {
        LbCore {
            index,
            date: DateCache::default(),
            conns: Connections::default(),
            reading: Reading::new(config),
            ids: RequestIds::new(id_prefix, index),
            limits: Limits {
                clients: client_limits,
                routes: None,
            },
            upstreams: Upstreams::new(config, set, index),
            cache: (config.cache == Switch::On)
                .then(|| EdgeCache::new(config.cache_bytes / config.core_count().max(1))),
            all_metrics,
        }
    }

    /// This core's client totals.
    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }
}

/// A core's client connections.
#[derive(Default)]
pub struct Connections {
    /// Open now (the drain waits for 0).
    pub open: todo_runtime::lifecycle::OpenCount,
    draining: Cell<bool>,
    /// Client sockets serving requests on this core, so a drain can wake
    /// the ones waiting for a request (see [`Connections::drain`]).
    sockets: RefCell<HashSet<RawFd>>,
}

impl Connections {
    /// A drain has begun: finish the batch in flight, take no other.
    #[inline]
    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Start draining: every client connection closes after the batch it is
    /// in; those waiting for a request are shut for reading, so their read
    /// ends at once (what the client sent and we did not read gets no
    /// answer, and a client sends it again on a new connection).
    pub fn drain(&self) {
        self.draining.set(true);
        for &fd in self.sockets.borrow().iter() {
            // SAFETY: `fd` belongs to a live client connection on this core:
            // it is removed (`leave`) before the connection's socket is
            // closed.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }

    /// `fd` serves requests until [`Connections::leave`], which must come
    /// before it is closed.
    pub fn enter(&self, fd: RawFd) {
        self.sockets.borrow_mut().insert(fd);
    }

    pub fn leave(&self, fd: RawFd) {
        self.sockets.borrow_mut().remove(&fd);
    }
}

/// How a client connection's requests are read.
pub struct Reading {
    /// `--idle-timeout`: a connection with no request begun closes after
    /// this long.
    pub idle_timeout: Duration,
    /// `--header-timeout`: a request begun must be complete within this
    /// (and a TLS handshake done), else 408.
    pub header_timeout: Duration,
    /// todo-http's limits with `--max-body`.
    pub limits: RequestLimits,
    /// Bytes held without a complete request before 413: the largest head,
    /// a body twice the limit (chunked framing), a read's growth.
    pub read_max: usize,
    /// `--balance hash`: what keys a request (`--hash-key`); `None` under
    /// the other policies, which key nothing.
    pub hash_key: Option<HashKey>,
}

impl Reading {
    pub fn new(config: &LbConfig) -> Self {
        let limits = RequestLimits {
            max_body: config.max_body,
            ..RequestLimits::default()
        };
        Reading {
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            limits,
            read_max: limits.max_head + 2 * limits.max_body + READ_CHUNK,
            hash_key: (config.balance == Balance::Hash).then(|| config.hash_key.clone()),
        }
    }
}

/// Request ids: `<prefix><core><counter>`, 24 hex digits.
pub struct RequestIds {
    /// Per process (the start time and the pid), so two runs do not repeat.
    prefix: u32,
    core: usize,
    next: Cell<u64>,
}

impl RequestIds {
    pub fn new(prefix: u32, core: usize) -> Self {
        RequestIds {
            prefix,
            core,
            next: Cell::new(0),
        }
    }

    /// Append `X-Request-Id: <prefix><core><counter>\r\n` (hex, 24 digits).
    /// On every forwarded request: the line is made on the stack and
    /// appended in one copy (a push per digit cost ~200 instructions a
    /// request, callgrind).
    #[inline]
    pub fn append(&self, out: &mut Vec<u8>) {
        let n = self.next.get();
        self.next.set(n + 1);
        const HEAD: &[u8] = b"X-Request-Id: ";
        let mut line = [0u8; HEAD.len() + 24 + 2];
        line[..HEAD.len()].copy_from_slice(HEAD);
        let digits = &mut line[HEAD.len()..HEAD.len() + 24];
        hex(&mut digits[..8], u64::from(self.prefix));
        hex(&mut digits[8..12], self.core as u64);
        hex(&mut digits[12..], n);
        line[HEAD.len() + 24..].copy_from_slice(b"\r\n");
        out.extend_from_slice(&line);
    }
}

/// `v` as lowercase hex filling `into` (its low `into.len()` digits).
#[inline]
fn hex(into: &mut [u8], v: u64) {
    let len = into.len();
    for (i, d) in into.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[((v >> ((len - 1 - i) * 4)) & 0xf) as usize];
    }
}

/// Who may send what.
pub struct Limits {
    /// Per client address: connections (`--max-conns-per-client`) and rate
    /// (`--rate`, `--burst`), shared by the cores.
    pub clients: Arc<ClientLimits>,
    /// `--config`'s `[[limit]]` rules (`None` without the file, when no rule
    /// can ever be in force, and in tests that build a core without them).
    pub routes: Option<CoreLimits>,
}

impl Limits {
    /// The rules in force now; `None` when there is none to check.
    #[allow(clippy::redundant_allocation)]
    pub fn routes_now(&self) -> Option<Rc<Arc<RouteLimits>>> {
        self.routes
            .as_ref()
            .map(CoreLimits::now)
            .filter(|l| !l.is_empty())
    }
}

/// This core's way to the upstreams.
pub struct Upstreams {
    /// The set shared by the cores (its health, its counters).
    pub set: Arc<UpstreamSet>,
    /// This core's members: pooled connections, the policy, the breaker.
    pub pool: Pool,
    pub pool_config: PoolConfig,
    /// `--upstream-timeout`: a batch written must be answered within this.
    pub timeout: Duration,
    /// `--stream-idle`: an event stream's upstream may be silent this long.
    pub stream_idle: Duration,
    /// `--retries`: further upstreams a batch may go to after failures.
    pub retries: u32,
    /// `--max-body`: the largest response body framed, bytes.
    pub max_body: usize,
    /// `--balance p2c` learns each upstream's latency from its answers.
    pub observe_latency: bool,
}

impl Upstreams {
    fn new(config: &LbConfig, set: Arc<UpstreamSet>, core: usize) -> Self {
        Upstreams {
            pool: Pool::new(&set, core, config.balance),
            set,
            pool_config: PoolConfig {
                max_idle: config.pool_idle,
                idle_timeout: config.pool_idle_timeout,
                connect_timeout: config.connect_timeout,
                eject_after: config.eject_after.max(1),
                eject_for: config.eject_for,
            },
            timeout: config.upstream_timeout,
            stream_idle: config.stream_idle,
            retries: config.retries,
            max_body: config.max_body,
            observe_latency: config.balance == Balance::P2c,
        }
    }

    /// The upstream for the next run of requests, by the policy, among
    /// those available and not in `exclude`; `key` is the run's hash key.
    #[inline]
    pub fn pick(&self, exclude: &[SocketAddr], key: u64) -> Option<Rc<Member>> {
        self.pool.pick(&self.set, exclude, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn request_ids_carry_the_prefix_the_core_and_a_counter() {
        let ids = RequestIds::new(0xdead_beef, 3);
        let mut out = Vec::new();
        ids.append(&mut out);
        ids.append(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "X-Request-Id: deadbeef0003000000000000\r\n\
             X-Request-Id: deadbeef0003000000000001\r\n"
        );
    }

    #[test]
    fn a_drain_ends_the_reads_of_waiting_clients_and_of_no_one_else() {
        let conns = Connections::default();
        let (waiting, _client) = UnixStream::pair().unwrap();
        let (gone, _other) = UnixStream::pair().unwrap();
        conns.enter(waiting.as_raw_fd());
        conns.enter(gone.as_raw_fd());
        conns.leave(gone.as_raw_fd());
        assert!(!conns.draining());
        conns.drain();
        assert!(conns.draining());
        // The client sent nothing, yet the read ends at once.
        assert_eq!((&waiting).read(&mut [0u8; 8]).unwrap(), 0);
        // A socket that left is not touched: it still waits.
        gone.set_nonblocking(true).unwrap();
        let err = (&gone).read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
    }

    #[test]
    fn a_core_takes_the_flags_each_part_reads() {
        let mut config = LbConfig::for_tests(&["127.0.0.1:1".parse().unwrap()]);
        config.cores = 4;
        config.cache = Switch::On;
        config.eject_after = 0;
        config.balance = Balance::Hash;
        config.hash_key = HashKey::JwtSub;
        let set = Arc::new(UpstreamSet::new(vec!["127.0.0.1:1".parse().unwrap()], 4));
        let limits = Arc::new(ClientLimits::new(crate::client_limits::ClientLimitConfig {
            rate: 0.0,
            burst: 1.0,
            max_conns: 0,
        }));
        let metrics: Arc<[CoreMetrics]> = (0..4).map(|_| CoreMetrics::default()).collect();
        let core = LbCore::new(2, &config, set, limits, metrics, 1);
        // One failure ejects at least: 0 would never open the circuit.
        assert_eq!(core.upstreams.pool_config.eject_after, 1);
        assert!(!core.upstreams.observe_latency, "only p2c learns latency");
        assert_eq!(core.reading.hash_key, Some(HashKey::JwtSub));
        assert_eq!(core.reading.limits.max_body, config.max_body);
        assert!(core.cache.is_some());
        assert!(core.limits.routes_now().is_none());

        config.balance = Balance::P2c;
        config.cache = Switch::Off;
        let reading = Reading::new(&config);
        assert_eq!(reading.hash_key, None, "other policies key nothing");
    }
}
