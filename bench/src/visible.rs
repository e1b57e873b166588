//! todo-visible: how long a write takes to show in `GET /todos` on every
//! core of every server.
//!
//! ```text
//! writers   -c connections to --write; write n is due at n / --rate (an
//!           open loop: a slow answer delays no later write); each
//!           connection sends its writes pipelined and a reader takes the
//!           202s in order: todo id, command id, when it was due, when the
//!           202 came
//! watchers  per server of --watch, one connection to each of its cores
//!           (found with /readyz, which names the core answering); every
//!           --poll, GET /todos?limit=L with If-None-Match (a 304 until the
//!           core installs another snapshot); the time each id is first
//!           listed on that core
//! report    per write: due -> 202, and due -> listed on the first and on
//!           the last core; percentiles and a histogram (stdout, JSON), and
//!           one JSON line per write (--records) for a breakdown
//! ```
//!
//! Times are Unix microseconds from one monotonic clock, so they compare
//! with the worker's command log (`received`, `time`) on the same machine.
//! A write that leaves a core's newest L before that core listed it (the
//! core was more than L writes behind) is counted as `passed_unseen`, with
//! the first list that showed newer ids as its time there.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use sonic_rs::JsonValueTrait as _;
use todo_testkit::http::read_response;

#[derive(Debug, Parser)]
#[command(name = "todo-visible", version)]
struct Cli {
    /// The server the writes go to, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    write: String,
    /// Servers watched, comma-separated: every core of each.
    #[arg(long, value_delimiter = ',', required = true)]
    watch: Vec<String>,
    /// Writes per second (open loop).
    #[arg(long)]
    rate: f64,
    /// How long to write, e.g. 20s.
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections the writes are spread over.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Bearer token for the writes.
    #[arg(long, env = "TODO_TOKEN", hide_env_values = true)]
    token: String,
    /// How often each core is asked for its list.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// The `limit` of the lists asked (the snapshot holds 1,000).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Longest wait after the last write for every write to be listed
    /// everywhere.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// One JSON line per write here.
    #[arg(long)]
    records: Option<std::path::PathBuf>,
}

/// Unix microseconds, from a monotonic clock anchored once.
#[derive(Clone, Copy)]
struct Clock {
    at: Instant,
    unix_us: u64,
}

impl Clock {
    fn new() -> Clock {
        let unix_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Clock {
            at: Instant::now(),
            unix_us,
        }
    }

    fn us(&self, t: Instant) -> u64 {
        self.unix_us + t.saturating_duration_since(self.at).as_micros() as u64
    }

    fn now(&self) -> u64 {
        self.us(Instant::now())
    }
}

/// One accepted write.
struct Written {
    todo_id: u64,
    command_id: u64,
    due_us: u64,
    accepted_us: u64,
}

/// What one core listed: each id's first time, and per list that changed,
/// when it came and its oldest id.
#[derive(Default)]
struct Seen {
    first: HashMap<u64, u64>,
    lists: Vec<(u64, u64)>,
}

impl Seen {
    /// When `id` was listed here, or (second) when it had passed unseen.
    fn when(&self, id: u64) -> Option<(u64, bool)> {
        if let Some(&t) = self.first.get(&id) {
            return Some((t, false));
        }
        self.lists
            .iter()
            .find(|(_, oldest)| *oldest > id)
            .map(|&(t, _)| (t, true))
    }
}

#[derive(serde::Deserialize)]
struct Listed {
    id: u64,
}

#[derive(serde::Deserialize)]
struct Accepted {
    command_id: u64,
    todo_id: u64,
}

fn addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: http://HOST:PORT"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    host.to_socket_addrs()?
        .next()
        .with_context(|| format!("{url}: no address"))
}

fn get(
    stream: &mut TcpStream,
    path: &str,
    buf: &mut Vec<u8>,
) -> anyhow::Result<todo_testkit::http::Response> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
    read_response(stream, buf).context("connection closed")
}

/// The number of cores `server` runs (its per-core snapshot gauges).
fn cores(server: SocketAddr) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(server)?;
    let r = get(&mut s, "/metrics", &mut Vec::new())?;
    let n = r
        .text()
        .lines()
        .filter(|l| l.starts_with("todo_snapshot_version{core="))
        .count();
    if n == 0 {
        bail!("{server}: /metrics names no core");
    }
    Ok(n)
}

