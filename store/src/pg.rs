//! PostgreSQL: the pool, the schema (`schema.sql`, `indexes.sql`) and seed,
//! and the reads both programs make. The write path and the feeds are
//! submodules:
//!
//! ```text
//! pg.rs          pool, migrate_and_seed, row decoding, lookups by id / name
//!                (todo, user_by_name, category, outcome), current_snapshot
//! pg/apply.rs    the worker's batch transaction: facts per TodoCommand::needs,
//!                decide, the Change, outcomes, version stamps, the snapshot
//! pg/changes.rs  the follower's feed: load_all (everything, at a version) and
//!                changes_since (puts and tombstones after a version)
//! pg/list.rs     GET /todos as SQL: filters, sorts and keyset pages
//! ```
//!
//! Every query is served by an index (see `indexes.sql`; the worker's
//! `tests/plans.rs` asks the planner): the primary keys for row lookups, for
//! the idempotency check and for `ORDER BY id DESC LIMIT n` (ids are
//! time-ordered, so the newest todos are the largest ids), `version`
//! indexes for the feed, and one index per list order.

mod apply;
mod changes;
mod list;

pub use apply::{apply_batch, Applied};
pub use changes::{changes_since, load_all, ChangeSet, State};
pub use list::{list_todos, list_todos_sql, ListOrder, ListSql, ListTodos};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use todo_model::{Category, Outcome, Rejection, Snapshot, Todo, User, SNAPSHOT_MAX};
use tokio_postgres::{NoTls, Row};

use crate::StoreError;

/// Serialises migrations and seeding across workers starting together.
const MIGRATION_LOCK: i64 = 0x746f_646f; // "todo"

/// The tables, applied at every start-up (idempotent; migrates an older
/// database).
pub const SCHEMA: &str = include_str!("../schema.sql");
/// The secondary indexes, applied at every start-up after [`SCHEMA`] and the
/// seed (idempotent).
pub const INDEXES: &str = include_str!("../indexes.sql");

/// Longest wait for a new connection, a free one, or a health check.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Seeded rows per INSERT: bounds the size of one statement's arrays
/// (about 10 MB) whatever `TODO_SEED` is.
const SEED_CHUNK: usize = 50_000;

/// A connection pool of `size` connections to `database_url`.
pub fn pool(database_url: &str, size: usize) -> Result<Pool, StoreError> {
    let pg: tokio_postgres::Config = database_url.parse().map_err(StoreError::DatabaseUrl)?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Bounded waits: with PostgreSQL away, a caller learns so within
    // seconds and can say so (503, a retry with backoff) instead of hanging.
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(StoreError::BuildPool)
}

/// Create the schema if missing (or migrate it), seed an empty database,
/// then build the missing indexes (over the seeded rows: a sorted build is
/// several times faster than index maintenance row by row). Returns how many
/// todos were seeded. The seed is one snapshot version: its rows carry it,
/// so a follower's feed starts right after it.
pub async fn migrate_and_seed(
    client: &mut deadpool_postgres::Client,
    seed: usize,
) -> Result<usize, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let empty: bool = tx
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM todos) AND NOT EXISTS (SELECT 1 FROM processed_commands)",
            &[],
        )
        .await?
        .get(0);
    let mut seeded = 0;
    if empty && seed > 0 {
        let version = next_version(&tx).await?;
        let insert = tx
            .prepare(
                "INSERT INTO todos (id, owner, title, description, completed, created_at, updated_at, public, version)
                 SELECT *, true, $8 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[], $6::BIGINT[], $7::BIGINT[])",
            )
            .await?;
        let todos = todo_model::seed::seed(seed, todo_model::now_ms());
        for chunk in todos.chunks(SEED_CHUNK) {
            let col = |f: fn(&Todo) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
            let text = |f: fn(&Todo) -> &str| chunk.iter().map(f).collect::<Vec<&str>>();
            let done: Vec<bool> = chunk.iter().map(|t| t.completed).collect();
            tx.execute(
                &insert,
                &[
                    &col(|t| t.id as i64),
                    &text(|t| &t.owner),
                    &text(|t| &t.title),
                    &text(|t| &t.description),
                    &done,
                    &col(|t| t.created_at as i64),
                    &col(|t| t.updated_at as i64),
                    &version,
                ],
            )
            .await?;
        }
        seeded = todos.len();
    }
    tx.batch_execute(INDEXES).await?;
    tx.commit().await?;
    Ok(seeded)
}

