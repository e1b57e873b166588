//! todo-worker: the distributed write path's applier.
//!
//! ```text
//! Kafka todo-commands (consumer group, at-least-once)
//!   -> consumer.rs  gather a batch (up to `max_batch`, `batch_wait` at most)
//!   -> todo_store::pg  ONE transaction: record each command id (ON CONFLICT DO
//!                   NOTHING), apply only new ones: look up the facts the
//!                   command needs (todo, category, name and username taken,
//!                   todos in a category; rows locked), todo_model::decide,
//!                   write the change to todos, users or categories; record
//!                   the outcome, bump the snapshot version, stamp the changed
//!                   rows and tombstones with it (the feed todo-server's read
//!                   model follows), read the newest rows -> COMMIT
//!   -> metrics (metrics.rs), one command-log line per command (command_log.rs)
//!   -> store the batch's offsets (committed by the consumer afterwards)
//!   -> todo_store::publish  (beside, latest wins) SET todos:snapshot only if newer,
//!                   PUBLISH todos:changed; retried until Redis takes it
//! lag.rs (a thread, every 2 s): the group's lag per partition -> metrics
//! ```
//!
//! A crash before COMMIT redelivers the batch and nothing was applied; a crash
//! after COMMIT but before the offsets are committed redelivers commands whose
//! ids are already recorded, so they are skipped: every command takes effect
//! exactly once. Two workers whose batches touch related rows (one username,
//! one category) wait for each other's locks; when PostgreSQL breaks a
//! deadlock between them, the losing batch is applied again at once. The
//! SQL and the Redis value are `todo-store`'s; this crate is the consume
//! loop.
//!
//! Its integration tests run against real PostgreSQL, Redis and a broker:
//! `tests/apply.rs` (the flow, SIGKILL, two workers), `tests/accounts.rs`
//! (users and categories through Kafka), `tests/feed.rs` (the batch
//! transaction, the follower's feed, racing transactions, migrating an old
//! database), `tests/plans.rs` (the planner picks an index for every
//! query), `tests/metrics.rs` (batch sizes and times, redeliveries, the lag
//! through a PostgreSQL outage) and `tests/command_log.rs` (the lines on
//! stdout, with the records' trace headers).

pub mod command_log;
pub mod config;
pub mod consumer;
pub mod lag;
pub mod metrics;
pub mod outage;

pub use config::WorkerConfig;

use todo_store::{pg, Publisher, StoreError};

use crate::metrics::{Dependency, Metrics};
use crate::outage::Outage;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] todo_store::StoreError),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
    #[error("REDIS_URL: {0}")]
    RedisUrl(#[from] todo_store::resp::RespError),
    #[error("thread: {0}")]
    Thread(std::io::Error),
}

/// Run the worker until the process is stopped: migrate, seed, publish the
/// current snapshot, then consume. The broker, PostgreSQL and Redis may be
/// away at any point, for any time: the worker waits for them (see
/// [`outage`]); it returns only on what a restart cannot fix.
pub async fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics_listen.0 {
        // Metrics are not worth stopping the applying of writes for.
        if let Err(e) = metrics::serve(addr, metrics.clone()).await {
            eprintln!("todo-worker: metrics: cannot listen on {addr} ({e}); running without them");
        }
    }
    let pool = pg::pool(&config.database_url, config.pool_size)?;
    let publisher = Publisher::new(&config.redis_url)?;
    let mut postgres = Outage::new(Dependency::Postgres, &metrics);
    let current = loop {
        match prepare(&pool, config.seed).await {
            Ok(snapshot) => break snapshot,
            Err(e) => postgres.failed("migrating", &e).await,
        }
    };
    postgres.ok();
    metrics.started(current.version());
    // Publishing runs beside consumption: Redis being away delays readers but
    // never stalls the applying of commands (their durability is PostgreSQL's).
    // Retries take the newest snapshot each time (latest wins).
    let (latest, mut newest) = tokio::sync::watch::channel(std::sync::Arc::new(current));
    newest.mark_changed();
    let mut redis = Outage::new(Dependency::Redis, &metrics);
    let published = metrics.clone();
    tokio::spawn(async move {
        while newest.changed().await.is_ok() {
            loop {
                let snapshot = newest.borrow_and_update().clone();
                match publisher.publish(&snapshot).await {
                    Ok(stored) => {
                        redis.ok();
                        // Not stored: Redis already held a newer one.
                        if stored {
                            published.published(snapshot.version());
                        }
                        break;
                    }
                    Err(e) => redis.failed("publishing a snapshot", &e).await,
                }
            }
        }
    });
    consumer::ensure_topic(&config, &metrics).await?;
    lag::spawn(&config, &metrics)?;
    consumer::consume(&config, &pool, &latest, &metrics).await
}

/// Migrate and seed, then read the committed state's snapshot.
async fn prepare(
    pool: &deadpool_postgres::Pool,
    seed: usize,
) -> Result<todo_model::Snapshot, StoreError> {
    let mut client = pool.get().await?;
    let seeded = pg::migrate_and_seed(&mut client, seed).await?;
    if seeded > 0 {
        eprintln!("todo-worker: seeded {seeded} todos");
    }
    pg::current_snapshot(&client).await
}