/// One connection to each core of `server`.
fn connect_every_core(server: SocketAddr) -> anyhow::Result<Vec<TcpStream>> {
    let n = cores(server)?;
    let mut found: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    for _ in 0..64 * n {
        if found.iter().all(Option::is_some) {
            break;
        }
        let mut s = TcpStream::connect(server)?;
        s.set_nodelay(true)?;
        let r = get(&mut s, "/readyz", &mut Vec::new())?;
        let core = r.json()["core"].as_u64().context("/readyz names no core")? as usize;
        if let Some(slot @ None) = found.get_mut(core) {
            *slot = Some(s);
        }
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.with_context(|| format!("{server}: no connection landed on core {i}")))
        .collect()
}

/// Ask one core for its list every `poll` until `stop`.
fn watch(
    mut s: TcpStream,
    limit: usize,
    poll: Duration,
    clock: Clock,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut etag = String::new();
    let path = format!("/todos?limit={limit}");
    while !stop.load(Relaxed) {
        let asked = Instant::now();
        if etag.is_empty() {
            write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
        } else {
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"
            )?;
        }
        let r = read_response(&mut s, &mut buf).context("a watched core closed")?;
        let now = clock.now();
        match r.status {
            304 => {}
            200 => {
                etag = r.header("etag").unwrap_or_default().to_string();
                let listed: Vec<Listed> = sonic_rs::from_slice(&r.body)?;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                for t in &listed {
                    seen.first.entry(t.id).or_insert(now);
                }
                let oldest = listed.iter().map(|t| t.id).min().unwrap_or(0);
                seen.lists.push((now, oldest));
            }
            other => bail!("GET {path}: {other}"),
        }
        if let Some(left) = poll.checked_sub(asked.elapsed()) {
            std::thread::sleep(left);
        }
    }
    Ok(())
}

/// Write at `rate` for `duration` over `connections`; the writes accepted
/// and the count of every other answer by status.
fn write_all(cli: &Cli, clock: Clock) -> anyhow::Result<(Vec<Written>, HashMap<u16, u64>)> {
    let server = addr(&cli.write)?;
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + cli.duration;
    let every = Duration::from_secs_f64(1.0 / cli.rate);
    let body = r#"{"public":true,"title":"visible","description":"written by todo-visible"}"#;
    let request = Arc::new(format!(
        "POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        cli.token,
        body.len()
    ));
    let (mut senders, mut readers) = (Vec::new(), Vec::new());
    for c in 0..cli.connections {
        let mut out = TcpStream::connect(server)?;
        out.set_nodelay(true)?;
        let mut input = out.try_clone()?;
        let (tx, rx) = mpsc::channel::<u64>();
        let request = request.clone();
        let step = cli.connections as u32;
        senders.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut n = c as u32;
            loop {
                let due = start + every * n;
                if due >= end {
                    return Ok(());
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                out.write_all(request.as_bytes())?;
                tx.send(clock.us(due))?;
                n += step;
            }
        }));
        readers.push(std::thread::spawn(move || -> anyhow::Result<Results> {
            let mut buf = Vec::new();
            let mut written = Vec::new();
            let mut refused: HashMap<u16, u64> = HashMap::new();
            for due_us in rx {
                let r = read_response(&mut input, &mut buf).context("the write server closed")?;
                let accepted_us = clock.now();
                if r.status == 202 {
                    let a: Accepted = sonic_rs::from_slice(&r.body)?;
                    written.push(Written {
                        todo_id: a.todo_id,
                        command_id: a.command_id,
                        due_us,
                        accepted_us,
                    });
                } else {
                    *refused.entry(r.status).or_default() += 1;
                }
            }
            Ok((written, refused))
        }));
    }
    for t in senders {
        t.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    let mut all = Vec::new();
    let mut refused: HashMap<u16, u64> = HashMap::new();
    for t in readers {
        let (w, r) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
        all.extend(w);
        for (status, n) in r {
            *refused.entry(status).or_default() += n;
        }
    }
    Ok((all, refused))
}

/// A connection's accepted writes, and its other answers by status.
type Results = (Vec<Written>, HashMap<u16, u64>);

