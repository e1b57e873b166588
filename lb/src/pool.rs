//! One core's view of the upstreams: keep-alive connection pools, the
//! balancing policy (`--balance`: least connections, round robin, power of
//! two choices on peak-EWMA latency, consistent hash, `ring.rs`) and passive
//! ejection (a circuit breaker).
//!
//! All of it is per core and `!Send`: connections and counts are this core's
//! own, so no lock is taken to pick an upstream. The active checker's
//! verdict comes from the shared [`UpstreamSet`] (one relaxed load each).
//! Each member writes its upstream's counters in this core's own slot
//! ([`Member::stats`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::config::Balance;
use crate::ring::Ring;
use crate::upstream::{Upstream, UpstreamSet};
use crate::upstream_stats::UpstreamStats;

/// How fast `p2c`'s latency estimate forgets, seconds (Finagle's default):
/// a stall weighs on an upstream for about this long after it ends.
const EWMA_DECAY_S: f64 = 10.0;

/// Pool and breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub eject_after: u32,
    pub eject_for: Duration,
}

/// One upstream as this core sees it.
pub struct Member {
    pub shared: Arc<Upstream>,
    /// This core's index: its slot in `shared.stats`.
    core: usize,
    idle: RefCell<Vec<(TcpStream, Instant)>>,
    /// Exchanges in flight from this core: the least-connections measure.
    active: Cell<u32>,
    failures: Cell<u32>,
    /// Circuit open (ejected) until then.
    open_until: Cell<Option<Instant>>,
    /// Half open: one exchange is testing the upstream.
    trial: Cell<bool>,
    /// `p2c`: peak-EWMA of the latency seen from this core, microseconds,
    /// as of `ewma_at`.
    ewma_us: Cell<f64>,
    ewma_at: Cell<Instant>,
}

impl Member {
    fn new(shared: Arc<Upstream>, core: usize) -> Self {
        Member {
            shared,
            core,
            idle: RefCell::new(Vec::new()),
            active: Cell::new(0),
            failures: Cell::new(0),
            open_until: Cell::new(None),
            trial: Cell::new(false),
            ewma_us: Cell::new(0.0),
            ewma_at: Cell::new(Instant::now()),
        }
    }

    /// `p2c`: a response came `latency_us` after its batch was written. A
    /// latency above the estimate replaces it at once (the peak); one below
    /// pulls it down as the time since the last one allows.
    pub fn observe(&self, latency_us: u64) {
        let now = Instant::now();
        let latency = latency_us as f64;
        let estimate = self.ewma_us.get();
        let next = if latency > estimate {
            latency
        } else {
            let w = self.weight(now);
            estimate * w + latency * (1.0 - w)
        };
        self.ewma_us.set(next);
        self.ewma_at.set(now);
    }

