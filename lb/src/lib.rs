//! todo-lb: the L7 balancer for many hosts ([`run`]), thread-per-core on
//! the same runtime (`todo-runtime`) and HTTP/1.1 code (`todo-http`) as
//! todo-server.
//!
//! ```text
//! client -> core k (SO_REUSEPORT; TLS by tls.rs on --listen-tls)
//!   -> proxy/conn.rs: read; proxy/batch.rs: parse every request ([[limit]]s:
//!      route_limits.rs); admit (client_limits.rs)
//!   -> proxy/forward.rs: the edge cache (cache.rs); pick an upstream (pool.rs),
//!      ONE write of the batch, read the answers (failover: proxy/retry.rs)
//!   -> proxy/conn.rs: ONE write back in request order
//!   -> proxy/stream.rs: an event stream (text/event-stream) answered instead
//!      is relayed as it comes, on its own upstream connection, until it ends
//! upstream.rs: the upstream set, active health checks, the upstreams file
//! admin.rs:    --admin ADDR, its own thread: /metrics (metrics.rs) and /livez
//! ```
//!
//! - [`proxy`]: per client connection, parse every request, forward the
//!   batch to one upstream, answer in order; retry and failover. In parts:
//!   `conn.rs` the connection and its loop, `batch.rs` parsing a batch,
//!   `forward.rs` runs to the upstreams and their answers back, `retry.rs`
//!   the retry policy, `stream.rs` server-sent event streams relayed as
//!   they come, `state.rs` the core's state ([`proxy::LbCore`]) in parts.
//! - [`pool`]: per core, keep-alive upstream pools, the balancing policy
//!   (`--balance`), passive ejection (circuit breaker).
//! - [`client_io`]: the client side of a connection, plain or TLS.
//! - [`cache`]: `--cache on`: the per-core edge micro-cache of public GETs.
//! - [`reloadable`]: a value the cores read and a reloader replaces (the
//!   TLS configuration, the limits), and the file stamp each reloader
//!   watches (those two and the upstreams file).
//! - [`ring`]: the consistent-hash ring of `--balance hash`.
//! - [`upstream`]: the upstream set shared by the cores, its active health
//!   checks and the upstreams file.
//! - [`client_limits`]: per-client rate and connection limits (429).
//! - [`route_limits`]: `--config`: the gateway file and its `[[limit]]`
//!   rules, per route and per user or client (429 with RateLimit fields).
//! - [`tls`]: `--listen-tls`: rustls, the certificate and its reload.
//! - [`failure`]: why an exchange with an upstream failed (connect, broken,
//!   timed out), the class the retry policy and the counters read.
//! - [`upstream_stats`]: one core's counters for one upstream (requests,
//!   failures, circuit, latency), carried by each shared upstream.
//! - [`metrics`]: per-core client counters, and the renderer summing them
//!   and every upstream's into Prometheus text.
//! - [`admin`]: the admin listener answering `/metrics` and `/livez`.
//! - [`config`]: `todo-lb`'s flags and environment variables.

pub mod admin;
pub mod cache;
pub mod client_io;
pub mod client_limits;
pub mod config;
pub mod failure;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reloadable;
pub mod ring;
pub mod route_limits;
pub mod spare;
pub mod tls;
pub mod upstream;
pub mod upstream_stats;

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use todo_runtime::{lifecycle, shutdown, Shutdown};

