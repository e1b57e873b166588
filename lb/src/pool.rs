//! One core's view of the upstreams: keep-alive connection pools,
//! least-connections selection and passive ejection (a circuit breaker).
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

use crate::metrics::UpstreamStats;
use crate::upstream::{Upstream, UpstreamSet};

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
        }
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
        if self.open_until.get().is_some() {
            self.trial.set(true);
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
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local, on a socket we own.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// This core's members, rebuilt when the shared set changes.
pub struct Pool {
    /// This core's index (its counters' slot).
    core: usize,
    generation: Cell<u64>,
    members: RefCell<Vec<Rc<Member>>>,
    /// Where the next tie-break starts, so equal loads rotate.
    next: Cell<usize>,
}

impl Pool {
    pub fn new(set: &UpstreamSet, core: usize) -> Self {
        Pool {
            core,
            generation: Cell::new(set.generation()),
            members: RefCell::new(
                set.current()
                    .iter()
                    .map(|u| Rc::new(Member::new(u.clone(), core)))
                    .collect(),
            ),
            next: Cell::new(0),
        }
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
        *members = next;
    }

    /// The available upstream with the fewest exchanges in flight from this
    /// core, skipping `exclude`; ties go round-robin.
    pub fn pick(&self, set: &UpstreamSet, exclude: &[SocketAddr]) -> Option<Rc<Member>> {
        self.refresh(set);
        let members = self.members.borrow();
        let n = members.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let start = self.next.get() % n;
        self.next.set(start + 1);
        let mut best: Option<&Rc<Member>> = None;
        for i in 0..n {
            let m = &members[(start + i) % n];
            if !m.available(now) || exclude.contains(&m.addr()) {
                continue;
            }
            if best.is_none_or(|b| m.active.get() < b.active.get()) {
                best = Some(m);
            }
        }
        best.cloned()
    }
}
