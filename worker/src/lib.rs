//! todo-worker: the distributed write path's applier.
//!
//! ```text
//! Kafka todo-commands (consumer group, at-least-once)
//!   -> consumer.rs  gather a batch (up to `max_batch`, `batch_wait` at most)
//!   -> db.rs        ONE transaction: record each command id (ON CONFLICT DO
//!                   NOTHING), apply only new ones with todo_model::decide,
//!                   record the outcome, bump the snapshot version, read the
//!                   newest rows -> COMMIT
//!   -> store the batch's offsets (committed by the consumer afterwards)
//!   -> cache.rs     (beside, latest wins) SET todos:snapshot only if newer,
//!                   PUBLISH todos:changed; retried until Redis takes it
//! ```
//!
//! A crash before COMMIT redelivers the batch and nothing was applied; a crash
//! after COMMIT but before the offsets are committed redelivers commands whose
//! ids are already recorded, so they are skipped: every command takes effect
//! exactly once. `resp.rs` is the small Redis client (RESP2 via
//! redis-protocol).

pub mod cache;
pub mod config;
pub mod consumer;
pub mod db;
pub mod resp;

pub use config::WorkerConfig;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(String),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Run the worker until the process is stopped: migrate, seed, publish the
/// current snapshot, then consume.
pub async fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    let pool = db::pool(&config.database_url, config.pool_size)?;
    {
        let mut client = pool
            .get()
            .await
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        let seeded = db::migrate_and_seed(&mut client, config.seed).await?;
        if seeded > 0 {
            eprintln!("todo-worker: seeded {seeded} todos");
        }
    }
    let cache = cache::Cache::new(&config.redis_url)?;
    let current = {
        let client = pool
            .get()
            .await
            .map_err(|e| WorkerError::Pool(e.to_string()))?;
        db::current_snapshot(&client).await?
    };
    // Publishing runs beside consumption: Redis being away delays readers but
    // never stalls the applying of commands (their durability is PostgreSQL's).
    let (latest, mut newest) = tokio::sync::watch::channel(std::sync::Arc::new(current));
    newest.mark_changed();
    tokio::spawn(async move {
        while newest.changed().await.is_ok() {
            let snapshot = newest.borrow_and_update().clone();
            cache.publish_with_retry(&snapshot).await;
        }
    });
    consumer::ensure_topic(&config).await?;
    consumer::consume(&config, &pool, &latest).await
}