use crate::admin::AdminState;
use crate::client_limits::{ClientLimitConfig, ClientLimits};
use crate::config::LbConfig;
use crate::metrics::CoreMetrics;
use crate::proxy::LbCore;
use crate::upstream::{Checks, UpstreamError, UpstreamSet};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Driver(#[from] todo_runtime::DriverError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("no listener given")]
    NoListener,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Config(#[from] route_limits::ConfigError),
    #[error("{tls} TLS listeners for {plain} cores: give one per core")]
    TlsListeners { tls: usize, plain: usize },
    #[error("thread: {0}")]
    Thread(std::io::Error),
}

/// The upstreams `config` names: the file when given, else the list.
pub fn configured_upstreams(config: &LbConfig) -> Result<Vec<std::net::SocketAddr>, UpstreamError> {
    let addrs = match &config.upstreams_file {
        Some(path) => upstream::read_file(path)?,
        None => upstream::resolve(&config.upstreams)?,
    };
    if addrs.is_empty() {
        return Err(UpstreamError::None);
    }
    Ok(addrs)
}

/// The sockets todo-lb serves: one plain listener per core, and one TLS
/// listener per core when `--listen-tls` is given (else none).
#[derive(Debug, Default)]
pub struct Listeners {
    pub plain: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(plain: Vec<TcpListener>) -> Self {
        Listeners {
            plain,
            tls: Vec::new(),
        }
    }
}

/// Balance over the configured upstreams on `listeners` (one per core) until
/// `shutdown` fires and the open connections are done; answer `/metrics`
/// and `/livez` on `admin`, when given, until then.
pub fn run(
    config: LbConfig,
    listeners: impl Into<Listeners>,
    admin: Option<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), LbError> {
    let Listeners {
        plain: listeners,
        tls: tls_listeners,
    } = listeners.into();
    if listeners.is_empty() {
        return Err(LbError::NoListener);
    }
    let certs = match config.tls_files()? {
        Some(files) if !tls_listeners.is_empty() => {
            if tls_listeners.len() != listeners.len() {
                return Err(LbError::TlsListeners {
                    tls: tls_listeners.len(),
                    plain: listeners.len(),
                });
            }
            let certs = tls::TlsCerts::load(files)?;
            certs.spawn_reloader().map_err(LbError::Thread)?;
            Some(certs)
        }
        _ => None,
    };
    let route_limits = route_limits::SharedLimits::load(
        config.config.clone(),
        config.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
    )?;
    route_limits.spawn_reloader().map_err(LbError::Thread)?;
    let tls_addr = tls_listeners.first().and_then(|l| l.local_addr().ok());
    let mut tls_listeners = tls_listeners.into_iter();
    let driver = todo_runtime::resolve_driver(config.driver)?;
    let file_read_at = config.upstreams_file.as_deref().and_then(reloadable::stamp);
    let addrs = configured_upstreams(&config)?;
    let cores = listeners.len();
    let set = Arc::new(UpstreamSet::new(addrs.clone(), cores));
    // The one array the cores share, each writing its own slot (see metrics.rs).
    let metrics: Arc<[CoreMetrics]> = (0..cores).map(|_| CoreMetrics::default()).collect();
    upstream::spawn_checker(
        set.clone(),
        Checks {
            path: config.health_path.clone(),
            interval: config.health_interval,
            unhealthy_after: config.unhealthy_after.max(1),
            timeout: config.connect_timeout,
            file: config.upstreams_file.clone(),
            file_read_at,
        },
    )
    .map_err(LbError::Thread)?;
    let clients = Arc::new(ClientLimits::new(ClientLimitConfig {
        rate: config.rate,
        burst: config.burst.unwrap_or(config.rate).max(1.0),
        max_conns: config.max_conns_per_client,
    }));
    let id_prefix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32)
        ^ std::process::id().rotate_left(16);
    let addr = listeners[0].local_addr().ok();
    let config = Arc::new(config);
    let mut threads = Vec::with_capacity(cores);
    for (index, listener) in listeners.into_iter().enumerate() {
        let route_limits = route_limits.clone();
        let (config, set, clients, metrics, shutdown) = (
            config.clone(),
            set.clone(),
            clients.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let pin = config.pin;
        let tls = certs.clone().zip(tls_listeners.next());
        let thread = todo_runtime::spawn_core("todo-lb", index, pin, driver, move || {
            let mut core = LbCore::new(index, &config, set, clients, metrics, id_prefix);
            // Without a file no rule can ever be in force: the proxy skips
            // the check entirely.
            if config.config.is_some() {
                core.limits.routes =
                    Some(route_limits::CoreLimits::new(route_limits.rules.clone()));
            }
            let core = Rc::new(core);
            core_main(core, listener, tls, config.drain_timeout, shutdown)
        })
        .map_err(LbError::Thread)?;
        threads.push(thread);
    }
    eprintln!(
        "todo-lb: listening on {} ({cores} cores, {} driver), upstreams {addrs:?}",
        addr.map_or_else(|| "?".into(), |a| a.to_string()),
        driver.name(),
    );
    if let (Some(at), Some(certs)) = (tls_addr, &certs) {
        eprintln!(
            "todo-lb: TLS (1.3, 1.2; ALPN http/1.1) on {at}, certificate {}",
            certs.describe()
        );
    }
    // The admin thread stops after the cores, so scrapes see the drain.
    let (mut admin_stop, admin_shutdown) = shutdown::channel();
    let admin_thread = match admin {
        Some(listener) => {
            let at = listener.local_addr().map_err(LbError::Thread)?;
            let state = AdminState {
                cores: metrics,
                set,
                route_limits: route_limits.clone(),
            };
            let thread = std::thread::Builder::new()
                .name("todo-lb-admin".into())
                .spawn(move || {
                    let serving = admin::serve(listener, state, admin_shutdown);
                    if let Err(e) =
                        todo_runtime::cores::block_on(todo_runtime::Driver::Legacy, serving)
                    {
                        eprintln!("todo-lb: admin: runtime: {e}");
                    }
                })
                .map_err(LbError::Thread)?;
            eprintln!("todo-lb: admin endpoints /metrics and /livez on {at}");
            Some(thread)
        }
        None => None,
    };
    for t in threads {
        let _ = t.join();
    }
    admin_stop.fire();
    if let Some(t) = admin_thread {
        let _ = t.join();
    }
    Ok(())
}

async fn core_main(
    core: Rc<LbCore>,
    listener: TcpListener,
    tls: Option<(Arc<tls::TlsCerts>, TcpListener)>,
    drain_timeout: Duration,
    shutdown: Shutdown,
) {
    let date_core = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            date_core.date.refresh();
        }
    });
    let label = format!("todo-lb: core {}", core.index);
    let tls_accepting = tls.map(|(certs, listener)| {
        let (core, shutdown) = (core.clone(), shutdown.clone());
        let label = format!("{label} (tls)");
        let tls = Rc::new(tls::CoreTls::new(&certs));
        monoio::spawn(async move {
            lifecycle::accept_until(listener, &shutdown, &label, |stream, peer| {
                let (core, tls) = (core.clone(), tls.clone());
                core.conns.open.opened();
                core.metrics().accepted();
                monoio::spawn(async move {
                    proxy::serve_tls(core.clone(), &tls, stream, peer).await;
                    core.conns.open.closed();
                    core.metrics().closed();
                });
            })
            .await;
        })
    });
    lifecycle::accept_until(listener, &shutdown, &label, |stream, peer| {
        let core = core.clone();
        core.conns.open.opened();
        core.metrics().accepted();
        monoio::spawn(async move {
            proxy::serve(core.clone(), stream, peer).await;
            core.conns.open.closed();
            core.metrics().closed();
        });
    })
    .await;
    if let Some(accepting) = tls_accepting {
        accepting.await;
    }
    // Drain: connections finish their batch in flight and close.
    core.conns.drain();
    core.conns.open.drained(drain_timeout).await;
}
