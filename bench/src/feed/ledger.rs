//! The ledger: per write, when it was sent and when each subscriber had it.
//!
//! The publisher opens a write (its index is the round marker the title or
//! body carries) just before its bytes go out; a subscriber that reads a
//! marked event books a delivery against that index; the publisher's reader
//! books the answer (the 202, nchan's 201); the visibility pollers book when
//! the write showed in a core's list. The subscribers' thread and the
//! executor share it under a mutex, which the subscribers take once per
//! batch of reads.
//!
//! A delivery after the write's deadline is late: it is counted apart and,
//! like one that never came, as missed. Latencies are microseconds.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Which part of the run a write belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not counted: the first write warms the path up.
    Warmup,
    /// One write at a time, the next once every subscriber has this one.
    Rounds,
    /// Writes on a fixed schedule (open loop).
    Sustained,
}

pub struct Write {
    pub phase: Phase,
    /// When the write was sent (open loop: when it was due).
    pub sent: Instant,
    /// Deliveries after this are late.
    pub deadline: Instant,
    /// Deliveries before the deadline.
    pub delivered: u64,
    pub late: u64,
    /// The last delivery before the deadline.
    pub last: Option<Instant>,
    /// When its answer came, and its status.
    pub answered: Option<(Instant, u16)>,
    /// Per core of the watched server, when the write was first listed.
    pub visible: Vec<Option<Instant>>,
}

impl Write {
    /// Listed on every watched core (true when none is watched).
    pub fn visible_everywhere(&self) -> bool {
        self.visible.iter().all(Option::is_some)
    }
}

pub struct Ledger {
    pub writes: Vec<Write>,
    /// Subscribers that were ready when the writes began: each write is
    /// owed to every one of them.
    pub expected: u64,
    /// Cores of the server whose lists are watched (0: none).
    pub cores: usize,
    /// A marked event a subscriber had already had (or an older one).
    pub duplicates: u64,
    /// Events without this run's marker (nchan's replay of another run's
    /// messages would show here).
    pub foreign: u64,
    /// Bytes of the `data:` value of marked events, smallest and largest.
    pub data_bytes: (usize, usize),
    latency: [Histogram<u64>; 2],
}

/// The ledger, whoever held it last having panicked or not.
pub fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            writes: Vec::new(),
            expected: 0,
            cores: 0,
            duplicates: 0,
            foreign: 0,
            data_bytes: (usize::MAX, 0),
            latency: [histogram(), histogram()],
        }
    }

    /// A new write, sent at `sent`; its index.
    pub fn open(&mut self, phase: Phase, sent: Instant, deadline: Instant) -> usize {
        self.writes.push(Write {
            phase,
            sent,
            deadline,
            delivered: 0,
            late: 0,
            last: None,
            answered: None,
            visible: vec![None; self.cores],
        });
        self.writes.len() - 1
    }

    /// A subscriber read write `index`'s event at `at`.
    pub fn deliver(&mut self, index: usize, at: Instant, data_len: usize) {
        let Some(w) = self.writes.get_mut(index) else {
            self.foreign += 1;
            return;
        };
        self.data_bytes = (
            self.data_bytes.0.min(data_len),
            self.data_bytes.1.max(data_len),
        );
        if at > w.deadline {
            w.late += 1;
            return;
        }
        w.delivered += 1;
        w.last = Some(w.last.map_or(at, |l| l.max(at)));
        let slot = match w.phase {
            Phase::Warmup => return,
            Phase::Rounds => 0,
            Phase::Sustained => 1,
        };
        // Bounds cover ten minutes; a longer wait is recorded as that.
        let _ = self.latency[slot].record(us(at.saturating_duration_since(w.sent)));
    }

    pub fn answered(&mut self, index: usize, at: Instant, status: u16) {
        if let Some(w) = self.writes.get_mut(index) {
            w.answered = Some((at, status));
        }
    }

    /// Write `index` was listed on `core` at `at` (the first time counts).
    pub fn listed(&mut self, index: usize, core: usize, at: Instant) {
        if let Some(slot) = self
            .writes
            .get_mut(index)
            .and_then(|w| w.visible.get_mut(core))
        {
            slot.get_or_insert(at);
        }
    }

    /// What the writes of `phase` measured.
    pub fn summary(&self, phase: Phase) -> Summary {
        let latency = match phase {
            Phase::Rounds => &self.latency[0],
            Phase::Sustained => &self.latency[1],
            Phase::Warmup => panic!("the warm-up is not summarised"),
        };
        let mut s = Summary {
            writes: 0,
            expected: 0,
            delivered: 0,
            late: 0,
            incomplete: 0,
            refused: 0,
            unanswered: 0,
            not_visible: 0,
            latency: latency.clone(),
            to_all: histogram(),
            answer: histogram(),
            visible: histogram(),
        };
        for w in self.writes.iter().filter(|w| w.phase == phase) {
            s.writes += 1;
            s.expected += self.expected;
            s.delivered += w.delivered;
            s.late += w.late;
            match (w.delivered == self.expected, w.last) {
                (true, Some(last)) => {
                    let _ = s.to_all.record(us(last.saturating_duration_since(w.sent)));
                }
                _ => s.incomplete += 1,
            }
            match w.answered {
                Some((at, status)) => {
                    if !(200..300).contains(&status) {
                        s.refused += 1;
                    }
                    let _ = s.answer.record(us(at.saturating_duration_since(w.sent)));
                }
                None => s.unanswered += 1,
            }
            if self.cores > 0 {
                match w.visible.iter().copied().collect::<Option<Vec<_>>>() {
                    Some(times) => {
                        let everywhere = times.into_iter().max().unwrap_or(w.sent);
                        let _ = s
                            .visible
                            .record(us(everywhere.saturating_duration_since(w.sent)));
                    }
                    None => s.not_visible += 1,
                }
            }
        }
        s
    }
}

/// One phase's figures. Percentiles in milliseconds.
pub struct Summary {
    pub writes: u64,
    /// Deliveries owed: writes x subscribers ready.
    pub expected: u64,
    /// Deliveries before each write's deadline.
    pub delivered: u64,
    /// Deliveries after it (also missed).
    pub late: u64,
    /// Writes not delivered to every subscriber in time.
    pub incomplete: u64,
    /// Writes answered with a status other than 2xx.
    pub refused: u64,
    pub unanswered: u64,
    /// Writes not listed on every watched core.
    pub not_visible: u64,
    /// Send -> event read, per delivery.
    pub latency: Histogram<u64>,
    /// Send -> the last subscriber's read, per write delivered to all.
    pub to_all: Histogram<u64>,
    /// Send -> its answer.
    pub answer: Histogram<u64>,
    /// Send -> listed on every watched core.
    pub visible: Histogram<u64>,
}

impl Summary {
    pub fn missed(&self) -> u64 {
        self.expected - self.delivered
    }
}

/// p50, p99 and max of a histogram of microseconds, in milliseconds (zeros
/// when it is empty).
pub fn percentiles(h: &Histogram<u64>) -> sonic_rs::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return sonic_rs::json!({"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0});
    }
    sonic_rs::json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}
