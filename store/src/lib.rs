//! The shared state of the distributed path, as both programs that touch it
//! see it (todo-worker writes it, todo-server reads it):
//!
//! ```text
//! PostgreSQL  pg.rs          pool, schema.sql + seed + indexes.sql, lookups
//!                            (todo, user by name, category, command outcome)
//!             pg/apply.rs    the worker's batch transaction: facts, decide,
//!                            the change (todos, users, categories), outcomes,
//!                            version stamps and tombstones, the snapshot
//!             pg/changes.rs  the follower's feed: load_all, changes_since
//!             pg/list.rs     GET /todos as SQL (filters, sorts, keyset pages)
//! Redis       codec.rs       the stored form of a Snapshot (todos:snapshot)
//!             resp.rs        URLs, RESP2 commands and replies (no I/O: the
//!                            server's cores speak it over monoio)
//!             redis.rs       a connection on tokio
//!             publish.rs     SET todos:snapshot only if newer + PUBLISH
//!                            todos:changed
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
/// Once a server accepted a command, its id is a field of the hash
/// `todos:accepted:hour:<h>`, h the hour its id was made in (Unix ms /
/// 3,600,000), so every server answers `pending` for it until it is
/// applied. One `HSET` marks all of a moment's commands of one hour; the
/// hash expires [`ACCEPTED_TTL_SECS`] after its last mark, more than a day
/// after each of its ids was made.
pub const ACCEPTED_HOUR_PREFIX: &str = "todos:accepted:hour:";
/// `todos:accepted:<command id>`: the mark servers wrote before the hourly
/// hashes (a string key of its own), still looked up during an upgrade.
pub const ACCEPTED_PREFIX: &str = "todos:accepted:";
/// Seconds an hour's marks are kept after its last one.
pub const ACCEPTED_TTL_SECS: u64 = 25 * 60 * 60;

/// The hour (Unix ms / 3,600,000) whose hash holds command `command_id`'s
/// accepted mark.
pub fn accepted_hour(command_id: u64) -> u64 {
    todo_model::ids::id_time_ms(command_id) / 3_600_000
}

/// The hash holding the accepted marks of `hour` ([`accepted_hour`]).
pub fn accepted_key(hour: u64) -> String {
    format!("{ACCEPTED_HOUR_PREFIX}{hour}")
}

/// Why a PostgreSQL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DATABASE_URL: {0}")]
    DatabaseUrl(tokio_postgres::Error),
    #[error("PostgreSQL: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL pool: {0}")]
    BuildPool(deadpool_postgres::BuildError),
    /// Another worker recorded one of the batch's commands first; the batch
    /// is applied again (skipping it).
    #[error("PostgreSQL: another worker applied a command of this batch meanwhile")]
    Raced,
    /// A row stayed contended through every retry.
    #[error("PostgreSQL: {0}")]
    Contended(String),
}

impl StoreError {
    /// The transaction lost to a concurrent one (a deadlock PostgreSQL broke,
    /// a serialization failure): nothing is wrong with PostgreSQL, and doing
    /// the same work again at once is the remedy.
    pub fn is_conflict(&self) -> bool {
        use tokio_postgres::error::SqlState;
        if matches!(self, StoreError::Raced) {
            return true;
        }
        let StoreError::Db(e) = self else {
            return false;
        };
        matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        )
    }
}

/// A PostgreSQL error with what the server said ("db error" alone says
/// nothing an operator can act on).
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}
