//! What the worker says about itself: `GET /metrics` (Prometheus text) and
//! `GET /livez` on `--metrics-listen`.
//!
//! ```text
//! todo_worker_dependency_up{dependency}      1 reachable, 0 away (the broker, PostgreSQL, Redis)
//! todo_worker_outages_total{dependency}      outages begun
//! todo_worker_batches_total                  transactions committed
//! todo_worker_commands_total{result}         applied, rejected, duplicate (processed before), unreadable
//! todo_worker_snapshot_version               last committed
//! todo_worker_published_version              last written to Redis
//! todo_worker_batch_commands                 histogram: commands per committed batch
//! todo_worker_apply_duration_seconds         histogram: a batch's transaction, BEGIN to COMMIT
//! todo_worker_redeliveries_skipped_total     commands processed before, skipped
//! todo_worker_consumer_lag{partition}        messages from the group's committed offset to the
//!                                            high watermark (`lag.rs`, every 2 s)
//! ```
//!
//! The listener starts before anything else, so an outage at start-up is
//! visible too. Each connection gets one answer and is closed. The counters
//! are bumped once per batch (or per message), never per row, so plain
//! shared atomics do; the lag, written every few seconds by its own thread,
//! sits behind a mutex.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use todo_http::{admin, DateCache};
use todo_model::Outcome;

/// The dependencies the worker waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Broker,
    Postgres,
    Redis,
}

impl Dependency {
    const ALL: [Dependency; 3] = [Dependency::Broker, Dependency::Postgres, Dependency::Redis];

    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Broker => "the broker",
            Dependency::Postgres => "PostgreSQL",
            Dependency::Redis => "Redis",
        }
    }

    /// Its label in the metrics.
    fn label(self) -> &'static str {
        match self {
            Dependency::Broker => "kafka",
            Dependency::Postgres => "postgresql",
            Dependency::Redis => "redis",
        }
    }
}

/// Upper bounds of `todo_worker_batch_commands`, commands (a batch holds
/// at most `--max-batch`, 1000 by default).
const BATCH_BUCKETS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// Upper bounds of `todo_worker_apply_duration_seconds`, microseconds.
const APPLY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A Prometheus histogram over integer observations.
#[derive(Debug)]
struct Histogram {
    /// Upper bounds, in the unit observed.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: u64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Its lines; bounds and sum are divided by `per_unit` (1e6 turns
    /// microseconds into seconds).
    fn render(&self, out: &mut String, name: &str, help: &str, per_unit: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Relaxed);
            let le = *bound as f64 / per_unit;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Relaxed) as f64 / per_unit;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The worker's counters, shared by its tasks.
