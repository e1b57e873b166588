//! Configuration of `todo-lb`: one struct, every field a flag and an
//! environment variable, with its unit and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use todo_runtime::Driver;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-lb",
    version,
    about = "Thread-per-core HTTP/1.1 load balancer for todo-server",
    // A flag given twice takes the last: the --config file's settings come
    // first, the command line's after them.
    args_override_self = true
)]
pub struct LbConfig {
    /// Address to listen on (one SO_REUSEPORT socket per core).
    #[arg(long, env = "TODO_LB_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Also listen for TLS here (one SO_REUSEPORT socket per core, the same
    /// proxying as `--listen`); needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "TODO_LB_LISTEN_TLS")]
    pub listen_tls: Option<SocketAddr>,
    /// The certificate chain for `--listen-tls` (PEM, leaf first), re-read
    /// when it changes: new connections get the new one, open ones keep
    /// theirs.
    #[arg(long, env = "TODO_LB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1), re-read
    /// with it.
    #[arg(long, env = "TODO_LB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Upstream server, HOST:PORT; repeat for more. Also TODO_LB_UPSTREAMS,
    /// comma-separated.
    #[arg(long = "upstream", env = "TODO_LB_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// File with one HOST:PORT per line (`#` comments), re-read when it
    /// changes; replaces --upstream.
    #[arg(long, env = "TODO_LB_UPSTREAMS_FILE")]
    pub upstreams_file: Option<PathBuf>,
    /// Cores to run; 0 means every available core.
    #[arg(long, env = "TODO_LB_CORES", default_value_t = 0)]
    pub cores: usize,
    /// io driver. Default epoll (`legacy`): io_uring (`auto`, `uring`)
    /// carries the same load with no stalled connection, at 0.88-0.98 of
    /// epoll's rate measured here (-c 2000 -p 80, same runs; a proxied batch
    /// is four ring operations, each a pass of the run queue); see
    /// docs/front-tier.md (io_uring and the accept queue).
    #[arg(long, env = "TODO_LB_DRIVER", value_enum, default_value_t = Driver::Legacy)]
    pub driver: Driver,
    /// Pin each core's thread to one CPU.
    #[arg(long, env = "TODO_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// Path of the active health check; 200 means healthy.
    #[arg(long, env = "TODO_LB_HEALTH_PATH", default_value = "/readyz")]
    pub health_path: String,
    /// Time between active health checks of each upstream (and between
    /// looks at the upstreams file).
    #[arg(long, env = "TODO_LB_HEALTH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// Failed checks in a row before an upstream is taken out.
    #[arg(long, env = "TODO_LB_UNHEALTHY_AFTER", default_value_t = 2)]
    pub unhealthy_after: u32,
    /// Passive ejection: failed exchanges in a row (connect, reset, timeout)
    /// that open an upstream's circuit on a core.
    #[arg(long, env = "TODO_LB_EJECT_AFTER", default_value_t = 3)]
    pub eject_after: u32,
    /// How long an open circuit keeps the upstream out; then one exchange is
    /// let through (half open) and its result closes or reopens it.
    #[arg(long, env = "TODO_LB_EJECT_FOR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub eject_for: Duration,
    /// How each batch of requests picks its upstream:
    /// `least-conn`: the fewest exchanges in flight from this core;
    /// `round-robin`: in turn;
    /// `p2c`: the better of two chosen at random, by a peak-EWMA of its
    /// latency (10 s decay) times its exchanges in flight + 1 (the Finagle
    /// and Linkerd rule), so a slow upstream loses traffic while it is slow;
    /// `hash`: a consistent hash of `--hash-key`, so one key keeps going to
    /// one upstream while it is in rotation.
    /// Default `p2c`: with one upstream stalled 15 ms of every 20 ms, its
    /// p99 was 0.23-0.51 of round-robin's and 0.35-0.66 of least-conn's
    /// (bench/gateway.sh, four runs; 0.47 and 0.62 in the run of the code
    /// as it is).
    #[arg(long, env = "TODO_LB_BALANCE", value_enum, default_value_t = Balance::P2c)]
    pub balance: Balance,
    /// What `--balance hash` hashes: `client-ip`; `jwt-sub`, the bearer
    /// token's subject (read, not verified: it only routes); or
    /// `header:NAME`. A request without it hashes by its client address.
    #[arg(long, env = "TODO_LB_HASH_KEY", default_value = "client-ip", value_parser = parse_hash_key)]
    pub hash_key: HashKey,
    /// Other upstreams tried when one fails before answering an idempotent
    /// request (GET, HEAD, PUT, DELETE, OPTIONS; RFC 9110 §9.2.2).
    #[arg(long, env = "TODO_LB_RETRIES", default_value_t = 2)]
    pub retries: u32,
    /// Connecting to an upstream gives up after this long.
    #[arg(long, env = "TODO_LB_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// An upstream must answer a forwarded batch within this long (504
    /// after). Above the servers' write confirmation timeout (5 s).
    #[arg(long, env = "TODO_LB_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// An event stream (an upstream answer of `Content-Type:
    /// text/event-stream` with no length, whose end is the upstream's close)
    /// is relayed as it comes, on an upstream connection of its own, and
    /// ended when the upstream sends nothing for this long: each event or
    /// heartbeat comment restarts the clock (`--upstream-timeout` bounds
    /// only the wait for its head). Also the longest a write of it to the
    /// client may take. Default 60s: four of todo-server's 15 s heartbeats.
    #[arg(long, env = "TODO_LB_STREAM_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stream_idle: Duration,
    /// Idle upstream connections kept per upstream and core.
    #[arg(long, env = "TODO_LB_POOL_IDLE", default_value_t = 1024)]
    pub pool_idle: usize,
    /// A pooled upstream connection idle longer than this is not reused
    /// (below the servers' 60 s idle timeout, so the pool never hands out a
    /// connection the server is closing).
    #[arg(long, env = "TODO_LB_POOL_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub pool_idle_timeout: Duration,
    /// Requests per second allowed per client address; 0 turns rate limiting
    /// off. Over it: 429 with Retry-After.
    #[arg(long, env = "TODO_LB_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Requests a client may send at once above its rate (the burst of its GCRA allowance).
    /// Default: one second's worth.
    #[arg(long, env = "TODO_LB_BURST")]
    pub burst: Option<f64>,
    /// Connections allowed per client address; 0 means no limit. Over it:
    /// 429 and close.
    #[arg(long, env = "TODO_LB_MAX_CONNS_PER_CLIENT", default_value_t = 0)]
    pub max_conns_per_client: u32,
    /// An idle client connection is closed after this long.
    #[arg(long, env = "TODO_LB_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time allowed to receive a whole request once it has begun (408 after).
    #[arg(long, env = "TODO_LB_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Largest request or response body forwarded, bytes.
    #[arg(long, env = "TODO_LB_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Allocations of at least this many bytes get pages of their own (glibc
    /// M_MMAP_THRESHOLD), so the buffers and tasks (2.7 KiB each) of closed
    /// connections return to the system; 0 keeps the allocator's default.
    /// Without it a soak of short-lived client connections grew RSS by 9.7 %
    /// in 30 minutes; at 4096 the tasks still fragmented the heap.
    /// Default: 2048, or 0 with `--listen-tls`: rustls allocates as it
    /// decrypts and encrypts each batch (4-20 KiB), and as pages of their own
    /// those cost TLS a quarter of its rate (0.56 of plain at 2048 against
    /// 0.74 at 0, wrk depth 80, bench/gateway.sh, one run; docs/gateway.md).
    /// Not measured with TLS: the soak above.
    #[arg(long, env = "TODO_LB_MMAP_THRESHOLD")]
    pub mmap_threshold: Option<usize>,
    /// On SIGTERM, connections still open after this long are closed.
    #[arg(long, env = "TODO_LB_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The edge micro-cache: public GET answers (`Cache-Control: public,
    /// max-age=N`) held per core for N seconds, one upstream request per key
    /// and core at a time (coalescing), `If-None-Match` answered 304 here,
    /// `X-Cache: HIT|MISS` on the answers. Never for a request with
    /// `Authorization`.
    #[arg(long, env = "TODO_LB_CACHE", value_enum, default_value_t = Switch::Off)]
    pub cache: Switch,
    /// Bytes the cache may hold, all cores together (each core holds its
    /// share), evicted by CLOCK.
    #[arg(long, env = "TODO_LB_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: usize,
    /// The gateway file (TOML): any flag by its long name (`balance =
    /// "p2c"`; the command line wins), and `[[limit]]` tables (route, per,
    /// rate, burst: see docs/gateway.md), re-read on change and on SIGHUP.
    #[arg(long, env = "TODO_LB_CONFIG")]
    pub config: Option<PathBuf>,
    /// The HS256 secret the servers verify tokens with; a `[[limit]]` with
    /// `per = "user"` verifies the bearer token's subject with it.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Admin address answering `GET /metrics` (Prometheus text) and
    /// `GET /livez`, apart from the proxied traffic; `off` for none
    /// (default).
    #[arg(long, env = "TODO_LB_ADMIN", default_value = "off", value_parser = parse_admin)]
    pub admin: Admin,
}

