//! Configuration of `todo-server`: one struct, every field a flag and an
//! environment variable, with its unit and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use todo_http::http1::RequestLimits;
use todo_runtime::{Driver, Steer};

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("set all of KAFKA_BROKERS, REDIS_URL and DATABASE_URL for the distributed path, or none for the embedded default")]
    PartialDistributed,
    #[error("the distributed path needs JWT_SECRET, shared by every server")]
    SharedSecretRequired,
}

#[derive(Debug, Parser)]
#[command(name = "todo-server", version, about = "Thread-per-core Todo API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a bearer token for the configured secret (JWT_SECRET, or the one
    /// kept in the data directory).
    Token {
        /// The token's subject: the user who owns what they create.
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Inspect or repair the embedded default's data directory (`--data-dir`).
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum DataAction {
    /// Check the state file and every command log; exit 1 on damage that
    /// start-up would refuse. Changes nothing.
    Check,
    /// Keep the good records of every damaged or torn command log and set
    /// the original aside (`commands.G.log.damaged-<ms>`). The server must
    /// not be running.
    Repair,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (one SO_REUSEPORT socket per core).
    #[arg(long, env = "TODO_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Cores to run; 0 means every available core.
    #[arg(long, env = "TODO_CORES", default_value_t = 0)]
    pub cores: usize,
    /// Directory for the embedded default's state, log and secret.
    #[arg(long, global = true, env = "TODO_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// io driver.
    #[arg(long, env = "TODO_DRIVER", value_enum, default_value_t = Driver::Auto)]
    pub driver: Driver,
    /// How new connections are spread over the cores' listeners: `hash`
    /// (the kernel's 4-tuple hash) or `cpu` (the listener of the CPU that
    /// received the connection, by classic BPF).
    #[arg(long, env = "TODO_STEER", value_enum, default_value_t = Steer::Hash)]
    pub steer: Steer,
    /// Pin each core's thread to one CPU.
    #[arg(long, env = "TODO_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// HS256 secret, at least 32 bytes. Unset: the embedded default keeps a
    /// generated one in the data directory.
    #[arg(long, global = true, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, global = true, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, global = true, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// This instance's number, so ids made by several servers never collide:
    /// core k makes ids as node `instance * cores + k`, which must stay below
    /// 1023 (the top node, 1023, is the seeded todos'): 0-1022 with one core,
    /// 0-62 with 16 (start-up refuses more). Servers sharing a store need
    /// node ranges that do not overlap: distinct numbers and the same core
    /// count.
    #[arg(long, env = "TODO_INSTANCE", default_value_t = 0)]
    pub instance: u16,
    /// The name this server's access log lines give it (default: the host
    /// name and the instance number, `host/0`).
    #[arg(long, env = "TODO_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// One JSON line per request on standard output: `off`, `on`, or
    /// `sample:N` (one request in N, per core). See docs/operations.md for
    /// what it costs.
    #[arg(long, env = "TODO_ACCESS_LOG", default_value = "off")]
    pub access_log: crate::access_log::Mode,
    /// Keep rendered pages of `GET /todos?...` per core until the data
    /// changes. Off: every query is computed (for measuring that cost).
    #[arg(long, env = "TODO_PAGE_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub page_cache: bool,
    /// Lifetime of the tokens `POST /sessions` issues.
    #[arg(long, env = "TODO_SESSION_TTL", default_value = "1h", value_parser = parse_duration)]
    pub session_ttl: Duration,
    /// Threads hashing and checking passwords (argon2id, ~19 MiB and tens of
    /// milliseconds each).
    #[arg(long, env = "TODO_AUTH_THREADS", default_value_t = 1)]
    pub auth_threads: usize,
    /// `limit` when a request gives none. Not checked: keep it within
    /// 1-1000, the range a given `limit` must be in.
    #[arg(long, env = "TODO_DEFAULT_LIMIT", default_value_t = 20)]
    pub default_limit: usize,
    /// Todos seeded into an empty data directory.
    #[arg(long, env = "TODO_SEED", default_value_t = todo_model::seed::SEED_COUNT)]
    pub seed: usize,
    /// Time allowed to receive a whole request once it has begun (408 after).
    #[arg(long, env = "TODO_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[arg(long, env = "TODO_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A connection quiet for this long gives its buffers back to the core's
    /// pool and waits for readiness holding none (what lets many idle
    /// connections cost little memory).
    /// At 100 ms, connections of a saturated benchmark (round trips near
    /// 100 ms) went quiet between batches and lost a fifth of the throughput.
    #[arg(long, env = "TODO_IDLE_RELEASE", default_value = "1s", value_parser = parse_duration)]
    pub idle_release: Duration,
    /// Input buffer, bytes, of a connection that turns busy; a read that
    /// fills it doubles it. Below a pipelined batch (80 requests of ~50
    /// bytes: 4 KiB) each batch takes several reads: a fifth less
    /// throughput measured at depth 80.
    #[arg(long, env = "TODO_READ_BUFFER", default_value_t = 16 * 1024, value_parser = clap::value_parser!(usize))]
    pub read_buffer: usize,
    /// Allocations of at least this many bytes get pages of their own (glibc
    /// M_MMAP_THRESHOLD), so buffers given back by quiet connections return
    /// to the system; 0 keeps the allocator's default. Default 4096.
    #[arg(long, env = "TODO_MMAP_THRESHOLD", default_value_t = 4096)]
    pub mmap_threshold: usize,
    /// On SIGTERM: stop accepting, answer each connection's next request with
    /// `Connection: close`, close quiet ones, and exit once all are closed or
    /// after this long.
    #[arg(long, env = "TODO_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "TODO_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Largest request head in bytes (431 above).
    #[arg(long, env = "TODO_MAX_HEAD", default_value_t = 16 * 1024)]
    pub max_head: usize,
    /// Most requests answered from one read before their responses are
    /// written (pipelining depth per batch).
    #[arg(long, env = "TODO_MAX_PIPELINE", default_value_t = 1024)]
    pub max_pipeline: usize,
    /// Kafka bootstrap servers. With REDIS_URL and DATABASE_URL: the
    /// distributed path.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Redis, e.g. redis://127.0.0.1:6379/ (distributed path).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// PostgreSQL, e.g. postgres://todo@127.0.0.1:5432/todo (distributed path).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Kafka topic for commands.
    #[arg(long, env = "TODO_COMMANDS_TOPIC", default_value = todo_model::COMMANDS_TOPIC)]
    pub topic: String,
    /// Longest wait for the broker to confirm a write (503 after).
    #[arg(long, env = "TODO_KAFKA_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,
    /// Output bytes buffered before a batch is written early. What a client
    /// that does not read can hold of server memory, with the read buffer.
    /// 64 KiB measured 0.9 of 256 KiB's rate for 21 KB answers pipelined 16
    /// deep.
    #[arg(long, env = "TODO_WRITE_BUFFER", default_value_t = 256 * 1024)]
    pub write_buffer: usize,
    /// A batch's answers must be taken by the client within this long, or
    /// the connection is closed (a client that does not read).
    #[arg(long, env = "TODO_SEND_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub send_timeout: Duration,
    /// Kernel send and receive buffer of each connection, bytes (SO_SNDBUF
    /// and SO_RCVBUF; the kernel doubles it); 0 leaves the kernel's
    /// autotuning. Bounds the kernel memory of a client that does not read.
    #[arg(long, env = "TODO_SOCKET_BUFFER", default_value_t = 128 * 1024)]
    pub socket_buffer: usize,
    /// Change-feed subscribers (`GET /todos/changes`) per core; one more is
    /// answered 503 with `Retry-After`.
    #[arg(long, env = "TODO_FEED_MAX", default_value_t = 10_000)]
    pub feed_max: usize,
    /// A comment line is sent on every change-feed stream this often, so
    /// idle streams stay open through proxies and a dead link shows.
    #[arg(long, env = "TODO_FEED_HEARTBEAT", default_value = "15s", value_parser = parse_positive_duration)]
    pub feed_heartbeat: Duration,
    /// Changes each core keeps for subscribers that resume (`Last-Event-ID`,
    /// `since=`); one that resumes from before them gets `event: reset`.
    #[arg(long, env = "TODO_FEED_HISTORY", default_value_t = 4096)]
    pub feed_history: usize,
    /// Changes older than this leave the history too.
    #[arg(long, env = "TODO_FEED_HISTORY_AGE", default_value = "10m", value_parser = parse_duration)]
    pub feed_history_age: Duration,
    /// A subscriber whose unsent changes pass this many bytes (it does not
    /// read) is closed; it resumes with its last event id.
    #[arg(long, env = "TODO_FEED_PENDING", default_value_t = 1024 * 1024)]
    pub feed_pending: usize,
    /// The `retry:` a stream starts with: how long a client waits before it
    /// reconnects.
    #[arg(long, env = "TODO_FEED_RETRY", default_value = "1s", value_parser = parse_duration)]
    pub feed_retry: Duration,
}

impl ServeConfig {
    /// `--instance-name`, or `<host name>/<instance number>`.
    pub fn instance_label(&self) -> String {
        match &self.instance_name {
            Some(name) => name.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into());
                format!("{host}/{}", self.instance)
            }
        }
    }

    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_head: self.max_head,
            max_body: self.max_body,
            ..RequestLimits::default()
        }
    }

    /// The distributed settings when all three of KAFKA_BROKERS, REDIS_URL
    /// and DATABASE_URL are set, `None` when none is; an error otherwise.
    pub fn distributed(&self) -> Result<Option<crate::distributed::Settings>, ConfigError> {
        match (&self.kafka_brokers, &self.redis_url, &self.database_url) {
            (Some(k), Some(r), Some(d)) => Ok(Some(crate::distributed::Settings {
                kafka_brokers: k.clone(),
                redis_url: r.clone(),
                database_url: d.clone(),
                topic: self.topic.clone(),
                kafka_timeout: self.kafka_timeout,
            })),
            (None, None, None) => Ok(None),
            _ => Err(ConfigError::PartialDistributed),
        }
    }

    /// Number of cores to run.
    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Defaults, for tests and embedding: listen on `127.0.0.1:0`.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let cli = Cli::parse_from(["todo-server", "--listen", "127.0.0.1:0"]);
        ServeConfig {
            data_dir,
            ..cli.serve
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// A duration above zero (a zero send timeout would close every connection
/// whose write is not done at once).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("{s}: must be more than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s}: {e}")),
    }
}