/// The todo columns, in the order [`todo_from`] reads them.
const COLUMNS: &str =
    "id, owner, title, description, completed, created_at, updated_at, category_id, public";
const USER_COLUMNS: &str = "id, username, password_hash, created_at";
const CATEGORY_COLUMNS: &str = "id, owner, name, created_at, updated_at";

/// A row of [`COLUMNS`].
fn todo_from(row: &Row) -> Todo {
    Todo {
        id: row.get::<_, i64>(0) as u64,
        owner: row.get(1),
        title: row.get(2),
        description: row.get(3),
        completed: row.get(4),
        created_at: row.get::<_, i64>(5) as u64,
        updated_at: row.get::<_, i64>(6) as u64,
        category_id: row.get::<_, Option<i64>>(7).map(|id| id as u64),
        public: row.get(8),
    }
}

/// A row of [`USER_COLUMNS`].
fn user_from(row: &Row) -> User {
    User {
        id: row.get::<_, i64>(0) as u64,
        username: row.get(1),
        password_hash: row.get(2),
        created_at: row.get::<_, i64>(3) as u64,
    }
}

/// A row of [`CATEGORY_COLUMNS`].
fn category_from(row: &Row) -> Category {
    Category {
        id: row.get::<_, i64>(0) as u64,
        owner: row.get(1),
        name: row.get(2),
        created_at: row.get::<_, i64>(3) as u64,
        updated_at: row.get::<_, i64>(4) as u64,
    }
}

/// Move the snapshot version on by one and take its row's lock until the
/// transaction ends: the lock orders every writer's commit by version (see
/// `changes_since`). Returns the new version.
async fn next_version(tx: &impl GenericClient) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
            "UPDATE snapshot_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await?
        .get(0))
}

async fn render(client: &impl GenericClient, version: u64) -> Result<Snapshot, StoreError> {
    let rows = client
        .query(
            // The hot path's rows: public todos only (todos_public_id).
            &format!(
                "SELECT {COLUMNS} FROM todos WHERE public ORDER BY id DESC LIMIT {SNAPSHOT_MAX}"
            ),
            &[],
        )
        .await?;
    let todos: Vec<Todo> = rows.iter().map(todo_from).collect();
    Ok(Snapshot::render(version, &todos))
}

/// The snapshot of the committed state now, under a consistent version.
pub async fn current_snapshot(client: &deadpool_postgres::Client) -> Result<Snapshot, StoreError> {
    // REPEATABLE READ: the version and the rows come from one snapshot.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = async {
        let version: i64 = client
            .query_one("SELECT version FROM snapshot_version", &[])
            .await?
            .get(0);
        render(client, version as u64).await
    }
    .await;
    client.batch_execute("COMMIT").await?;
    result
}

/// One todo by id.
pub async fn todo(client: &impl GenericClient, id: u64) -> Result<Option<Todo>, StoreError> {
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM todos WHERE id = $1"))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&(id as i64)])
        .await?
        .map(|r| todo_from(&r)))
}

/// One user by username (`POST /sessions`, `GET /users/me`), served by the
/// username's unique index.
pub async fn user_by_name(
    client: &impl GenericClient,
    username: &str,
) -> Result<Option<User>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&username])
        .await?
        .map(|r| user_from(&r)))
}

/// One category by id.
pub async fn category(
    client: &impl GenericClient,
    id: u64,
) -> Result<Option<Category>, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {CATEGORY_COLUMNS} FROM categories WHERE id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&(id as i64)])
        .await?
        .map(|r| category_from(&r)))
}