    /// How much of the estimate still counts `now`: exp(-elapsed / decay).
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.ewma_at.get());
        (-elapsed.as_secs_f64() / EWMA_DECAY_S).exp()
    }

    /// The estimate now: it fades while nothing is observed (an observation
    /// of 0), so an upstream that was slow is tried again in time.
    fn decayed(&self, now: Instant) -> f64 {
        self.ewma_us.get() * self.weight(now)
    }

    /// `p2c`'s cost: the latency estimate times the exchanges in flight + 1.
    fn cost(&self, now: Instant) -> f64 {
        // Never zero, so the exchanges in flight still count before any
        // latency has been seen.
        (self.decayed(now) + 1.0) * f64::from(self.active.get() + 1)
    }
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// This core's counters for the upstream.
    #[inline]
    pub fn stats(&self) -> &UpstreamStats {
        &self.shared.stats[self.core]
    }

    /// May take traffic now: healthy and the circuit closed, or half open
    /// with no trial running yet.
    fn available(&self, now: Instant) -> bool {
        if !self.shared.healthy() {
            return false;
        }
        match self.open_until.get() {
            None => true,
            Some(until) => now >= until && !self.trial.get(),
        }
    }

    /// An idle pooled connection that is still open, or a new one. Marks an
    /// exchange in flight until [`Member::release`].
    pub async fn checkout(&self, config: &PoolConfig) -> io::Result<TcpStream> {
        self.active.set(self.active.get() + 1);
        if self.open_until.get().is_some() && !self.trial.get() {
            // Picked while open: `available` let it through because the
            // open time is over. Half open: this exchange tests it.
            self.trial.set(true);
            self.stats().probing();
            eprintln!(
                "todo-lb: upstream {} half open: one exchange tests it",
                self.addr()
            );
        }
        while let Some((conn, since)) = self.idle.borrow_mut().pop() {
            if since.elapsed() < config.idle_timeout && still_open(&conn) {
                return Ok(conn);
            }
        }
        let conn = monoio::time::timeout(config.connect_timeout, TcpStream::connect(self.addr()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        conn.set_nodelay(true)?;
        Ok(conn)
    }

    /// The exchange is over; keep `conn` for reuse when given.
    pub fn release(&self, conn: Option<TcpStream>, config: &PoolConfig) {
        self.active.set(self.active.get() - 1);
        if let Some(conn) = conn {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < config.max_idle {
                idle.push((conn, Instant::now()));
            }
        }
    }

    /// An exchange completed: the circuit closes.
    pub fn succeeded(&self) {
        self.failures.set(0);
        self.trial.set(false);
        if self.open_until.take().is_some() {
            self.stats().restored();
            eprintln!("todo-lb: upstream {} back in rotation", self.addr());
        }
    }

    /// An exchange failed (connect, reset, timeout, unframable response).
    pub fn failed(&self, config: &PoolConfig) {
        let failures = self.failures.get() + 1;
        self.failures.set(failures);
        if failures >= config.eject_after || self.trial.get() {
            if self.open_until.get().is_none() {
                self.stats().ejected();
                eprintln!(
                    "todo-lb: upstream {} ejected for {:?} after {failures} failures",
                    self.addr(),
                    config.eject_for
                );
            } else if self.trial.get() {
                self.stats().reopened();
                eprintln!(
                    "todo-lb: upstream {} failed its test: open for {:?} more",
                    self.addr(),
                    config.eject_for
                );
            }
            self.open_until.set(Some(Instant::now() + config.eject_for));
            self.trial.set(false);
            // Its pooled connections are suspect too.
            self.idle.borrow_mut().clear();
        }
    }
}

/// A pooled connection the upstream closed reads as end of stream at once;
/// one that is fine has nothing to read (EAGAIN).
fn still_open(conn: &TcpStream) -> bool {
    matches!(peek_byte(conn), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The next byte in `conn`'s receive queue, left there (MSG_PEEK), without
/// waiting: `Ok(None)` at end of stream, `WouldBlock` when nothing is there
/// yet. Used here to test a pooled connection and by the proxy to tell a TLS
/// client from a plain one.
pub fn peek_byte(conn: &TcpStream) -> io::Result<Option<u8>> {
    let mut byte = 0u8;
    // SAFETY: `conn` owns the descriptor for this call, and `byte` is a
    // valid one-byte buffer that outlives it.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1 => Ok(Some(byte)),
        0 => Ok(None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// This core's members, rebuilt when the shared set changes.
pub struct Pool {
    /// This core's index (its counters' slot).
    core: usize,
    generation: Cell<u64>,
    members: RefCell<Vec<Rc<Member>>>,
    /// Where the next tie-break (or round-robin turn) starts, so equal loads
    /// rotate.
    next: Cell<usize>,
    balance: Balance,
    /// `hash`: the ring of the members, rebuilt with them.
    ring: RefCell<Ring>,
    /// `p2c`'s random choices (xorshift; this core's own).
    rng: Cell<u64>,
}

impl Pool {
    pub fn new(set: &UpstreamSet, core: usize, balance: Balance) -> Self {
        let members: Vec<Rc<Member>> = set
            .current()
            .iter()
            .map(|u| Rc::new(Member::new(u.clone(), core)))
            .collect();
        Pool {
            core,
            generation: Cell::new(set.generation()),
            ring: RefCell::new(ring_of(balance, &members)),
            members: RefCell::new(members),
            next: Cell::new(0),
            balance,
            rng: Cell::new(
                0x9e37_79b9_7f4a_7c15 ^ (core as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            ),
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    fn refresh(&self, set: &UpstreamSet) {
        let generation = set.generation();
        if generation == self.generation.get() {
            return;
        }
        self.generation.set(generation);
        let mut members = self.members.borrow_mut();
        let next: Vec<Rc<Member>> = set
            .current()
            .iter()
            .map(|u| match members.iter().find(|m| m.addr() == u.addr) {
                Some(m) => m.clone(),
                None => Rc::new(Member::new(u.clone(), self.core)),
            })
            .collect();
        *self.ring.borrow_mut() = ring_of(self.balance, &next);
        *members = next;
    }

    /// The upstream for the next batch, by the policy, among those
    /// available and not in `exclude`; `key` is the batch's hash key
    /// (`hash` only).
    pub fn pick(&self, set: &UpstreamSet, exclude: &[SocketAddr], key: u64) -> Option<Rc<Member>> {
        self.refresh(set);
        let members = self.members.borrow();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let usable = |m: &Member| m.available(now) && !exclude.contains(&m.addr());
        match self.balance {
            Balance::LeastConn => least_conn(&members, self.turn(n), &usable),
            Balance::RoundRobin => {
                let start = self.turn(n);
                (0..n)
                    .map(|i| &members[(start + i) % n])
                    .find(|m| usable(m))
                    .cloned()
            }
            Balance::P2c => {
                // Two distinct members at random; the cheaper one that can
                // take it. When neither can, the least loaded one that can.
                let a = (self.random() % n as u64) as usize;
                let b = if n > 1 {
                    (a + 1 + (self.random() % (n as u64 - 1)) as usize) % n
                } else {
                    a
                };
                let (ma, mb) = (&members[a], &members[b]);
                match (usable(ma), usable(mb)) {
                    (true, true) if mb.cost(now) < ma.cost(now) => Some(mb.clone()),
                    (true, _) => Some(ma.clone()),
                    (false, true) => Some(mb.clone()),
                    (false, false) => least_conn(&members, self.turn(n), &usable),
                }
            }
            Balance::Hash => self
                .ring
                .borrow()
                .find(key, |i| usable(&members[i]))
                .map(|i| members[i].clone()),
        }
    }

    /// Where this pick's scan starts; the next one starts one further.
    fn turn(&self, n: usize) -> usize {
        let start = self.next.get() % n;
        self.next.set(start + 1);
        start
    }
}

/// The usable member with the fewest exchanges in flight from this core,
/// scanning from `start` so ties rotate.
fn least_conn(
    members: &[Rc<Member>],
    start: usize,
    usable: &impl Fn(&Member) -> bool,
) -> Option<Rc<Member>> {
    let n = members.len();
    let mut best: Option<&Rc<Member>> = None;
    for i in 0..n {
        let m = &members[(start + i) % n];
        if !usable(m) {
            continue;
        }
        if best.is_none_or(|b| m.active.get() < b.active.get()) {
            best = Some(m);
        }
    }
    best.cloned()
}

/// The hash ring of `members` when the policy is `hash` (empty otherwise).
fn ring_of(balance: Balance, members: &[Rc<Member>]) -> Ring {
    if balance == Balance::Hash {
        Ring::new(&members.iter().map(|m| m.addr()).collect::<Vec<_>>())
    } else {
        Ring::default()
    }
}
