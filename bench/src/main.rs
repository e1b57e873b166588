//! todo-bench: a pipelining HTTP/1.1 load generator with autocannon's letters.
//!
//! ```text
//! main.rs    flags -> Plan -> one pinned glommio executor per CPU -> Report
//! mix.rs     the request mix: pre-rendered request bytes and their weights
//! load.rs    per connection: keep `-p` requests in flight (closed loop) or
//!            send on a fixed schedule (open loop, `--rate`); check every
//!            response's status and framing before counting it
//! report.rs  merge per-executor results; text or `--json`
//! ```

mod hold;
mod hostile;
mod kafka;
mod load;
mod mix;
mod report;
mod target;

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

/// Pipelining HTTP/1.1 load generator.
#[derive(Debug, Parser)]
#[command(name = "todo-bench", version)]
struct Cli {
    /// Target, e.g. http://127.0.0.1:8080/todos?limit=1 (GET of this path
    /// unless --mix is given).
    url: String,
    /// Concurrent connections, spread over the executors.
    #[arg(short = 'c', long, default_value_t = 100)]
    connections: usize,
    /// Requests in flight per connection (pipelining depth).
    #[arg(short = 'p', long, default_value_t = 1)]
    pipelining: usize,
    /// How long to measure, e.g. 10s.
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many responses in all (instead of at the duration).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: total requests per second sent on a fixed schedule, latency
    /// measured from when each request was due (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Executors (one pinned thread each); default: every CPU.
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Pin the executors to these CPUs, e.g. "1" or "0,1" (overrides -t).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Request mix: comma-separated WEIGHT:METHOD PATH, e.g.
    /// "90:GET /todos?limit=1,9:GET /todos?limit=100,1:POST /todos".
    #[arg(long)]
    mix: Option<String>,
    /// Bearer token, sent with every request (writes in the mix need one;
    /// `mine=true` lists too).
    #[arg(long, env = "TODO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of load: open this many keep-alive connections, one request
    /// each, keep them quiet for -d, then ask once more on each; prints
    /// {"held","failed","answered_after","connect_seconds"}.
    #[arg(long)]
    hold: Option<usize>,
    /// Source address for --hold connections (e.g. 127.0.0.2), so several
    /// processes use different ephemeral port ranges.
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    /// When the server closes a connection (`Connection: close`, or end of
    /// stream), open a new one and send again the requests left unanswered
    /// if they are idempotent (RFC 9112 §9.3.1). Counted as reconnects, not
    /// errors; an unanswered POST is an error. Without it every close with
    /// requests in flight is an error.
    #[arg(long)]
    reconnect: bool,
    /// Another HOST:PORT serving the same URL (repeatable), as a name with
    /// several addresses: connections are spread over the URL's address and
    /// these, and with --reconnect a connection whose address refuses it
    /// moves to the next.
    #[arg(long, value_name = "HOST:PORT")]
    also: Vec<std::net::SocketAddr>,
    /// Instead of load: this many connections that send their request one
    /// byte a second (reopened when the server ends them), for -d; with
    /// --unread, in the same process. Prints JSON.
    #[arg(long, default_value_t = 0)]
    slow: usize,
    /// Instead of load: this many connections that pipeline requests and
    /// never read an answer, for -d. Prints JSON.
    #[arg(long, default_value_t = 0)]
    unread: usize,
    /// Instead of HTTP: produce straight to this Kafka topic (URL is then
    /// kafka://BROKERS/TOPIC) for the broker's own rate, with messages of
    /// --size bytes and -c messages in flight.
    #[arg(long, default_value_t = 200)]
    size: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(rest) = cli.url.strip_prefix("kafka://") {
        let (brokers, topic) = rest.split_once('/').context("kafka://BROKERS/TOPIC")?;
        let p = kafka::produce(brokers, topic, cli.size, cli.connections, cli.duration)?;
        let rate = p.acked as f64 / p.seconds;
        if cli.json {
            println!(
                r#"{{"acked":{},"failed":{},"seconds":{},"per_sec":{rate}}}"#,
                p.acked, p.failed, p.seconds
            );
        } else {
            println!(
                "{} messages of {} bytes acked in {:.2}s: {rate:.0}/s ({} failed)",
                p.acked, cli.size, p.seconds, p.failed
            );
        }
        if p.acked == 0 {
            bail!("no message was acknowledged");
        }
        return Ok(());
    }
    let target = target::Target::parse(&cli.url)?;
    let mix = match &cli.mix {
        Some(spec) => mix::Mix::parse(spec, &target, cli.token.as_deref())?,
        None => mix::Mix::single_get(&target, cli.token.as_deref()),
    };
    if let Some(count) = cli.hold {
        let h = hold::hold(
            target.addr,
            &mix.kinds[0].bytes,
            count,
            cli.source,
            cli.duration,
        );
        println!(
            r#"{{"held":{},"failed":{},"answered_after":{},"connect_seconds":{}}}"#,
            h.held, h.failed, h.answered_after, h.connect_seconds
        );
        return Ok(());
    }
    if cli.slow > 0 || cli.unread > 0 {
        let h = hostile::run(
            target.addr,
            &mix.kinds[0].bytes,
            cli.slow,
            cli.unread,
            cli.duration,
        );
        println!(
            r#"{{"slow":{},"slow_opened":{},"slow_ended_by_server":{},"slow_bytes":{},"slow_open_at_end":{},"unread":{},"unread_opened":{},"unread_ended_by_server":{},"unread_open_at_end":{},"unread_bytes":{},"connect_errors":{}}}"#,
            cli.slow,
            h.slow_opened,
            h.slow_ended_by_server,
            h.slow_bytes,
            h.slow_open_at_end,
            cli.unread,
            h.unread_opened,
            h.unread_ended_by_server,
            h.unread_open_at_end,
            h.unread_bytes,
            h.connect_errors
        );
        return Ok(());
    }
    if cli.connections == 0 || cli.pipelining == 0 {
        bail!("-c and -p must be at least 1");
    }
    let placement = if cli.cpus.is_empty() {
        let n = cli
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, cli.connections);
        PoolPlacement::MaxSpread(n, None)
    } else {
        let online =
            CpuSet::online().map_err(|e| anyhow::anyhow!("reading the CPU topology: {e}"))?;
        let sets = cli
            .cpus
            .iter()
            .map(|&cpu| online.clone().filter(|l| l.cpu == cpu))
            .collect::<Vec<_>>();
        if sets.iter().any(|s| s.is_empty()) {
            bail!("--cpus names a CPU that is not online");
        }
        PoolPlacement::Custom(sets)
    };
    let executors = placement.executor_count();
    let plan = load::Plan {
        addrs: std::iter::once(target.addr)
            .chain(cli.also.iter().copied())
            .collect(),
        mix,
        connections: cli.connections,
        executors,
        pipelining: cli.pipelining,
        duration: cli.duration,
        requests: cli.requests,
        rate: cli.rate,
        reconnect: cli.reconnect,
    };
    let results = LocalExecutorPoolBuilder::new(placement)
        .name("todo-bench")
        .on_all_shards(move || {
            let plan = plan.clone();
            async move {
                let shard = glommio::executor().id() - 1;
                load::run_shard(&plan, shard).await
            }
        })
        .map_err(|e| anyhow::anyhow!("starting executors: {e}"))?
        .join_all();
    let mut merged = report::Report::new(
        &cli.url,
        cli.connections,
        cli.pipelining,
        executors,
        cli.rate,
    );
    for r in results {
        merged.merge(r.map_err(|e| anyhow::anyhow!("executor failed: {e}"))?);
    }
    merged.finish();
    if cli.json {
        println!("{}", merged.to_json());
    } else {
        print!("{}", merged.to_text());
    }
    if merged.responses == 0 {
        bail!(
            "no response was counted (is the server up at {}?)",
            target.addr
        );
    }
    Ok(())
}
