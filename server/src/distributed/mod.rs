//! The distributed path (docs/architecture.md §5 and §6), chosen when
//! `KAFKA_BROKERS`, `REDIS_URL` and `DATABASE_URL` are all set.
//!
//! ```text
//! write:   core -> producer.rs: TodoCommand into the core's pack for its
//!          partition; one envelope record per partition in flight per core
//!          (idempotent, acks=all) -> await the delivery report -> 202 | 503;
//!          Redis accepted mark (db_thread.rs) meanwhile
//! refresh: core -> refresh.rs: its own Redis subscriber on todos:changed;
//!          GET todos:snapshot on every (re)subscribe and every message;
//!          newer versions only; stale while Redis is away
//! lookups: core -> db_thread.rs: one tokio thread ("todo-db") with a
//!          PostgreSQL pool for GET /todos/{id} outside the snapshot,
//!          GET /commands/{id}, accounts and categories the read model has
//!          not seen yet, Idempotency-Key claims, and the single-flight fill
//!          of an empty Redis; on the same thread, the accepted-mark writer
//!          and the pruner of expired Idempotency-Key records
//! queries: follow.rs (on the todo-db thread too): the read model, loaded
//!          from PostgreSQL and kept current from the rows each batch
//!          stamped
//! ```
//!
//! Each core has its own producer (its own librdkafka client and pack, see
//! producer.rs). The cores share only what is built for it: the topic's
//! partition count (learned by the `todo-kafka-meta` thread) and the
//! delivery counters, both atomics; and the `todo-db` thread's request and
//! accepted-mark queues. The read hot path touches none of them.

pub mod db_thread;
pub mod follow;
pub mod producer;
pub mod refresh;

use std::time::Duration;

/// Settings of the distributed path.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka_brokers: String,
    pub redis_url: String,
    pub database_url: String,
    pub topic: String,
    /// Longest wait for a delivery report before answering 503.
    pub kafka_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] todo_store::StoreError),
    #[error(transparent)]
    RedisUrl(#[from] todo_store::resp::RespError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}
