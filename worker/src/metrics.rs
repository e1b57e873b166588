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
//! ```
//!
//! The listener starts before anything else, so an outage at start-up is
//! visible too. Each connection gets one answer and is closed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use todo_http::http1::{self, Parsed, RequestLimits};
use todo_http::response::{self, Head, Persist};
use todo_http::DateCache;
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

/// The worker's counters, shared by its tasks.
#[derive(Debug, Default)]
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
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
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

    /// A batch committed with these outcomes (`None`: processed before)
    /// and, when anything changed, this snapshot version.
    pub fn committed(&self, outcomes: &[Option<Outcome>], version: Option<u64>) {
        self.batches.fetch_add(1, Relaxed);
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
        out.push_str("# HELP todo_worker_batches_total Batches committed to PostgreSQL.\n# TYPE todo_worker_batches_total counter\n");
        let _ = writeln!(
            out,
            "todo_worker_batches_total {}",
            self.batches.load(Relaxed)
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
        out.push_str("# HELP todo_worker_snapshot_version Snapshot version last committed.\n# TYPE todo_worker_snapshot_version gauge\n");
        let _ = writeln!(
            out,
            "todo_worker_snapshot_version {}",
            self.snapshot_version.load(Relaxed)
        );
        out.push_str("# HELP todo_worker_published_version Snapshot version last written to Redis.\n# TYPE todo_worker_published_version gauge\n");
        let _ = writeln!(
            out,
            "todo_worker_published_version {}",
            self.published_version.load(Relaxed)
        );
        out
    }
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
    let limits = RequestLimits::default();
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
        match http1::parse(&buf, &limits) {
            Ok(Parsed::Complete(req, _)) => {
                let (status, body) = match (req.method, req.path) {
                    (http1::Method::Get, "/metrics") => (200, metrics.render()),
                    (http1::Method::Get, "/livez") => (200, "ok\n".to_string()),
                    _ => (404, "not found: GET /metrics or /livez\n".to_string()),
                };
                let head = Head {
                    status,
                    date: &date,
                    persist: Persist::Close,
                    head_only: false,
                    text: true,
                    extra: b"",
                };
                response::append(&mut out, head, &[body.as_bytes()]);
                break;
            }
            Ok(Parsed::Partial { .. }) => continue,
            Err(e) => {
                response::append_error(&mut out, &e, &date, Persist::Close);
                break;
            }
        }
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}
