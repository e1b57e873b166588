//! todo-feed: the change feed's benchmark client. N server-sent-event
//! subscribers and one publisher, all on one CPU; per write, the time from
//! sending it to each subscriber reading its event.
//!
//! ```text
//! main.rs         flags -> subscribers' thread + one glommio executor ->
//!                 memory, rounds, sustained -> report (text, or --json)
//! subscribers.rs  every subscriber: opened in batches, then one epoll loop
//! sse.rs          a subscriber's stream: GET, head checked, ready (after
//!                 `retry:` on todo-server), `data:` lines searched for a
//!                 marker
//! publish.rs      the writes (on the executor): POST /todos (todo-server)
//!                 or the same-size event POSTed to nchan's publisher;
//!                 answers read in order
//! ledger.rs       per write: sent, deadline, deliveries, answer, visibility
//! marker.rs       the round marker a write carries and readers find
//! visible.rs      write-to-visible on the same writes (on the executor):
//!                 GET /todos?limit=1 on every core of a server
//! http.rs         URLs and reading one response off a glommio stream
//! ```
//!
//! Phases: the subscribers connect and are counted ready; the server's RSS
//! (`--rss-pid`) before and 1 s after the last is ready gives bytes per
//! idle subscriber; one warm-up write (not counted); `--rounds` writes one
//! at a time, each once every subscriber has the last or `--round-timeout`
//! passed; then `--rate` writes a second for `-d` on a fixed schedule (open
//! loop: latency from when a write was due), with `--settle` after the last
//! for stragglers. A delivery after its write's deadline, or none, is
//! missed; both are reported.
//!
//! The client reads every subscriber on one CPU, so its own time to drain
//! them is inside every figure; `client CPU per delivery` says how much
//! that is, and `server CPU per delivery` (of the `--rss-pid` processes)
//! what the server spent.

mod http;
mod ledger;
mod marker;
mod publish;
mod sse;
mod subscribers;
#[path = "../target.rs"]
mod target;
mod visible;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};

use crate::ledger::{lock, percentiles, Ledger, Phase, Summary};
use crate::marker::Marker;
use crate::publish::{Peer, Publisher};
use crate::sse::Feed;
use crate::subscribers::Counts;
use crate::target::Target;

/// The change feed's benchmark client.
#[derive(Debug, Parser)]
#[command(name = "todo-feed", version)]
struct Cli {
    /// The stream, e.g. http://127.0.0.1:8080/todos/changes or nchan's
    /// http://127.0.0.1:8089/sub.
    #[arg(long)]
    subscribe: String,
    /// Where writes go: http://HOST:PORT/todos (todo-server, may be another
    /// server than the stream's) or nchan's publisher location.
    #[arg(long)]
    publish: String,
    /// What serves them.
    #[arg(long, value_enum)]
    peer: Peer,
    /// Subscribers.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: usize,
    /// Writes one at a time (after one uncounted warm-up write).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// A round's write is missed by subscribers that do not have it by then.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    round_timeout: Duration,
    /// Sustained phase: writes per second, on a fixed schedule.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Sustained phase: how long (0s skips it).
    #[arg(short = 'd', long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sustained phase: after the last write, how long deliveries still
    /// count.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Bearer token for todo-server's writes.
    #[arg(long, env = "TODO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// nchan: bytes of each published body (default: the event with an
    /// empty description). feed.sh passes todo-server's `data:` size.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// The server processes whose resident memory (VmRSS, summed) is read
    /// before the subscribers connect and once they are idle.
    #[arg(long, value_delimiter = ',')]
    rss_pid: Vec<u32>,
    /// Also time write-to-visible on this todo-server (every core's
    /// GET /todos?limit=1), e.g. http://127.0.0.1:8081.
    #[arg(long)]
    visible: Option<String>,
    /// How often each watched core is asked for its list.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// The CPU the executor is pinned to.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Resident memory of the processes, bytes (VmRSS summed).
fn rss(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        total += kb * 1024;
    }
    Ok(total)
}