/// Where the admin endpoints are served, if anywhere.
#[derive(Debug, Clone, Copy)]
pub struct Admin(pub Option<SocketAddr>);

fn parse_admin(s: &str) -> Result<Admin, String> {
    if s == "off" {
        return Ok(Admin(None));
    }
    s.parse()
        .map(|addr| Admin(Some(addr)))
        .map_err(|e| format!("{s}: {e} (an address such as 127.0.0.1:9000, or off)"))
}

/// A feature on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The balancing policies (`--balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    LeastConn,
    RoundRobin,
    P2c,
    Hash,
}

/// What `--balance hash` hashes (`--hash-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    JwtSub,
    /// A header's value; the name is kept lowercase.
    Header(String),
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s {
        "client-ip" => Ok(HashKey::ClientIp),
        "jwt-sub" => Ok(HashKey::JwtSub),
        _ => match s.strip_prefix("header:") {
            Some(name)
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') =>
            {
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            _ => Err(format!("{s}: expected client-ip, jwt-sub or header:NAME")),
        },
    }
}

impl LbConfig {
    /// `--mmap-threshold`, or its default (see there).
    pub fn mmap_threshold(&self) -> usize {
        self.mmap_threshold
            .unwrap_or(if self.listen_tls.is_some() { 0 } else { 2048 })
    }

