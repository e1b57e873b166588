//! One core's counters for one upstream: requests written, failures by
//! class, the circuit's state, the latency histogram, and the event streams
//! holding its connections.
//!
//! Each shared [`crate::upstream::Upstream`] carries one [`UpstreamStats`]
//! per core, so the counters follow an upstream through a re-read upstreams
//! file and go with it. Written by the proxy's exchange (`proxy/forward.rs`:
//! sent, answered, failed), by its event streams (`proxy/stream.rs`: opened,
//! ended) and by the core's circuit breaker (`pool.rs`:
//! ejected, probing, reopened, restored); read and summed by the renderer
//! (`metrics.rs`) at scrape time.
//!
//! The scheme of `metrics.rs`: every counter has one writer (its core), so
//! it is an `AtomicU64` bumped with a relaxed load and store, and each
//! core's slot sits on cache lines of its own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use todo_runtime::counter::bump;

use crate::failure::Failure;

/// Upper bounds of the upstream latency histogram, in microseconds: from a
/// loopback answer (tens of µs) to the default upstream timeout (15 s).
pub const DURATION_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The state of a core's circuit for an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// In use.
    Closed = 0,
    /// Ejected for `--eject-for` after `--eject-after` failures.
    Open = 1,
    /// One exchange is testing the upstream.
    HalfOpen = 2,
}

impl Circuit {
    pub const ALL: [Circuit; 3] = [Circuit::Closed, Circuit::Open, Circuit::HalfOpen];

    /// Its `state` label in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// One core's counters for one upstream.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct UpstreamStats {
    requests: AtomicU64,
    /// Per [`Failure`], in its declaration order.
    errors: [AtomicU64; Failure::ALL.len()],
    ejections: AtomicU64,
    /// This core's [`Circuit`] for the upstream, as its discriminant.
    circuit: AtomicU64,
    /// Responses per bucket of [`DURATION_BUCKETS_US`], the last one above
    /// them all.
    duration: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    duration_sum_us: AtomicU64,
    /// Event streams opened on the upstream, and ended (open: the
    /// difference).
    streams: AtomicU64,
    streams_ended: AtomicU64,
}

impl UpstreamStats {
    /// `n` requests written to the upstream in one batch.
    #[inline]
    pub fn sent(&self, n: usize) {
        bump(&self.requests, n as u64);
    }

    /// `n` responses read `us` microseconds after their batch was sent.
    #[inline]
    pub fn answered(&self, n: usize, us: u64) {
        if n == 0 {
            return;
        }
        let slot = DURATION_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(DURATION_BUCKETS_US.len());
        bump(&self.duration[slot], n as u64);
        bump(&self.duration_sum_us, us.saturating_mul(n as u64));
    }

    pub fn failed(&self, failure: Failure) {
        bump(&self.errors[failure as usize], 1);
    }

    /// One of its connections now carries an event stream.
    pub fn stream_opened(&self) {
        bump(&self.streams, 1);
    }

    /// An event stream's connection closed.
    pub fn stream_ended(&self) {
        bump(&self.streams_ended, 1);
    }

    /// This core opened the upstream's circuit.
    pub fn ejected(&self) {
        bump(&self.ejections, 1);
        self.circuit.store(Circuit::Open as u64, Relaxed);
    }

    /// This core's open circuit went half open: one exchange tests it.
    pub fn probing(&self) {
        self.circuit.store(Circuit::HalfOpen as u64, Relaxed);
    }

    /// The test failed: open again (not counted as a new ejection).
    pub fn reopened(&self) {
        self.circuit.store(Circuit::Open as u64, Relaxed);
    }

    /// This core closed the upstream's circuit again.
    pub fn restored(&self) {
        self.circuit.store(Circuit::Closed as u64, Relaxed);
    }

    // What the renderer reads.

    /// Requests written to the upstream.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Exchanges that failed this way.
    pub fn errors(&self, failure: Failure) -> u64 {
        self.errors[failure as usize].load(Relaxed)
    }

    /// Times this core opened the circuit.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// This core's circuit now.
    pub fn circuit(&self) -> Circuit {
        match self.circuit.load(Relaxed) {
            0 => Circuit::Closed,
            1 => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// Responses in bucket `slot` of [`DURATION_BUCKETS_US`]; slot
    /// `DURATION_BUCKETS_US.len()` holds those above the last bound.
    pub fn duration(&self, slot: usize) -> u64 {
        self.duration[slot].load(Relaxed)
    }

    /// The sum of every response's latency, microseconds.
    pub fn duration_sum_us(&self) -> u64 {
        self.duration_sum_us.load(Relaxed)
    }

    /// Event streams opened.
    pub fn streams(&self) -> u64 {
        self.streams.load(Relaxed)
    }

    /// Event streams ended.
    pub fn streams_ended(&self) -> u64 {
        self.streams_ended.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_falls_in_the_first_bucket_that_holds_it() {
        let stats = UpstreamStats::default();
        stats.answered(2, 50); // on a bound: that bucket
        stats.answered(1, 51); // just above: the next
        stats.answered(4, 10_000_001); // above them all
        stats.answered(0, 7); // nothing read: nothing counted
        assert_eq!(stats.duration(0), 2);
        assert_eq!(stats.duration(1), 1);
        assert_eq!(stats.duration(DURATION_BUCKETS_US.len()), 4);
        let counted: u64 = (0..=DURATION_BUCKETS_US.len())
            .map(|i| stats.duration(i))
            .sum();
        assert_eq!(counted, 7);
        assert_eq!(stats.duration_sum_us(), 2 * 50 + 51 + 4 * 10_000_001);
    }

    #[test]
    fn the_circuit_follows_the_breaker_and_only_an_opening_is_an_ejection() {
        let stats = UpstreamStats::default();
        assert_eq!(stats.circuit(), Circuit::Closed);
        stats.ejected();
        assert_eq!(stats.circuit(), Circuit::Open);
        stats.probing();
        assert_eq!(stats.circuit(), Circuit::HalfOpen);
        stats.reopened();
        assert_eq!(stats.circuit(), Circuit::Open);
        stats.probing();
        stats.restored();
        assert_eq!(stats.circuit(), Circuit::Closed);
        assert_eq!(stats.ejections(), 1);
    }

    #[test]
    fn failures_are_counted_by_class() {
        let stats = UpstreamStats::default();
        stats.failed(Failure::TimedOut);
        stats.failed(Failure::TimedOut);
        stats.failed(Failure::Connect);
        assert_eq!(stats.errors(Failure::TimedOut), 2);
        assert_eq!(stats.errors(Failure::Connect), 1);
        assert_eq!(stats.errors(Failure::Broken), 0);
    }
}
