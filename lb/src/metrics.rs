//! todo-lb's counters, written per core on the proxy's path and summed into
//! Prometheus text by the admin listener (`admin.rs`) at scrape time.
//!
//! ```text
//! todo_lb_requests_total                          client requests parsed (forwarded or answered here)
//! todo_lb_connections_accepted_total              client connections accepted
//! todo_lb_connections_open                        client connections open now
//! todo_lb_tls_handshakes_total{result}            on --listen-tls: ok, failed, plain_http
//! todo_lb_cache_requests_total{result}            --cache on: hit, miss, not_modified (304 here)
//! todo_lb_cache_bytes                             bytes held by the edge cache (all cores)
//! todo_lb_cache_entries                           entries held by the edge cache (all cores)
//! todo_lb_streams_total                           event streams relayed (text/event-stream, proxy/stream.rs)
//! todo_lb_streams_open                            event streams relayed now
//! todo_lb_streams_ended_total{by}                 ended by: upstream, idle (--stream-idle), client, drain
//! todo_lb_limited_total{route}                    requests answered 429 by a [[limit]] (--config)
//! todo_lb_config_reloads_total{result}            re-reads of --config: ok, failed
//! todo_lb_upstream_requests_total{upstream}       requests written to the upstream
//! todo_lb_upstream_errors_total{upstream,kind}    failed exchanges: connect, timeout, broken
//! todo_lb_upstream_ejections_total{upstream}      circuits opened (summed over cores)
//! todo_lb_upstream_up{upstream}                   1 in rotation, 0 ejected or failing its checks
//! todo_lb_upstream_circuit{upstream,state}        cores whose circuit is closed, open, half_open
//! todo_lb_upstream_duration_seconds{upstream}     histogram: batch written -> each response read
//! todo_lb_upstream_streams_total{upstream}        event streams the upstream answered
//! todo_lb_upstream_streams_open{upstream}         its connections held by an event stream now
//! ```
//!
//! The same scheme as todo-server's `server/src/metrics.rs`: every counter
//! has one writer (its core), so it is an `AtomicU64` bumped with a relaxed
//! load and store (plain moves on x86, no lock prefix), and every core's
//! counters sit on cache lines of their own. Client totals are in
//! [`CoreMetrics`], one per core, here; per-upstream counters are in
//! [`UpstreamStats`] (`upstream_stats.rs`), one per core inside each shared
//! [`Upstream`], so they follow an upstream through a re-read upstreams file
//! and go with it. No lock is taken on the request path; the renderer takes
//! the upstream set's mutex once per scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use todo_runtime::counter::bump;

use crate::failure::Failure;
use crate::upstream::Upstream;
use crate::upstream_stats::{Circuit, UpstreamStats, DURATION_BUCKETS_US};

/// One core's client-side totals.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    requests: AtomicU64,
    accepted: AtomicU64,
    closed: AtomicU64,
    /// Per [`Handshake`], in its declaration order.
    tls: [AtomicU64; 3],
    /// Per [`CacheResult`], in its declaration order.
    cache: [AtomicU64; 3],
    /// This core's cache size now (a gauge written by its core).
    cache_bytes: AtomicU64,
    cache_entries: AtomicU64,
    /// Event streams relayed; those ended per [`StreamEnd`], in its
    /// declaration order (open: the difference).
    streams: AtomicU64,
    streams_ended: [AtomicU64; StreamEnd::ALL.len()],
}

/// How a TLS connection's start ended.
#[derive(Debug, Clone, Copy)]
pub enum Handshake {
    Ok,
    /// A TLS error, an end of stream or a time-out during the handshake.
    Failed,
    /// The client spoke plain HTTP to the TLS port (answered 400).
    PlainHttp,
}

/// What the edge cache did for a request it could hold.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    /// Answered 304 here: the client's `If-None-Match` matched.
    NotModified,
}

/// Who ended a relayed event stream (`proxy/stream.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream closed it (its end or a reset): the client reconnects.
    Upstream,
    /// The upstream sent nothing for `--stream-idle`.
    Idle,
    /// The client left, or did not take a write within `--stream-idle`.
    Client,
    /// The balancer drains: the client reconnects to another.
    Drain,
}

impl StreamEnd {
    /// Every one, in declaration order (the counters' slots).
    pub const ALL: [StreamEnd; 4] = [
        StreamEnd::Upstream,
        StreamEnd::Idle,
        StreamEnd::Client,
        StreamEnd::Drain,
    ];

    /// Its `by` label in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            StreamEnd::Upstream => "upstream",
            StreamEnd::Idle => "idle",
            StreamEnd::Client => "client",
            StreamEnd::Drain => "drain",
        }
    }
}