    /// Flags from the command line and `--config` (or `TODO_LB_CONFIG`):
    /// the file's settings first, so the command line's win.
    pub fn from_args_and_file(
        args: Vec<std::ffi::OsString>,
    ) -> Result<Self, crate::route_limits::ConfigError> {
        let path = {
            let mut path = std::env::var_os("TODO_LB_CONFIG").map(PathBuf::from);
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                let a = a.to_string_lossy();
                if a == "--config" {
                    path = it.next().map(PathBuf::from);
                } else if let Some(p) = a.strip_prefix("--config=") {
                    path = Some(PathBuf::from(p));
                }
            }
            path
        };
        let mut all = args;
        if let Some(path) = path {
            let flags = crate::route_limits::read_flags(&path)?;
            let at = 1.min(all.len());
            all.splice(at..at, flags.into_iter().map(Into::into));
        }
        Ok(LbConfig::parse_from(all))
    }

    /// The TLS files when `--listen-tls` is given; both must be.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, crate::tls::TlsError> {
        match (self.listen_tls, &self.tls_cert, &self.tls_key) {
            (None, _, _) => Ok(None),
            (Some(_), Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (Some(_), _, _) => Err(crate::tls::TlsError::Incomplete),
        }
    }

    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Defaults with these upstreams, listening on `127.0.0.1:0` (tests).
    pub fn for_tests(upstreams: &[SocketAddr]) -> Self {
        let mut c = LbConfig::parse_from(["todo-lb", "--listen", "127.0.0.1:0"]);
        c.upstreams = upstreams.iter().map(|a| a.to_string()).collect();
        c
    }
}