#[derive(Debug)]
pub struct Metrics {
    /// Per [`Dependency`]: 1 while an outage lasts.
    away: [AtomicU64; 3],
    outages: [AtomicU64; 3],
    batches: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    unreadable: AtomicU64,
    snapshot_version: AtomicU64,
    published_version: AtomicU64,
    /// Partitions of the topic this worker holds now.
    partitions: AtomicU64,
    /// Assignments received from the group coordinator.
    assignments: AtomicU64,
    /// Commands per committed batch.
    batch_commands: Histogram,
    /// A committed batch's transaction, microseconds.
    apply_us: Histogram,
    /// Per partition of the topic: messages the group has not committed
    /// (`lag.rs`); empty until first measured.
    lag: Mutex<Vec<(i32, u64)>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics {
            away: Default::default(),
            outages: Default::default(),
            batches: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            snapshot_version: AtomicU64::new(0),
            published_version: AtomicU64::new(0),
            partitions: AtomicU64::new(0),
            assignments: AtomicU64::new(0),
            batch_commands: Histogram::new(&BATCH_BUCKETS),
            apply_us: Histogram::new(&APPLY_BUCKETS_US),
            lag: Mutex::new(Vec::new()),
        })
    }

    /// An outage of `dep` began.
    pub fn away(&self, dep: Dependency) {
        self.away[dep as usize].store(1, Relaxed);
        self.outages[dep as usize].fetch_add(1, Relaxed);
    }

    /// `dep` answered again.
    pub fn back(&self, dep: Dependency) {
        self.away[dep as usize].store(0, Relaxed);
    }

    /// A batch committed with these outcomes (one per command; `None`:
    /// processed before) after a transaction of `took`, and, when anything
    /// changed, this snapshot version.
    pub fn committed(&self, outcomes: &[Option<Outcome>], version: Option<u64>, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_commands.observe(outcomes.len() as u64);
        self.apply_us.observe(took.as_micros() as u64);
        for outcome in outcomes {
            let counter = match outcome {
                Some(Outcome::Applied) => &self.applied,
                Some(Outcome::Rejected(_)) => &self.rejected,
                None => &self.duplicates,
            };
            counter.fetch_add(1, Relaxed);
        }
        if let Some(v) = version {
            self.snapshot_version.fetch_max(v, Relaxed);
        }
    }

    /// The committed state's version at start-up.
    pub fn started(&self, version: u64) {
        self.snapshot_version.fetch_max(version, Relaxed);
    }

    pub fn unreadable(&self) {
        self.unreadable.fetch_add(1, Relaxed);
    }

    pub fn published(&self, version: u64) {
        self.published_version.fetch_max(version, Relaxed);
    }

    /// The group gave this worker `count` partitions (a rebalance ended).
    pub fn assigned(&self, count: usize) {
        self.partitions.store(count as u64, Relaxed);
        self.assignments.fetch_add(1, Relaxed);
    }

    /// The group took this worker's partitions back (a rebalance began).
    pub fn revoked(&self) {
        self.partitions.store(0, Relaxed);
    }

    /// The lag of every partition of the topic, as just measured.
    pub fn set_lag(&self, mut lag: Vec<(i32, u64)>) {
        lag.sort_unstable();
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP todo_worker_dependency_up 1 when the dependency answers, 0 during an outage.\n# TYPE todo_worker_dependency_up gauge\n");
        for dep in Dependency::ALL {
            let up = 1 - self.away[dep as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "todo_worker_dependency_up{{dependency=\"{}\"}} {up}",
                dep.label()
            );
        }
        out.push_str("# HELP todo_worker_outages_total Outages begun, by dependency.\n# TYPE todo_worker_outages_total counter\n");
        for dep in Dependency::ALL {
            let n = self.outages[dep as usize].load(Relaxed);
            let _ = writeln!(
                out,
                "todo_worker_outages_total{{dependency=\"{}\"}} {n}",
                dep.label()
            );
        }
        single(
            &mut out,
            "todo_worker_batches_total",
            "counter",
            "Batches committed to PostgreSQL.",
            self.batches.load(Relaxed),
        );
        out.push_str("# HELP todo_worker_commands_total Commands taken from the topic, by result.\n# TYPE todo_worker_commands_total counter\n");
        for (result, n) in [
            ("applied", &self.applied),
            ("rejected", &self.rejected),
            ("duplicate", &self.duplicates),
            ("unreadable", &self.unreadable),
        ] {
            let _ = writeln!(
                out,
                "todo_worker_commands_total{{result=\"{result}\"}} {}",
                n.load(Relaxed)
            );
        }
        single(
            &mut out,
            "todo_worker_snapshot_version",
            "gauge",
            "Snapshot version last committed.",
            self.snapshot_version.load(Relaxed),
        );
        single(
            &mut out,
            "todo_worker_published_version",
            "gauge",
            "Snapshot version last written to Redis.",
            self.published_version.load(Relaxed),
        );
        self.batch_commands.render(
            &mut out,
            "todo_worker_batch_commands",
            "Commands per batch committed to PostgreSQL.",
            1.0,
        );
        self.apply_us.render(
            &mut out,
            "todo_worker_apply_duration_seconds",
            "Time of a committed batch's transaction, from BEGIN to COMMIT.",
            1e6,
        );
        single(
            &mut out,
            "todo_worker_redeliveries_skipped_total",
            "counter",
            "Commands already processed (delivered again after a restart or a rebalance, or twice in one batch), skipped; the count of todo_worker_commands_total{result=\"duplicate\"}.",
            self.duplicates.load(Relaxed),
        );
        single(
            &mut out,
            "todo_worker_partitions",
            "gauge",
            "Partitions of the topic this worker holds now (0 during a rebalance).",
            self.partitions.load(Relaxed),
        );
        single(
            &mut out,
            "todo_worker_assignments_total",
            "counter",
            "Partition assignments received from the consumer group (one per rebalance this worker took part in).",
            self.assignments.load(Relaxed),
        );
        out.push_str("# HELP todo_worker_consumer_lag Messages between the consumer group's committed offset and the partition's high watermark, measured every 2 s.\n# TYPE todo_worker_consumer_lag gauge\n");
        for (partition, lag) in self.lag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "todo_worker_consumer_lag{{partition=\"{partition}\"}} {lag}"
            );
        }
        out
    }
}

/// One metric without labels: its HELP and TYPE lines and its value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// How long a scrape may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind `addr` and answer scrapes on it for as long as the worker runs.
/// Prints `todo-worker: metrics listening on ADDR`.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "todo-worker: metrics listening on {}",
        listener.local_addr()?
    );
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
                    });
                }
                Err(e) => {
                    eprintln!("todo-worker: metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Read one request, write one answer (framed by todo-http), close.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let date = DateCache::default();
    let mut buf = Vec::with_capacity(1024);
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if admin::answer(&buf, &date, &mut out, || metrics.render()) {
            break;
        }
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_model::Rejection;

    #[test]
    fn batches_histograms_skips_and_lag_render() {
        let m = Metrics::new();
        m.committed(
            &[Some(Outcome::Applied), None, None],
            Some(7),
            Duration::from_micros(1_500),
        );
        m.committed(
            &[Some(Outcome::Rejected(Rejection::NotFound))],
            None,
            Duration::from_millis(20),
        );
        m.set_lag(vec![(1, 4), (0, 0)]);
        let text = m.render();
        for line in [
            "todo_worker_batches_total 2",
            "todo_worker_batch_commands_bucket{le=\"1\"} 1",
            "todo_worker_batch_commands_bucket{le=\"2\"} 1",
            "todo_worker_batch_commands_bucket{le=\"5\"} 2",
            "todo_worker_batch_commands_bucket{le=\"+Inf\"} 2",
            "todo_worker_batch_commands_sum 4",
            "todo_worker_batch_commands_count 2",
            "todo_worker_apply_duration_seconds_bucket{le=\"0.001\"} 0",
            "todo_worker_apply_duration_seconds_bucket{le=\"0.0025\"} 1",
            "todo_worker_apply_duration_seconds_bucket{le=\"0.025\"} 2",
            "todo_worker_apply_duration_seconds_sum 0.0215",
            "todo_worker_apply_duration_seconds_count 2",
            "todo_worker_redeliveries_skipped_total 2",
            "todo_worker_commands_total{result=\"duplicate\"} 2",
            "todo_worker_consumer_lag{partition=\"0\"} 0\ntodo_worker_consumer_lag{partition=\"1\"} 4",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        }
        assert!(text.contains("# TYPE todo_worker_apply_duration_seconds histogram\n"));
    }
}
