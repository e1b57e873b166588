//! Per-core counters, summed at scrape time into Prometheus text format.
//!
//! Each core writes only its own [`CoreMetrics`] (cache-line aligned, so cores
//! never share a line). Counters are `AtomicU64` so that a scrape on another
//! core may read them, but with a single writer they are bumped with a relaxed
//! load and store, which compiles to plain moves on x86: no lock prefix and no
//! contention on the hot path. This array is the one piece of state the cores
//! share, and only for reading.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use todo_runtime::counter::bump;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    TodosList = 0,
    /// `GET /todos` with filters, sort or a cursor (the read model).
    TodosQuery,
    TodosGet,
    TodosWrite,
    Commands,
    Users,
    Sessions,
    Categories,
    /// `GET /todos/changes`, counted when its stream starts (or is refused).
    Changes,
    Health,
    Metrics,
    /// `/openapi.json`, `/docs` and the page's files.
    Docs,
    Other,
}

const ROUTES: [&str; 13] = [
    "todos_list",
    "todos_query",
    "todos_get",
    "todos_write",
    "commands",
    "users",
    "sessions",
    "categories",
    "changes",
    "health",
    "metrics",
    "docs",
    "other",
];

/// Statuses counted individually; anything else counts as the last slot (500).
const STATUSES: [u16; 25] = [
    200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 417, 422, 429,
    431, 501, 503, 505, 100, 500,
];

/// Upper bounds of the batch service-time histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000, 1_000_000,
];

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() - 1)
}

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    accepted: AtomicU64,
    closed: AtomicU64,
    panics: AtomicU64,
    /// Connections closed because the client did not take its answers.
    send_timeouts: AtomicU64,
    /// Connections holding no buffer now (see `conn.rs`).
    quiet: AtomicU64,
    snapshot_version: AtomicU64,
    /// Unix ms when the held snapshot was installed.
    snapshot_installed_ms: AtomicU64,
    snapshot_stale: AtomicU64,
    /// Access log lines dropped because the writer fell behind.
    log_dropped: AtomicU64,
    /// Change-feed subscribers open now, and what was done for them.
    feed_subscribers: AtomicU64,
    feed_events: AtomicU64,
    feed_resumes: AtomicU64,
    feed_resets: AtomicU64,
    feed_slow_closed: AtomicU64,
}

impl CoreMetrics {
    #[inline]
    pub fn request(&self, route: Route, status: u16) {
        bump(&self.requests[route as usize][status_slot(status)], 1);
    }

    /// `count` requests served by one batch that took `us` microseconds from
    /// its read completing to its write completing.
    #[inline]
    pub fn batch(&self, count: u64, us: u64) {
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        bump(&self.latency[slot], count);
        bump(&self.latency_sum_us, us.saturating_mul(count));
    }

    pub fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub fn closed(&self) {
        bump(&self.closed, 1);
    }

    /// The core's number of quiet connections changed to `n`.
    pub fn quiet(&self, n: usize) {
        self.quiet.store(n as u64, Relaxed);
    }

    pub fn panicked(&self) {
        bump(&self.panics, 1);
    }

    pub fn log_dropped(&self, lines: u64) {
        bump(&self.log_dropped, lines);
    }

    pub fn send_timed_out(&self) {
        bump(&self.send_timeouts, 1);
    }

    /// The core's number of change-feed subscribers changed to `n`.
    pub fn feed_subscribers(&self, n: usize) {
        self.feed_subscribers.store(n as u64, Relaxed);
    }

    /// `events` change events written to subscribers.
    pub fn feed_sent(&self, events: u64) {
        bump(&self.feed_events, events);
    }

    /// A subscriber resumed from a position the history covers.
    pub fn feed_resumed(&self) {
        bump(&self.feed_resumes, 1);
    }

    /// A subscriber resumed from before the history and was told to reset.
    pub fn feed_reset(&self) {
        bump(&self.feed_resets, 1);
    }

    /// A subscriber closed for not reading.
    pub fn feed_slow_closed(&self) {
        bump(&self.feed_slow_closed, 1);
    }

    pub fn set_stale(&self, stale: bool) {
        self.snapshot_stale.store(u64::from(stale), Relaxed);
    }

    pub fn snapshot(&self, version: u64, installed_ms: u64, stale: bool) {
        self.snapshot_version.store(version, Relaxed);
        self.snapshot_installed_ms.store(installed_ms, Relaxed);
        self.snapshot_stale.store(u64::from(stale), Relaxed);
    }
}

