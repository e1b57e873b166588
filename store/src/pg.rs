//! PostgreSQL: the pool, the schema (`schema.sql`) and seed, the batch
//! transaction the worker applies commands in, the newest rows, and the
//! lookups the server answers `GET /todos/{id}` and `/commands/{id}` with.
//!
//! Every query here is served by a primary key: `todos(id)` for the row
//! lookups and for `ORDER BY id DESC LIMIT n` (ids are time-ordered, so the
//! newest todos are the largest ids), `processed_commands(command_id)` for the
//! idempotency check.

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use todo_model::{decide, Change, Op, Outcome, Snapshot, Todo, TodoCommand, SNAPSHOT_MAX};
use tokio_postgres::{NoTls, Row};

use crate::StoreError;

/// Serialises migrations and seeding across workers starting together.
const MIGRATION_LOCK: i64 = 0x746f_646f; // "todo"

/// The schema, applied at every start-up (idempotent).
pub const SCHEMA: &str = include_str!("../schema.sql");

/// Longest wait for a new connection, a free one, or a health check.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// Create the schema if missing and seed an empty database. Returns how many
/// todos were seeded.
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
        let todos = todo_model::seed::seed(seed, todo_model::now_ms());
        let col = |f: fn(&Todo) -> i64| todos.iter().map(f).collect::<Vec<i64>>();
        let text = |f: fn(&Todo) -> &str| todos.iter().map(f).collect::<Vec<&str>>();
        let done: Vec<bool> = todos.iter().map(|t| t.completed).collect();
        tx.execute(
            "INSERT INTO todos (id, owner, title, description, completed, created_at, updated_at)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BOOLEAN[], $6::BIGINT[], $7::BIGINT[])",
            &[
                &col(|t| t.id as i64),
                &text(|t| &t.owner),
                &text(|t| &t.title),
                &text(|t| &t.description),
                &done,
                &col(|t| t.created_at as i64),
                &col(|t| t.updated_at as i64),
            ],
        )
        .await?;
        tx.execute("UPDATE snapshot_version SET version = version + 1", &[])
            .await?;
        seeded = todos.len();
    }
    tx.commit().await?;
    Ok(seeded)
}

fn todo_from(row: &Row) -> Todo {
    Todo {
        id: row.get::<_, i64>(0) as u64,
        owner: row.get(1),
        title: row.get(2),
        description: row.get(3),
        completed: row.get(4),
        created_at: row.get::<_, i64>(5) as u64,
        updated_at: row.get::<_, i64>(6) as u64,
    }
}

const COLUMNS: &str = "id, owner, title, description, completed, created_at, updated_at";

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Update => "update",
        Op::Delete => "delete",
    }
}

/// What one batch did.
pub struct Applied {
    /// Per command of the batch: `None` when it had been processed before.
    pub outcomes: Vec<Option<Outcome>>,
    /// The snapshot to publish, when anything changed.
    pub snapshot: Option<Snapshot>,
}

/// Apply a batch in ONE transaction (see the crate doc for why this is
/// exactly-once together with the consumer's offset handling).
pub async fn apply_batch(
    client: &mut deadpool_postgres::Client,
    cmds: &[TodoCommand],
) -> Result<Applied, StoreError> {
    let tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(cmds.len());
    let mut changed = false;
    for cmd in cmds {
        let new = tx
            .execute(
                "INSERT INTO processed_commands (command_id, todo_id, op, user_name, outcome)
                 VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT DO NOTHING",
                &[
                    &(cmd.command_id as i64),
                    &(cmd.todo_id as i64),
                    &op_name(cmd.op),
                    &cmd.user,
                ],
            )
            .await?;
        if new == 0 {
            outcomes.push(None);
            continue;
        }
        let existing = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM todos WHERE id = $1 FOR UPDATE"),
                &[&(cmd.todo_id as i64)],
            )
            .await?
            .map(|r| todo_from(&r));
        let outcome = match decide(existing.as_ref(), cmd) {
            Ok(Change::Insert(t)) => {
                tx.execute(
                    &format!("INSERT INTO todos ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                    &[
                        &(t.id as i64),
                        &t.owner,
                        &t.title,
                        &t.description,
                        &t.completed,
                        &(t.created_at as i64),
                        &(t.updated_at as i64),
                    ],
                )
                .await?;
                Outcome::Applied
            }
            Ok(Change::Update(t)) => {
                tx.execute(
                    "UPDATE todos SET title = $2, description = $3, completed = $4, updated_at = $5 WHERE id = $1",
                    &[&(t.id as i64), &t.title, &t.description, &t.completed, &(t.updated_at as i64)],
                )
                .await?;
                Outcome::Applied
            }
            Ok(Change::Delete(id)) => {
                tx.execute("DELETE FROM todos WHERE id = $1", &[&(id as i64)])
                    .await?;
                Outcome::Applied
            }
            Err(rejection) => Outcome::Rejected(rejection),
        };
        let (status, reason) = match outcome {
            Outcome::Applied => ("applied", None),
            Outcome::Rejected(r) => ("rejected", Some(r.as_str())),
        };
        tx.execute(
            "UPDATE processed_commands SET outcome = $2, reason = $3 WHERE command_id = $1",
            &[&(cmd.command_id as i64), &status, &reason],
        )
        .await?;
        changed |= outcome == Outcome::Applied;
        outcomes.push(Some(outcome));
    }
    // Rendering inside the transaction, after taking the version row's lock,
    // makes the snapshot exactly the state its version names: another worker's
    // commit has to wait for ours.
    let snapshot = if changed {
        let version: i64 = tx
            .query_one(
                "UPDATE snapshot_version SET version = version + 1 RETURNING version",
                &[],
            )
            .await?
            .get(0);
        Some(render(&tx, version as u64).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(Applied { outcomes, snapshot })
}

async fn render(client: &impl GenericClient, version: u64) -> Result<Snapshot, StoreError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM todos ORDER BY id DESC LIMIT {SNAPSHOT_MAX}"),
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
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM todos WHERE id = $1"),
            &[&(id as i64)],
        )
        .await?
        .map(|r| todo_from(&r)))
}

/// The recorded outcome of a command, for `GET /commands/{id}`.
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