/// CPU time (utime + stime, every thread) of the processes, nanoseconds.
fn cpu_ns(pids: &[u32]) -> u64 {
    // SAFETY: sysconf takes no pointer.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command's ")": utime is the 12th, stime the 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        for f in fields.get(11..13).unwrap_or_default() {
            ticks += f.parse::<u64>().unwrap_or(0);
        }
    }
    ticks * 1_000_000_000 / tick
}

/// CPU time of this whole process (every thread), nanoseconds.
fn own_cpu_ns() -> u64 {
    cpu_ns(&[std::process::id()])
}

/// A nonce for this run's markers.
fn nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32) ^ (t >> 32)) as u32
}

/// Wait until write `index` is delivered to every subscriber still open,
/// answered, and listed on every watched core; or its deadline.
async fn settled(ledger: &Mutex<Ledger>, counts: &Counts, closed_before: u64, index: usize) {
    loop {
        {
            let l = lock(ledger);
            let w = &l.writes[index];
            let gone = counts.closed.load(Relaxed) - closed_before;
            let open = l.expected - gone.min(l.expected);
            let done = w.delivered >= open && w.answered.is_some() && w.visible_everywhere();
            if done || Instant::now() > w.deadline {
                return;
            }
        }
        sleep(Duration::from_millis(1)).await;
    }
}

/// CPU spent in one phase, nanoseconds.
#[derive(Clone, Copy)]
struct Cpu {
    client: u64,
    server: u64,
}

impl Cpu {
    fn now(server: &[u32]) -> Cpu {
        Cpu {
            client: own_cpu_ns(),
            server: cpu_ns(server),
        }
    }

    fn since(self, server: &[u32]) -> Cpu {
        let now = Cpu::now(server);
        Cpu {
            client: now.client - self.client,
            server: now.server - self.server,
        }
    }
}

/// One phase's figures, JSON.
fn phase_json(s: &Summary, cpu: Cpu) -> sonic_rs::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    let median_ms = if s.to_all.is_empty() {
        0.0
    } else {
        ms(s.to_all.value_at_quantile(0.5))
    };
    let per_delivery = |ns: u64| ns as f64 / 1000.0 / s.delivered.max(1) as f64;
    sonic_rs::json!({
        "writes": s.writes,
        "expected": s.expected,
        "delivered": s.delivered,
        "missed": s.missed(),
        "late": s.late,
        "incomplete_writes": s.incomplete,
        "refused_writes": s.refused,
        "unanswered_writes": s.unanswered,
        "latency": percentiles(&s.latency),
        "to_all": {
            "count": s.to_all.len(),
            "median_ms": median_ms,
            "max_ms": ms(s.to_all.max()),
        },
        "answered": percentiles(&s.answer),
        "visible": percentiles(&s.visible),
        "not_visible_writes": s.not_visible,
        "client_cpu_us_per_delivery": per_delivery(cpu.client),
        "server_cpu_us_per_delivery": per_delivery(cpu.server),
    })
}

/// One phase's figures, a line of text.
fn phase_text(name: &str, s: &Summary, cores: usize, cpu: Cpu, servers: bool) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut line = format!(
        "{name}: {} writes, {} deliveries owed, {} made, {} missed ({} late, {} writes incomplete); \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.writes,
        s.expected,
        s.delivered,
        s.missed(),
        s.late,
        s.incomplete,
        ms(s.latency.value_at_quantile(0.5)),
        ms(s.latency.value_at_quantile(0.99)),
        ms(s.latency.max()),
    );
    if !s.to_all.is_empty() {
        line += &format!(
            "; to all: median {:.1} ms, max {:.1} ms",
            ms(s.to_all.value_at_quantile(0.5)),
            ms(s.to_all.max())
        );
    }
    line += &format!(
        "; answered p50 {:.1} ms, p99 {:.1} ms ({} refused, {} unanswered)",
        ms(s.answer.value_at_quantile(0.5)),
        ms(s.answer.value_at_quantile(0.99)),
        s.refused,
        s.unanswered
    );
    if cores > 0 {
        line += &format!(
            "; visible on {cores} cores p50 {:.1} ms, p99 {:.1} ms ({} not)",
            ms(s.visible.value_at_quantile(0.5)),
            ms(s.visible.value_at_quantile(0.99)),
            s.not_visible
        );
    }
    let per = |ns: u64| ns as f64 / 1000.0 / s.delivered.max(1) as f64;
    line += &format!("; CPU per delivery: client {:.2} us", per(cpu.client));
    if servers {
        line += &format!(", server {:.2} us", per(cpu.server));
    }
    line
}

