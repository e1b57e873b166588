//! todo-server: a thread-per-core HTTP/1.1 Todo API.
//!
//! The flow, file by file:
//!
//! ```text
//! core_main.rs one core's life: its accept loop, snapshot updates, the
//!              Date timer, the drain (threads and listeners: todo-runtime)
//! conn.rs      per connection: read -> parse every request (todo_http::http1)
//!              -> append every response -> one write
//! routes/      GET /todos?limit=N from the core's snapshot (the hot path),
//!              GET /todos?... queries, /todos/{id}, writes, /commands/{id},
//!              /users /sessions /users/me, /categories, /livez /readyz /metrics,
//!              /openapi.json (the contract, ../openapi.json) and /docs
//! feed.rs      GET /todos/changes: per-core history of change events, the
//!              subscribers' streams (fed by embedded/ or distributed/follow.rs)
//! query.rs     GET /todos parameters -> ListQuery (filters, sort, cursor)
//! read_model.rs every todo, user and category in memory, indexed; pages
//! cache.rs     per-core page cache and verified-token cache
//! search.rs    rendering pages; the todo-search threads for q=
//! accounts.rs  argon2id hashing and login checks on the todo-auth threads
//! errors.rs    the server's own error answers (todo_http::HttpError)
//! per_core.rs  per-core state, grouped by who uses it: connections, reads
//!              (snapshot, hot head, page cache, Date), auth, writes
//!              (backend, ids), observability; handlers take their group
//! auth.rs      HS256 bearer tokens (signing and checking)
//! config.rs    flags and environment variables (`ServeConfig`), subcommands
//! backend.rs   where writes go: the embedded apply thread (embedded/) or
//!              Kafka (distributed/)
//! embedded/    the embedded default: command log + the read model as store
//! distributed/ Kafka producer, per-core Redis refresh, the todo-db thread
//!              (PostgreSQL lookups, the read model's follower, accepted
//!              marks, the key pruner)
//! metrics.rs   per-core counters summed at scrape time
//! trace.rs     X-Request-Id and W3C traceparent: taken, made, echoed
//! access_log.rs one JSON line per request (TODO_ACCESS_LOG), per-core
//!              buffers written by the todo-log thread
//! ```
//!
//! [`run`] is the entry point; the binary only parses configuration, binds
//! and calls it, so tests can bind `127.0.0.1:0`.

pub mod access_log;
pub mod accounts;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod config;
pub mod conn;
pub mod core_main;
pub mod distributed;
pub mod embedded;
pub mod errors;
pub mod feed;
pub mod metrics;
pub mod per_core;
pub mod query;
pub mod read_model;
pub mod routes;
pub mod search;
pub mod trace;

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;