/// Percentiles (ms) of microsecond values.
fn summary(h: &Histogram<u64>) -> sonic_rs::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    sonic_rs::json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.rate.is_finite() || cli.rate <= 0.0 || cli.connections == 0 {
        bail!("--rate must be a number above 0 and --connections at least 1");
    }
    let clock = Clock::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut cores: Vec<(String, usize, Arc<Mutex<Seen>>)> = Vec::new();
    let mut watchers = Vec::new();
    for server in &cli.watch {
        for (core, s) in connect_every_core(addr(server)?)?.into_iter().enumerate() {
            let seen = Arc::new(Mutex::new(Seen::default()));
            cores.push((server.clone(), core, seen.clone()));
            let (limit, poll, stop) = (cli.limit, cli.poll, stop.clone());
            watchers.push(std::thread::spawn(move || {
                watch(s, limit, poll, clock, seen, stop)
            }));
        }
    }
    let (written, refused) = write_all(&cli, clock)?;
    // Every accepted write listed everywhere, or the settle time over. Per
    // core, the ids it has not listed yet; looked up a chunk per lock, so a
    // watcher is never held up long while it records.
    let deadline = Instant::now() + cli.settle;
    let mut left: Vec<Vec<u64>> = cores
        .iter()
        .map(|_| written.iter().map(|w| w.todo_id).collect())
        .collect();
    while left.iter().any(|ids| !ids.is_empty()) && Instant::now() < deadline {
        for ((_, _, seen), ids) in cores.iter().zip(&mut left) {
            let mut still = Vec::new();
            for chunk in ids.chunks(10_000) {
                let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                still.extend(chunk.iter().filter(|&&id| seen.when(id).is_none()));
            }
            *ids = still;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Relaxed);
    for w in watchers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a watcher panicked"))??;
    }

    let mut accept = Histogram::<u64>::new(3)?;
    let mut first = Histogram::<u64>::new(3)?;
    let mut every = Histogram::<u64>::new(3)?;
    let (mut not_listed, mut passed_unseen) = (0u64, 0u64);
    let mut records = match &cli.records {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let seen: Vec<_> = cores
        .iter()
        .map(|(_, _, s)| s.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    for w in &written {
        accept.record(w.accepted_us.saturating_sub(w.due_us))?;
        let times: Vec<Option<(u64, bool)>> = seen.iter().map(|s| s.when(w.todo_id)).collect();
        passed_unseen += times.iter().flatten().filter(|(_, passed)| *passed).count() as u64;
        let listed: Vec<u64> = times.iter().flatten().map(|(t, _)| *t).collect();
        let everywhere = (listed.len() == times.len())
            .then(|| listed.iter().max().copied())
            .flatten();
        if let Some(min) = listed.iter().min() {
            first.record(min.saturating_sub(w.due_us))?;
        }
        match everywhere {
            Some(t) => every.record(t.saturating_sub(w.due_us))?,
            None => not_listed += 1,
        }
        if let Some(out) = records.as_mut() {
            let seen_us: Vec<Option<u64>> = times.iter().map(|t| t.map(|(t, _)| t)).collect();
            writeln!(
                out,
                "{}",
                sonic_rs::json!({
                    "todo_id": w.todo_id,
                    "command_id": w.command_id,
                    "due_us": w.due_us,
                    "accepted_us": w.accepted_us,
                    "listed_us": seen_us,
                })
            )?;
        }
    }
    if let Some(mut out) = records {
        out.flush()?;
    }
    // Histogram of due -> listed on every core, in ms buckets.
    let bounds_ms = [
        5u64, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 5000,
    ];
    let mut buckets = vec![0u64; bounds_ms.len() + 1];
    for v in every.iter_recorded() {
        let ms = v.value_iterated_to() / 1000;
        let at = bounds_ms
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(bounds_ms.len());
        buckets[at] += v.count_at_value();
    }
    let histogram: Vec<sonic_rs::Value> = bounds_ms
        .iter()
        .map(|b| sonic_rs::json!(format!("<{b}")))
        .chain(std::iter::once(sonic_rs::json!(">=5000")))
        .zip(&buckets)
        .map(|(label, n)| sonic_rs::json!([label, n]))
        .collect();
    let report = sonic_rs::json!({
        "rate": cli.rate,
        "seconds": cli.duration.as_secs_f64(),
        "sent": written.len() as u64 + refused.values().sum::<u64>(),
        "accepted": written.len(),
        "refused": refused.iter().map(|(s, n)| (s.to_string(), *n)).collect::<HashMap<_, _>>(),
        "cores_watched": cores.len(),
        "not_listed_everywhere": not_listed,
        "passed_unseen": passed_unseen,
        "accepted_after": summary(&accept),
        "listed_first_core_after": summary(&first),
        "listed_every_core_after": summary(&every),
        "histogram_every_core_ms": histogram,
    });
    println!("{}", sonic_rs::to_string(&report)?);
    Ok(())
}