/// The recorded outcome of a command, for `GET /commands/{id}`: its status
/// (`applied` or `rejected`; a command is only ever seen with its outcome,
/// recorded in the transaction that applied it) and, when rejected, the
/// reason as [`Rejection::as_str`] wrote it ([`command_outcome`] reads it
/// back with [`Rejection::parse`]).
pub async fn outcome(
    client: &impl GenericClient,
    command_id: u64,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT outcome, reason FROM processed_commands WHERE command_id = $1",
            &[&(command_id as i64)],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// [`outcome`], typed: `None` for a command not (yet) processed, or for a
/// status or reason this build does not know (a newer worker's).
pub async fn command_outcome(
    client: &impl GenericClient,
    command_id: u64,
) -> Result<Option<Outcome>, StoreError> {
    Ok(outcome(client, command_id)
        .await?
        .and_then(|(status, reason)| parse_outcome(&status, reason.as_deref())))
}

/// What an `Idempotency-Key` stands for, as [`claim_key`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub fingerprint: String,
    pub command_id: u64,
    pub todo_id: u64,
}

/// Make (`user`, `key`) stand for this command unless a record younger
/// than `window_ms` exists; either way return the record that stands.
/// Concurrent claims of one key agree: the primary key serialises them.
#[allow(clippy::too_many_arguments)]
pub async fn claim_key(
    client: &impl GenericClient,
    user: &str,
    key: &str,
    fingerprint: &str,
    command_id: u64,
    todo_id: u64,
    now_ms: u64,
    window_ms: u64,
) -> Result<KeyClaim, StoreError> {
    const CLAIM: &str = "
        WITH ins AS (
            INSERT INTO idempotency_keys AS k
                (user_name, key, fingerprint, command_id, todo_id, created_ms)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (user_name, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, command_id = EXCLUDED.command_id,
                    todo_id = EXCLUDED.todo_id, created_ms = EXCLUDED.created_ms
                WHERE k.created_ms < $6 - $7
            RETURNING fingerprint, command_id, todo_id)
        SELECT fingerprint, command_id, todo_id FROM ins
        UNION ALL
        SELECT fingerprint, command_id, todo_id FROM idempotency_keys
         WHERE user_name = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM ins)";
    // A record committed by a concurrent claim after this statement's
    // snapshot is neither inserted over nor seen: asking again sees it.
    for _ in 0..3 {
        let row = client
            .query_opt(
                CLAIM,
                &[
                    &user,
                    &key,
                    &fingerprint,
                    &(command_id as i64),
                    &(todo_id as i64),
                    &(now_ms as i64),
                    &(window_ms as i64),
                ],
            )
            .await?;
        if let Some(r) = row {
            return Ok(KeyClaim {
                fingerprint: r.get(0),
                command_id: r.get::<_, i64>(1) as u64,
                todo_id: r.get::<_, i64>(2) as u64,
            });
        }
    }
    Err(StoreError::Contended(
        "idempotency key claimed concurrently".into(),
    ))
}

/// Delete Idempotency-Key records older than `window_ms`; how many.
pub async fn prune_keys(
    client: &impl GenericClient,
    now_ms: u64,
    window_ms: u64,
) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_ms < $1",
            &[&(now_ms.saturating_sub(window_ms) as i64)],
        )
        .await?)
}

/// A stored status and reason as an [`Outcome`].
pub fn parse_outcome(status: &str, reason: Option<&str>) -> Option<Outcome> {
    match (status, reason) {
        ("applied", _) => Some(Outcome::Applied),
        ("rejected", Some(reason)) => Rejection::parse(reason).map(Outcome::Rejected),
        _ => None,
    }
}

/// How an outcome is stored: `(outcome, reason)`.
fn stored_outcome(outcome: Outcome) -> (&'static str, Option<&'static str>) {
    match outcome {
        Outcome::Applied => ("applied", None),
        Outcome::Rejected(r) => ("rejected", Some(r.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let mut all = vec![Outcome::Applied];
        all.extend(Rejection::ALL.map(Outcome::Rejected));
        for outcome in all {
            let (status, reason) = stored_outcome(outcome);
            assert_eq!(parse_outcome(status, reason), Some(outcome));
        }
        assert_eq!(parse_outcome("rejected", Some("cosmic_rays")), None);
        assert_eq!(parse_outcome("pending", None), None);
    }
}