/// The whole run, on the executor; (JSON, text).
async fn run(cli: Cli) -> anyhow::Result<(String, String)> {
    let marker = Marker::new(nonce());
    let feed = Arc::new(Feed {
        url: Target::parse(&cli.subscribe)?,
        wait_retry: cli.peer == Peer::Todo,
        marker: marker.clone(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let counts = Arc::new(Counts::default());
    let stop_reading = Arc::new(AtomicBool::new(false));
    let servers = &cli.rss_pid;

    // --- subscribe, and the memory they take when idle ---------------------
    let rss_before = rss(servers)?;
    let started = Instant::now();
    let reader = subscribers::spawn(
        feed.clone(),
        cli.subscribers,
        cli.cpu,
        ledger.clone(),
        counts.clone(),
        stop_reading.clone(),
    )?;
    while ((counts.ready.load(Relaxed) + counts.failed.load(Relaxed)) as usize) < cli.subscribers {
        if reader.is_finished() {
            let why = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the subscribers' thread panicked"))?;
            bail!("the subscribers' thread ended: {why:?}");
        }
        sleep(Duration::from_millis(5)).await;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let ready = counts.ready.load(Relaxed);
    let reasons = || -> Vec<(String, u64)> {
        let r = counts.reasons.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().map(|(k, v)| (k.clone(), *v)).collect()
    };
    eprintln!(
        "todo-feed: {ready} subscribers ready, {} failed, in {connect_seconds:.2} s",
        counts.failed.load(Relaxed)
    );
    if ready == 0 {
        bail!("no subscriber got ready: {:?}", reasons());
    }
    // Memory once they are idle: 1 s after the last was ready.
    sleep(Duration::from_secs(1)).await;
    let rss_idle = rss(servers)?;
    let closed_before = counts.closed.load(Relaxed);
    lock(&ledger).expected = ready - closed_before;

    // --- write-to-visible on the same writes (--visible) --------------------
    let stop = Rc::new(Cell::new(false));
    let watch_broken: Rc<RefCell<Option<String>>> = Rc::default();
    if let Some(url) = &cli.visible {
        visible::watch(
            Target::parse(url)?,
            cli.poll,
            marker.clone(),
            ledger.clone(),
            stop.clone(),
            watch_broken.clone(),
        )
        .await?;
    }

    let mut publisher = Publisher::connect(
        cli.peer,
        Target::parse(&cli.publish)?,
        cli.token.clone(),
        cli.body_bytes,
        marker.clone(),
        ledger.clone(),
    )
    .await?;

    // --- warm-up and rounds: one write at a time ------------------------
    let mut cpu_rounds = Cpu::now(servers);
    for round in 0..=cli.rounds {
        if round == 1 {
            cpu_rounds = Cpu::now(servers);
        }
        let phase = if round == 0 {
            Phase::Warmup
        } else {
            Phase::Rounds
        };
        let now = Instant::now();
        let index = publisher
            .publish(phase, now, now + cli.round_timeout)
            .await?;
        settled(&ledger, &counts, closed_before, index).await;
    }
    let cpu_rounds = cpu_rounds.since(servers);

    // --- sustained: --rate writes a second, open loop ----------------------
    let cpu_sustained = Cpu::now(servers);
    let sustained = !cli.duration.is_zero();
    if sustained {
        let every = Duration::from_secs_f64(1.0 / cli.rate);
        let start = Instant::now() + every;
        let end = start + cli.duration;
        let deadline = end + cli.settle;
        let mut sent = Vec::new();
        for k in 0u32.. {
            let due = start + every * k;
            if due >= end {
                break;
            }
            sleep(due.saturating_duration_since(Instant::now())).await;
            sent.push(publisher.publish(Phase::Sustained, due, deadline).await?);
        }
        for index in sent {
            settled(&ledger, &counts, closed_before, index).await;
        }
    }
    let cpu_sustained = cpu_sustained.since(servers);
    stop.set(true);
    stop_reading.store(true, Relaxed);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the subscribers' thread panicked"))?;

    // --- the report -------------------------------------------------------
    let l = lock(&ledger);
    let rounds = l.summary(Phase::Rounds);
    let steady = l.summary(Phase::Sustained);
    let per_subscriber = rss_idle.saturating_sub(rss_before) as f64 / ready.max(1) as f64;
    let (data_min, data_max) = if l.data_bytes.1 == 0 {
        (0, 0)
    } else {
        l.data_bytes
    };
    let peer = format!("{:?}", cli.peer).to_lowercase();
    let (failed, closed) = (counts.failed.load(Relaxed), counts.closed.load(Relaxed));
    let comments = counts.comments.load(Relaxed);
    let reader_error = read.err().map(|e| e.to_string());
    let json = sonic_rs::json!({
        "peer": peer,
        "subscribe": cli.subscribe,
        "publish": cli.publish,
        "subscribers": cli.subscribers,
        "ready": ready,
        "failed": failed,
        "connect_seconds": connect_seconds,
        "closed": closed,
        "reasons": reasons(),
        "comments": comments,
        "rss_before": rss_before,
        "rss_idle": rss_idle,
        "rss_bytes_per_subscriber": per_subscriber,
        "data_bytes_min": data_min,
        "data_bytes_max": data_max,
        "nchan_body_bytes": publisher.nchan_body_bytes(),
        "duplicates": l.duplicates,
        "foreign": l.foreign,
        "cores_watched": l.cores,
        "publisher_broken": publisher.broken.borrow().clone(),
        "watcher_broken": watch_broken.borrow().clone(),
        "reader_error": reader_error.clone(),
        "rounds": phase_json(&rounds, cpu_rounds),
        "rate": cli.rate,
        "seconds": cli.duration.as_secs_f64(),
        "sustained": phase_json(&steady, cpu_sustained),
    });
    let measured_server = !servers.is_empty();
    let mut text = format!(
        "todo-feed: {peer} at {}: {ready} of {} subscribers ready in {connect_seconds:.2} s, \
         {failed} failed, {closed} closed since\n",
        cli.subscribe, cli.subscribers,
    );
    if measured_server {
        text += &format!(
            "memory: RSS {:.1} MiB before, {:.1} MiB with them idle: {per_subscriber:.0} bytes per subscriber\n",
            rss_before as f64 / 1048576.0,
            rss_idle as f64 / 1048576.0
        );
    }
    text += &phase_text("rounds", &rounds, l.cores, cpu_rounds, measured_server);
    text.push('\n');
    if sustained {
        let name = format!("sustained {}/s for {:?}", cli.rate, cli.duration);
        text += &phase_text(&name, &steady, l.cores, cpu_sustained, measured_server);
        text.push('\n');
    }
    text += &format!(
        "events: data {data_min}-{data_max} bytes, {} duplicates, {} without this run's marker, {comments} comments\n",
        l.duplicates, l.foreign,
    );
    for (why, n) in reasons() {
        text += &format!("subscribers ended or failed: {n} x {why}\n");
    }
    for (what, why) in [
        (
            "the publisher's answers stopped",
            publisher.broken.borrow().clone(),
        ),
        ("a visibility poller stopped", watch_broken.borrow().clone()),
        ("the subscribers' reader stopped", reader_error),
    ] {
        if let Some(why) = why {
            text += &format!("{what}: {why}\n");
        }
    }
    Ok((sonic_rs::to_string(&json)?, text))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.subscribers == 0 {
        bail!("-n must be at least 1");
    }
    if !cli.rate.is_finite() || cli.rate <= 0.0 {
        bail!("--rate must be a number above 0");
    }
    let json = cli.json;
    let (report, text) = LocalExecutorBuilder::new(Placement::Fixed(cli.cpu))
        .name("todo-feed")
        .spawn(move || run(cli))
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("the executor failed: {e}"))??;
    if json {
        println!("{report}");
    } else {
        print!("{text}");
    }
    Ok(())
}
