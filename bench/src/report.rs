//! Merging executors' results and printing them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::ShardResult;

#[derive(Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Across connections, each connection's longest wait for an answer.
#[derive(Serialize)]
pub struct LongestWaits {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Connections that waited over a second for some answer.
    pub over_1s: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub url: String,
    pub connections: usize,
    pub pipelining: usize,
    pub executors: usize,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub responses: u64,
    pub requests_per_sec: f64,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    pub latency: Option<Latency>,
    pub longest_waits: Option<LongestWaits>,
    pub wrong_status: BTreeMap<u16, u64>,
    pub framing_errors: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    /// Connections opened again after the server closed one (--reconnect).
    pub reconnects: u64,
    /// Requests sent again on the new connection.
    pub resent: u64,
    #[serde(skip)]
    hist: Histogram<u64>,
    #[serde(skip)]
    waits: Histogram<u64>,
    #[serde(skip)]
    waited_over_1s: u64,
}

impl Report {
    pub fn new(
        url: &str,
        connections: usize,
        pipelining: usize,
        executors: usize,
        rate: Option<f64>,
    ) -> Self {
        Report {
            url: url.to_string(),
            connections,
            pipelining,
            executors,
            rate,
            seconds: 0.0,
            responses: 0,
            requests_per_sec: 0.0,
            bytes: 0,
            bytes_per_sec: 0.0,
            latency: None,
            longest_waits: None,
            wrong_status: BTreeMap::new(),
            framing_errors: 0,
            connect_errors: 0,
            io_errors: 0,
            reconnects: 0,
            resent: 0,
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            waits: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            waited_over_1s: 0,
        }
    }

    pub fn merge(&mut self, r: ShardResult) {
        self.seconds = self.seconds.max(r.elapsed.as_secs_f64());
        let _ = self.hist.add(&r.latency);
        let _ = self.waits.add(&r.longest_waits);
        self.waited_over_1s += r.waited_over_1s;
        self.responses += r.responses;
        self.bytes += r.bytes;
        for (status, n) in r.wrong_status {
            *self.wrong_status.entry(status).or_default() += n;
        }
        self.framing_errors += r.framing_errors;
        self.connect_errors += r.connect_errors;
        self.io_errors += r.io_errors;
        self.reconnects += r.reconnects;
        self.resent += r.resent;
    }

    /// Rates are over the longest executor's measured phase.
    pub fn finish(&mut self) {
        self.requests_per_sec = self.responses as f64 / self.seconds;
        self.bytes_per_sec = self.bytes as f64 / self.seconds;
        if !self.hist.is_empty() {
            let h = &self.hist;
            self.latency = Some(Latency {
                p50_us: h.value_at_quantile(0.50),
                p90_us: h.value_at_quantile(0.90),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            });
        }
        if !self.waits.is_empty() {
            let w = &self.waits;
            self.longest_waits = Some(LongestWaits {
                p50_us: w.value_at_quantile(0.50),
                p99_us: w.value_at_quantile(0.99),
                max_us: w.max(),
                over_1s: self.waited_over_1s,
            });
        }
    }

    pub fn errors(&self) -> u64 {
        self.wrong_status.values().sum::<u64>()
            + self.framing_errors
            + self.connect_errors
            + self.io_errors
    }

    pub fn to_json(&self) -> String {
        sonic_rs::to_string(self).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r:.0} req/s"),
            None => format!("closed loop, pipelining {}", self.pipelining),
        };
        let _ = writeln!(
            s,
            "{} — {} connections, {mode}, {} executors, {:.2}s",
            self.url, self.connections, self.executors, self.seconds
        );
        let _ = writeln!(
            s,
            "  {:>12.0} req/s   {:>10.1} MB/s   {} responses checked and counted",
            self.requests_per_sec,
            self.bytes_per_sec / 1e6,
            self.responses
        );
        if let Some(l) = &self.latency {
            let _ = writeln!(
                s,
                "  latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        if let Some(w) = &self.longest_waits {
            let _ = writeln!(
                s,
                "  longest wait per connection us: p50 {}  p99 {}  max {}  ({} connections waited over 1 s)",
                w.p50_us, w.p99_us, w.max_us, w.over_1s
            );
        }
        let _ = writeln!(
            s,
            "  errors: {} (wrong status {:?}, framing {}, connect {}, io {})",
            self.errors(),
            self.wrong_status,
            self.framing_errors,
            self.connect_errors,
            self.io_errors
        );
        if self.reconnects > 0 {
            let _ = writeln!(
                s,
                "  reconnects: {} (requests sent again: {})",
                self.reconnects, self.resent
            );
        }
        s
    }
}
