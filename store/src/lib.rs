//! The shared state of the distributed path, as both programs that touch it
//! see it (todo-worker writes it, todo-server reads it):
//!
//! ```text
//! PostgreSQL  pg.rs       pool, schema.sql + seed, the batch transaction,
//!                         the newest rows, lookups by todo and command id
//! Redis       codec.rs    the stored form of a Snapshot (todos:snapshot)
//!             resp.rs     URLs, RESP2 commands and replies (no I/O: the
//!                         server's cores speak it over monoio)
//!             redis.rs    a connection on tokio
//!             publish.rs  SET todos:snapshot only if newer + PUBLISH todos:changed
//! ```

pub mod codec;
pub mod pg;
pub mod publish;
pub mod redis;
pub mod resp;

pub use publish::Publisher;

/// Redis key holding the current encoded snapshot ([`codec`]).
pub const SNAPSHOT_KEY: &str = "todos:snapshot";
/// Redis pub/sub channel announcing a new snapshot version.
pub const CHANGED_CHANNEL: &str = "todos:changed";

/// Why a PostgreSQL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL: {0}")]
    DatabaseUrl(tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL pool: {0}")]
    BuildPool(deadpool_postgres::BuildError),
}