/// Render all cores' metrics. `now_ms` is Unix milliseconds.
pub fn render(cores: &[CoreMetrics], now_ms: u64) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let sum = |f: &dyn Fn(&CoreMetrics) -> &AtomicU64| -> u64 {
        cores.iter().map(|c| f(c).load(Relaxed)).sum()
    };

    out.push_str("# HELP todo_requests_total Requests answered, by route and status.\n");
    out.push_str("# TYPE todo_requests_total counter\n");
    for (r, route) in ROUTES.iter().enumerate() {
        for (s, status) in STATUSES.iter().enumerate() {
            let n = sum(&|c| &c.requests[r][s]);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "todo_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }

    out.push_str("# HELP todo_request_duration_seconds Time from a batch's read completing to its write completing, per request in the batch.\n");
    out.push_str("# TYPE todo_request_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += sum(&|c| &c.latency[i]);
        let _ = writeln!(
            out,
            "todo_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += sum(&|c| &c.latency[LATENCY_BUCKETS_US.len()]);
    let _ = writeln!(
        out,
        "todo_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "todo_request_duration_seconds_sum {}",
        sum(&|c| &c.latency_sum_us) as f64 / 1e6
    );
    let _ = writeln!(out, "todo_request_duration_seconds_count {cumulative}");

    let accepted = sum(&|c| &c.accepted);
    let closed = sum(&|c| &c.closed);
    out.push_str("# HELP todo_connections_accepted_total Connections accepted.\n# TYPE todo_connections_accepted_total counter\n");
    let _ = writeln!(out, "todo_connections_accepted_total {accepted}");
    out.push_str(
        "# HELP todo_connections_open Connections open now.\n# TYPE todo_connections_open gauge\n",
    );
    let _ = writeln!(
        out,
        "todo_connections_open {}",
        accepted.saturating_sub(closed)
    );
    out.push_str("# HELP todo_connections_quiet Connections idle past --idle-release, holding no buffer.\n# TYPE todo_connections_quiet gauge\n");
    let _ = writeln!(out, "todo_connections_quiet {}", sum(&|c| &c.quiet));
    out.push_str("# HELP todo_connection_panics_total Connections ended by a caught panic.\n# TYPE todo_connection_panics_total counter\n");
    let _ = writeln!(out, "todo_connection_panics_total {}", sum(&|c| &c.panics));
    out.push_str("# HELP todo_send_timeouts_total Connections closed because the client did not take its answers within --send-timeout.\n# TYPE todo_send_timeouts_total counter\n");
    let _ = writeln!(
        out,
        "todo_send_timeouts_total {}",
        sum(&|c| &c.send_timeouts)
    );

    out.push_str("# HELP todo_access_log_dropped_total Access log lines dropped because the log writer fell behind.\n# TYPE todo_access_log_dropped_total counter\n");
    let _ = writeln!(
        out,
        "todo_access_log_dropped_total {}",
        sum(&|c| &c.log_dropped)
    );
    type Field = fn(&CoreMetrics) -> &AtomicU64;
    let feed: [(&str, &str, &str, Field); 5] = [
        ("todo_feed_subscribers", "gauge", "Change-feed streams open now.", |c| &c.feed_subscribers),
        ("todo_feed_events_total", "counter", "Change events written to subscribers.", |c| &c.feed_events),
        ("todo_feed_resumes_total", "counter", "Subscribers that resumed from a position the history covers.", |c| &c.feed_resumes),
        ("todo_feed_resets_total", "counter", "Subscribers that resumed from before the history and were sent a reset.", |c| &c.feed_resets),
        ("todo_feed_slow_closed_total", "counter", "Subscribers closed because their unsent events passed --feed-pending or a write did not finish within a heartbeat.", |c| &c.feed_slow_closed),
    ];
    for (name, kind, help, field) in feed {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {}", sum(&|c| field(c)));
    }
    out.push_str("# HELP todo_snapshot_version Version of the snapshot each core serves.\n# TYPE todo_snapshot_version gauge\n");
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "todo_snapshot_version{{core=\"{i}\"}} {}",
            c.snapshot_version.load(Relaxed)
        );
    }
    out.push_str("# HELP todo_snapshot_age_seconds Time since each core installed its snapshot.\n# TYPE todo_snapshot_age_seconds gauge\n");
    for (i, c) in cores.iter().enumerate() {
        let age = now_ms.saturating_sub(c.snapshot_installed_ms.load(Relaxed)) as f64 / 1e3;
        let _ = writeln!(out, "todo_snapshot_age_seconds{{core=\"{i}\"}} {age}");
    }
    out.push_str("# HELP todo_snapshot_stale 1 when a core cannot confirm its snapshot is current.\n# TYPE todo_snapshot_stale gauge\n");
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            out,
            "todo_snapshot_stale{{core=\"{i}\"}} {}",
            c.snapshot_stale.load(Relaxed)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_across_cores() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        cores[0].request(Route::TodosList, 200);
        cores[1].request(Route::TodosList, 200);
        cores[1].request(Route::Other, 404);
        cores[0].batch(3, 40);
        cores[0].accepted();
        let text = render(&cores, 0);
        assert!(text.contains("todo_requests_total{route=\"todos_list\",status=\"200\"} 2\n"));
        assert!(text.contains("todo_requests_total{route=\"other\",status=\"404\"} 1\n"));
        assert!(text.contains("todo_request_duration_seconds_bucket{le=\"0.00005\"} 3\n"));
        assert!(text.contains("todo_request_duration_seconds_count 3\n"));
        assert!(text.contains("todo_connections_open 1\n"));
    }
}