impl CoreMetrics {
    /// `n` client requests parsed in one batch.
    #[inline]
    pub fn requests(&self, n: usize) {
        bump(&self.requests, n as u64);
    }

    pub fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub fn closed(&self) {
        bump(&self.closed, 1);
    }

    pub fn handshake(&self, how: Handshake) {
        bump(&self.tls[how as usize], 1);
    }

    #[inline]
    pub fn cache(&self, result: CacheResult) {
        bump(&self.cache[result as usize], 1);
    }

    /// This core's cache now holds `entries` answers of `bytes` in all.
    pub fn cache_size(&self, entries: usize, bytes: usize) {
        self.cache_entries.store(entries as u64, Relaxed);
        self.cache_bytes.store(bytes as u64, Relaxed);
    }

    /// An event stream began to be relayed.
    pub fn stream_opened(&self) {
        bump(&self.streams, 1);
    }

    pub fn stream_ended(&self, by: StreamEnd) {
        bump(&self.streams_ended[by as usize], 1);
    }
}

/// Render every core's totals and every current upstream's counters.
pub fn render(cores: &[CoreMetrics], upstreams: &[std::sync::Arc<Upstream>]) -> String {
    let mut out = String::with_capacity(4096 + upstreams.len() * 4096);
    let total = |f: &dyn Fn(&CoreMetrics) -> &AtomicU64| -> u64 {
        cores.iter().map(|c| f(c).load(Relaxed)).sum()
    };
    out.push_str("# HELP todo_lb_requests_total Client requests parsed, forwarded or answered by the balancer (429, 502, 503, 504).\n# TYPE todo_lb_requests_total counter\n");
    let _ = writeln!(out, "todo_lb_requests_total {}", total(&|c| &c.requests));
    let accepted = total(&|c| &c.accepted);
    let closed = total(&|c| &c.closed);
    out.push_str("# HELP todo_lb_connections_accepted_total Client connections accepted.\n# TYPE todo_lb_connections_accepted_total counter\n");
    let _ = writeln!(out, "todo_lb_connections_accepted_total {accepted}");
    out.push_str("# HELP todo_lb_connections_open Client connections open now.\n# TYPE todo_lb_connections_open gauge\n");
    let _ = writeln!(
        out,
        "todo_lb_connections_open {}",
        accepted.saturating_sub(closed)
    );

    out.push_str("# HELP todo_lb_tls_handshakes_total Connections to --listen-tls by how their start ended: ok, failed (a TLS error, an end or a time-out), plain_http (answered 400: not TLS).\n# TYPE todo_lb_tls_handshakes_total counter\n");
    for (i, result) in ["ok", "failed", "plain_http"].iter().enumerate() {
        let n = total(&|c| &c.tls[i]);
        let _ = writeln!(
            out,
            "todo_lb_tls_handshakes_total{{result=\"{result}\"}} {n}"
        );
    }
    out.push_str("# HELP todo_lb_cache_requests_total Requests the edge cache could answer (public GETs without Authorization), by result: hit, miss, not_modified (304 at the edge).\n# TYPE todo_lb_cache_requests_total counter\n");
    for (i, result) in ["hit", "miss", "not_modified"].iter().enumerate() {
        let n = total(&|c| &c.cache[i]);
        let _ = writeln!(
            out,
            "todo_lb_cache_requests_total{{result=\"{result}\"}} {n}"
        );
    }
    out.push_str("# HELP todo_lb_cache_bytes Bytes of answers held by the edge cache, all cores (each bounded by --cache-bytes).\n# TYPE todo_lb_cache_bytes gauge\n");
    let _ = writeln!(out, "todo_lb_cache_bytes {}", total(&|c| &c.cache_bytes));
    out.push_str("# HELP todo_lb_cache_entries Answers held by the edge cache, all cores.\n# TYPE todo_lb_cache_entries gauge\n");
    let _ = writeln!(
        out,
        "todo_lb_cache_entries {}",
        total(&|c| &c.cache_entries)
    );

    // The ends first: a stream counted as ended was counted as opened before.
    let ended: Vec<u64> = StreamEnd::ALL
        .iter()
        .map(|&by| total(&|c| &c.streams_ended[by as usize]))
        .collect();
    let streams = total(&|c| &c.streams);
    out.push_str("# HELP todo_lb_streams_total Event streams relayed: text/event-stream answers delimited by the upstream's close, each on an upstream connection of its own.\n# TYPE todo_lb_streams_total counter\n");
    let _ = writeln!(out, "todo_lb_streams_total {streams}");
    out.push_str("# HELP todo_lb_streams_open Event streams being relayed now.\n# TYPE todo_lb_streams_open gauge\n");
    let _ = writeln!(
        out,
        "todo_lb_streams_open {}",
        streams.saturating_sub(ended.iter().sum())
    );
    out.push_str("# HELP todo_lb_streams_ended_total Event streams ended, by: upstream (its close or a reset), idle (nothing from the upstream for --stream-idle), client (it left or did not read for --stream-idle), drain (the balancer stops).\n# TYPE todo_lb_streams_ended_total counter\n");
    for (by, n) in StreamEnd::ALL.iter().zip(&ended) {
        let by = by.label();
        let _ = writeln!(out, "todo_lb_streams_ended_total{{by=\"{by}\"}} {n}");
    }

    // Each upstream's per-core slots summed; `label` is `upstream="host:port"`.
    let sum =
        |u: &Upstream, f: &dyn Fn(&UpstreamStats) -> u64| -> u64 { u.stats.iter().map(f).sum() };
    let cores_in = |u: &Upstream, state: Circuit| -> usize {
        u.stats.iter().filter(|s| s.circuit() == state).count()
    };
    let labels: Vec<String> = upstreams
        .iter()
        .map(|u| format!("upstream=\"{}\"", u.addr))
        .collect();

    out.push_str("# HELP todo_lb_upstream_requests_total Requests written to the upstream.\n# TYPE todo_lb_upstream_requests_total counter\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        let n = sum(u, &|s| s.requests());
        let _ = writeln!(out, "todo_lb_upstream_requests_total{{{label}}} {n}");
    }
    out.push_str("# HELP todo_lb_upstream_errors_total Exchanges with the upstream that failed: connect (no connection within --connect-timeout, nothing sent), timeout (no answer within --upstream-timeout), broken (a reset, an early end of stream or a response that cannot be framed).\n# TYPE todo_lb_upstream_errors_total counter\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        for failure in Failure::ALL {
            let n = sum(u, &|s| s.errors(failure));
            let kind = failure.label();
            let _ = writeln!(
                out,
                "todo_lb_upstream_errors_total{{{label},kind=\"{kind}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP todo_lb_upstream_ejections_total Times a core opened the upstream's circuit (passive ejection after --eject-after failures).\n# TYPE todo_lb_upstream_ejections_total counter\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        let n = sum(u, &|s| s.ejections());
        let _ = writeln!(out, "todo_lb_upstream_ejections_total{{{label}}} {n}");
    }
    out.push_str("# HELP todo_lb_upstream_up 1 when the upstream is in rotation: its active check passes and no core holds its circuit open; 0 otherwise.\n# TYPE todo_lb_upstream_up gauge\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        let up = u.healthy() && cores_in(u, Circuit::Closed) == u.stats.len();
        let _ = writeln!(out, "todo_lb_upstream_up{{{label}}} {}", u8::from(up));
    }
    out.push_str("# HELP todo_lb_upstream_circuit Cores whose circuit for the upstream is in this state: closed (in use), open (ejected for --eject-for after --eject-after failures), half_open (one exchange testing it).\n# TYPE todo_lb_upstream_circuit gauge\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        for circuit in Circuit::ALL {
            let (n, state) = (cores_in(u, circuit), circuit.label());
            let _ = writeln!(
                out,
                "todo_lb_upstream_circuit{{{label},state=\"{state}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP todo_lb_upstream_streams_total Event streams the upstream answered (each held one of its connections for its life).\n# TYPE todo_lb_upstream_streams_total counter\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        let n = sum(u, &|s| s.streams());
        let _ = writeln!(out, "todo_lb_upstream_streams_total{{{label}}} {n}");
    }
    out.push_str("# HELP todo_lb_upstream_streams_open The upstream's connections held by an event stream now.\n# TYPE todo_lb_upstream_streams_open gauge\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        // The ends first, as for todo_lb_streams_open.
        let ended = sum(u, &|s| s.streams_ended());
        let n = sum(u, &|s| s.streams()).saturating_sub(ended);
        let _ = writeln!(out, "todo_lb_upstream_streams_open{{{label}}} {n}");
    }
    out.push_str("# HELP todo_lb_upstream_duration_seconds Time from writing a batch to the upstream to reading each of its responses, per request.\n# TYPE todo_lb_upstream_duration_seconds histogram\n");
    for (u, label) in upstreams.iter().zip(&labels) {
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS_US.iter().enumerate() {
            cumulative += sum(u, &|s| s.duration(i));
            let _ = writeln!(
                out,
                "todo_lb_upstream_duration_seconds_bucket{{{label},le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += sum(u, &|s| s.duration(DURATION_BUCKETS_US.len()));
        let _ = writeln!(
            out,
            "todo_lb_upstream_duration_seconds_bucket{{{label},le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "todo_lb_upstream_duration_seconds_sum{{{label}}} {}",
            sum(u, &|s| s.duration_sum_us()) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "todo_lb_upstream_duration_seconds_count{{{label}}} {cumulative}"
        );
    }
    out
}

/// The `[[limit]]` rules' refusals (`--config`), one series per rule in
/// force, and the file's re-reads.
pub fn render_limits(out: &mut String, shared: &crate::route_limits::SharedLimits) {
    out.push_str("# HELP todo_lb_config_reloads_total Re-reads of the --config file (on change or SIGHUP): ok (its limits in force), failed (refused; the limits in force stay).\n# TYPE todo_lb_config_reloads_total counter\n");
    let ok = shared.reloaded.load(Relaxed);
    let failed = shared.reload_failed.load(Relaxed);
    let _ = writeln!(out, "todo_lb_config_reloads_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(
        out,
        "todo_lb_config_reloads_total{{result=\"failed\"}} {failed}"
    );
    let limits = shared.current();
    out.push_str("# HELP todo_lb_limited_total Requests answered 429 by a [[limit]] of --config, by its route.\n# TYPE todo_lb_limited_total counter\n");
    for rule in &limits.rules {
        let n = rule.refused.load(Relaxed);
        let _ = writeln!(out, "todo_lb_limited_total{{route=\"{}\"}} {n}", rule.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn upstream_counters_sum_across_cores() {
        let up = Arc::new(Upstream::new("127.0.0.1:8081".parse().unwrap(), 2));
        up.stats[0].sent(3);
        up.stats[1].sent(2);
        up.stats[0].answered(3, 40);
        up.stats[1].answered(2, 2_000_000);
        up.stats[1].failed(Failure::TimedOut);
        up.stats[1].ejected();
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        cores[0].requests(5);
        cores[1].accepted();
        cores[0].stream_opened();
        cores[1].stream_opened();
        cores[1].stream_ended(StreamEnd::Idle);
        up.stats[0].stream_opened();
        up.stats[1].stream_opened();
        up.stats[1].stream_opened();
        up.stats[1].stream_ended();
        let text = render(&cores, std::slice::from_ref(&up));
        let label = "upstream=\"127.0.0.1:8081\"";
        for line in [
            "todo_lb_requests_total 5".to_string(),
            "todo_lb_connections_open 1".to_string(),
            "todo_lb_streams_total 2".to_string(),
            "todo_lb_streams_open 1".to_string(),
            "todo_lb_streams_ended_total{by=\"idle\"} 1".to_string(),
            "todo_lb_streams_ended_total{by=\"client\"} 0".to_string(),
            format!("todo_lb_upstream_streams_total{{{label}}} 3"),
            format!("todo_lb_upstream_streams_open{{{label}}} 2"),
            format!("todo_lb_upstream_requests_total{{{label}}} 5"),
            format!("todo_lb_upstream_errors_total{{{label},kind=\"timeout\"}} 1"),
            format!("todo_lb_upstream_errors_total{{{label},kind=\"connect\"}} 0"),
            format!("todo_lb_upstream_ejections_total{{{label}}} 1"),
            format!("todo_lb_upstream_up{{{label}}} 0"),
            format!("todo_lb_upstream_circuit{{{label},state=\"closed\"}} 1"),
            format!("todo_lb_upstream_circuit{{{label},state=\"open\"}} 1"),
            format!("todo_lb_upstream_circuit{{{label},state=\"half_open\"}} 0"),
            format!("todo_lb_upstream_duration_seconds_bucket{{{label},le=\"0.00005\"}} 3"),
            format!("todo_lb_upstream_duration_seconds_bucket{{{label},le=\"1\"}} 3"),
            format!("todo_lb_upstream_duration_seconds_bucket{{{label},le=\"2.5\"}} 5"),
            format!("todo_lb_upstream_duration_seconds_count{{{label}}} 5"),
            format!("todo_lb_upstream_duration_seconds_sum{{{label}}} 4.00012"),
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        }
        up.stats[1].probing();
        let text = render(&cores, std::slice::from_ref(&up));
        assert!(text.contains(&format!(
            "todo_lb_upstream_circuit{{{label},state=\"half_open\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "todo_lb_upstream_circuit{{{label},state=\"open\"}} 0\n"
        )));
        up.stats[1].restored();
        let text = render(&cores, &[up]);
        assert!(text.contains(&format!(
            "todo_lb_upstream_circuit{{{label},state=\"closed\"}} 2\n"
        )));
        assert!(text.contains(&format!("todo_lb_upstream_up{{{label}}} 1\n")));
    }
}