use crate::auth::{TokenRules, Verifier};
use crate::backend::Backend;
use crate::config::ServeConfig;
use crate::metrics::CoreMetrics;
use todo_runtime::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Driver(#[from] todo_runtime::DriverError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Store(#[from] embedded::command_log::LogError),
    #[error(transparent)]
    Distributed(#[from] distributed::DistributedError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("instance {instance} with {cores} cores needs id node {node}, above the {max} available; lower TODO_INSTANCE")]
    IdSpace {
        instance: u16,
        cores: usize,
        node: usize,
        max: u16,
    },
    #[error("no listener given")]
    NoListener,
    #[error("core thread: {0}")]
    Thread(std::io::Error),
}

/// The token rules configured for this server.
pub fn token_rules(config: &ServeConfig) -> TokenRules {
    TokenRules {
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    }
}

/// Serve on `listeners` (one per core) until `shutdown` fires; returns once
/// every core has stopped and every accepted write is durable.
pub fn run(
    config: ServeConfig,
    listeners: Vec<TcpListener>,
    shutdown: Shutdown,
) -> Result<(), StartError> {
    if listeners.is_empty() {
        return Err(StartError::NoListener);
    }
    let cores = listeners.len();
    let driver = todo_runtime::resolve_driver(config.driver)?;
    let last_node = usize::from(config.instance) * cores + cores - 1;
    // The top node is reserved for seeded todos.
    let max = todo_model::ids::MAX_NODE - 1;
    if last_node > usize::from(max) {
        return Err(StartError::IdSpace {
            instance: config.instance,
            cores,
            node: last_node,
            max,
        });
    }
    let settings = config.distributed()?;
    if settings.is_some() && config.jwt_secret.is_none() {
        return Err(config::ConfigError::SharedSecretRequired.into());
    }
    let secret = auth::load_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let rules = token_rules(&config);
    Verifier::new(&secret, &rules)?;

    // Every core's change feed, fed by the apply thread or the follower.
    let (fanout, feeds) = feed::Fanout::new(cores);
    // Per mode: the backend every core uses, where each core's snapshot
    // updates come from, and what to say at start-up.
    let (backend, refreshes, first, apply_thread, summary, model) = match &settings {
        None => {
            let store = embedded::start(&config.data_dir, cores, config.seed, fanout)?;
            let model = store.model.clone();
            let summary = format!(
                "embedded backend, {} todos, {} commands replayed, data in {}",
                store.todos,
                store.replayed,
                config.data_dir.display()
            );
            let refreshes: Vec<core_main::Refresh> = store
                .updates
                .into_iter()
                .map(core_main::Refresh::Embedded)
                .collect();
            (
                Backend::Embedded(store.handle),
                refreshes,
                store.snapshot,
                Some(store.thread),
                summary,
                model,
            )
        }
        Some(settings) => {
            let producer = distributed::producer::Producer::new(settings)?;
            // Empty until the follower's first load; queries answer 503 meanwhile.
            let model = read_model::Shared::new(read_model::ReadModel::new(0), false);
            let db = distributed::db_thread::DbThread::start(settings, model.clone(), fanout)?;
            let refreshes = (0..cores)
                .map(|_| core_main::Refresh::Redis {
                    url: settings.redis_url.clone(),
                    db: db.clone(),
                })
                .collect();
            let summary = format!(
                "distributed backend: Kafka {} topic {}, Redis {}, PostgreSQL",
                settings.kafka_brokers, settings.topic, settings.redis_url
            );
            // Version 0: nothing yet; /readyz says 503 until Redis delivers.
            let empty = Arc::new(todo_model::Snapshot::render(0, &[]));
            (
                Backend::Distributed { producer, db },
                refreshes,
                empty,
                None,
                summary,
                model,
            )
        }
    };
    let services = per_core::Services {
        search: search::Search::start(model.clone(), cores).map_err(StartError::Thread)?,
        accounts: accounts::Accounts::start(config.auth_threads).map_err(StartError::Thread)?,
        model,
        secret: secret.clone().into(),
        rules: rules.clone(),
        log: (config.access_log != access_log::Mode::Off)
            .then(|| access_log::Sink::start(&config.instance_label())),
    };
    let metrics: Arc<[CoreMetrics]> = (0..cores).map(|_| CoreMetrics::default()).collect();
    let config = Arc::new(config);
    let addr = listeners[0].local_addr().ok();
    let mut threads = Vec::with_capacity(cores);
    let per_core = refreshes.into_iter().zip(feeds);
    for ((index, listener), (refresh, changes)) in listeners.into_iter().enumerate().zip(per_core) {
        let config = config.clone();
        let metrics = metrics.clone();
        let snapshot = first.clone();
        let backend = backend.clone();
        let shutdown = shutdown.clone();
        let services = services.clone();
        let node = (usize::from(config.instance) * cores + index) as u16;
        let pin = config.pin;
        let thread = todo_runtime::spawn_core("todo-core", index, pin, driver, move || {
            let core = Rc::new(per_core::Core::new(
                index,
                &snapshot,
                config.clone(),
                metrics,
                backend,
                node,
                services,
            ));
            core_main::run(core, listener, refresh, changes, shutdown)
        })
        .map_err(StartError::Thread)?;
        threads.push(thread);
    }
    eprintln!(
        "todo-server: listening on {} ({cores} cores, {} driver, {summary})",
        addr.map_or_else(|| "?".into(), |a| a.to_string()),
        driver.name(),
    );
    for t in threads {
        let _ = t.join();
    }
    // Every core has stopped: the apply thread makes what it holds durable
    // and stops.
    if let (Backend::Embedded(handle), Some(t)) = (&backend, apply_thread) {
        handle.stop();
        let _ = t.join();
    }
    Ok(())
}
