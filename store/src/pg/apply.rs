//! The worker's batch transaction: every command of a batch, in order, in
//! ONE transaction (write path, design section 5).
//!
//! ```text
//! record     INSERT processed_commands (whole batch, ON CONFLICT DO NOTHING)
//!            -> which commands are new; the others were applied before
//! per new    look up what cmd.needs() names (rows locked), decide, write
//!            the Change, note which rows changed
//! outcomes   UPDATE processed_commands (whole batch): applied | rejected + reason
//! if changed UPDATE snapshot_version (+1, its row lock orders these commits)
//!            -> stamp the changed rows and tombstones with that version
//!            -> render the newest rows as the snapshot of that version
//! COMMIT
//! ```
//!
//! Exactly once: a redelivered command's id is recorded already, so it is
//! skipped; a command being applied by another worker right now (a partition
//! that moved) makes our INSERT of its id wait for that transaction, then
//! skip it. The facts are read under locks so that two workers applying
//! related commands at once still decide on the truth:
//!
//! - the todo row `FOR UPDATE` (its commands come in order on one partition,
//!   the lock covers the moment a partition moves);
//! - a category a todo is put in `FOR KEY SHARE` (what the foreign key takes:
//!   todo writes into one category do not wait for each other, a delete of
//!   it waits for them); a category being renamed or deleted `FOR UPDATE`,
//!   before its todos are counted, so no todo can enter it meanwhile;
//! - a username, and an owner's category name, under a transaction-scoped
//!   advisory lock taken before the look-up, so two registrations of one name
//!   (two user ids, two partitions) are decided one after the other. The
//!   unique indexes stay the backstop.
//!
//! Locks are taken in command order, so two workers can deadlock (say, each
//! renames one of two categories to the other's old name). PostgreSQL then
//! aborts one transaction and its batch is applied again
//! ([`StoreError::is_conflict`]).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Transaction};
use todo_model::{decide, Category, Change, Facts, Op, Outcome, Snapshot, Todo, TodoCommand};

use super::{category_from, render, stored_outcome, todo_from, CATEGORY_COLUMNS, COLUMNS};
use crate::StoreError;

/// Advisory lock namespaces (the two-key form; PostgreSQL keeps it apart
/// from the one-key form of the migration lock).
const USERNAME_LOCK: i32 = 1;
const CATEGORY_NAME_LOCK: i32 = 2;

/// What one batch did.
pub struct Applied {
    /// Per command of the batch: `None` when it had been processed before
    /// (or came twice in this batch).
    pub outcomes: Vec<Option<Outcome>>,
    /// The snapshot to publish, when anything changed.
    pub snapshot: Option<Snapshot>,
}

/// Apply a batch in ONE transaction (see the module doc for why this is
/// exactly-once together with the consumer's offset handling).
pub async fn apply_batch(
    client: &mut deadpool_postgres::Client,
    cmds: &[TodoCommand],
) -> Result<Applied, StoreError> {
    let tx = client.transaction().await?;
    let mut new = record(&tx, cmds).await?;
    let mut changed = Changed::default();
    let mut outcomes = Vec::with_capacity(cmds.len());
    for cmd in cmds {
        // `remove`: a command that came twice in one batch is new only once.
        outcomes.push(if new.remove(&cmd.command_id) {
            Some(apply(&tx, cmd, &mut changed).await?)
        } else {
            None
        });
    }
    record_outcomes(&tx, cmds, &outcomes).await?;
    // Rendering inside the transaction, after taking the version row's lock,
    // makes the snapshot exactly the state its version names: another worker's
    // commit has to wait for ours.
    let snapshot = if changed.is_empty() {
        None
    } else {
        let version = super::next_version(&tx).await?;
        changed.stamp(&tx, version).await?;
        Some(render(&tx, version as u64).await?)
    };
    tx.commit().await?;
    Ok(Applied { outcomes, snapshot })
}

/// Record every command id of the batch as pending; the ids that were not
/// recorded before.
async fn record(tx: &Transaction<'_>, cmds: &[TodoCommand]) -> Result<HashSet<u64>, StoreError> {
    let mut seen = HashSet::with_capacity(cmds.len());
    let mut firsts: Vec<&TodoCommand> = cmds.iter().filter(|c| seen.insert(c.command_id)).collect();
    // In id order: two workers recording overlapping batches (a partition
    // that moved) wait for each other's ids in one order, never in a cycle.
    firsts.sort_unstable_by_key(|c| c.command_id);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO processed_commands (command_id, todo_id, op, user_name, outcome)
             SELECT c, t, o, u, 'pending'
             FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS n (c, t, o, u)
             ORDER BY c
             ON CONFLICT DO NOTHING
             RETURNING command_id",
        )
        .await?;
    let ids: Vec<i64> = firsts.iter().map(|c| c.command_id as i64).collect();
    let targets: Vec<i64> = firsts.iter().map(|c| c.todo_id as i64).collect();
    let ops: Vec<&str> = firsts.iter().map(|c| c.op.as_str()).collect();
    let users: Vec<&str> = firsts.iter().map(|c| c.user.as_str()).collect();
    let rows = tx.query(&stmt, &[&ids, &targets, &ops, &users]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
}

/// Write each new command's outcome over its pending record.
async fn record_outcomes(
    tx: &Transaction<'_>,
    cmds: &[TodoCommand],
    outcomes: &[Option<Outcome>],
) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    for (cmd, outcome) in cmds.iter().zip(outcomes) {
        if let Some(outcome) = outcome {
            let (status, reason) = stored_outcome(*outcome);
            ids.push(cmd.command_id as i64);
            statuses.push(status);
            reasons.push(reason);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE processed_commands p SET outcome = n.o, reason = n.r
             FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[]) AS n (c, o, r)
             WHERE p.command_id = n.c",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &statuses, &reasons]).await?;
    Ok(())
}

/// Look up the facts `cmd` needs, decide, and write the change.
async fn apply(
    tx: &Transaction<'_>,
    cmd: &TodoCommand,
    changed: &mut Changed,
) -> Result<Outcome, StoreError> {
    let needs = cmd.needs();
    let todo = match needs.todo {
        Some(id) => row(
            tx,
            &format!("SELECT {COLUMNS} FROM todos WHERE id = $1 FOR UPDATE"),
            id,
        )
        .await?
        .map(|r| todo_from(&r)),
        None => None,
    };
    let category = match needs.category {
        Some(id) => {
            let lock = match cmd.op {
                Op::Create | Op::Update | Op::Delete => "FOR KEY SHARE",
                _ => "FOR UPDATE",
            };
            let sql = format!("SELECT {CATEGORY_COLUMNS} FROM categories WHERE id = $1 {lock}");
            row(tx, &sql, id).await?.map(|r| category_from(&r))
        }
        None => None,
    };
    let name_taken = match needs.category_name {
        Some((owner, name, except)) => {
            advisory_lock(tx, CATEGORY_NAME_LOCK, &format!("{owner}\n{name}")).await?;
            let stmt = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM categories WHERE owner = $1 AND name = $2 AND id <> $3)",
                )
                .await?;
            tx.query_one(&stmt, &[&owner, &name, &(except as i64)])
                .await?
                .get(0)
        }
        None => false,
    };
    let username_taken = match needs.username {
        Some(username) => {
            advisory_lock(tx, USERNAME_LOCK, username).await?;
            let stmt = tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE username = $1)")
                .await?;
            tx.query_one(&stmt, &[&username]).await?.get(0)
        }
        None => false,
    };
    let category_todos = match needs.category_todos {
        Some(id) => {
            let stmt = tx
                .prepare_cached("SELECT count(*) FROM todos WHERE category_id = $1")
                .await?;
            tx.query_one(&stmt, &[&(id as i64)]).await?.get::<_, i64>(0) as u64
        }
        None => 0,
    };
    let facts = Facts {
        todo: todo.as_ref(),
        category: category.as_ref(),
        name_taken,
        username_taken,
        category_todos,
    };
    match decide(&facts, cmd) {
        Ok(change) => write(tx, change, changed).await,
        Err(rejection) => Ok(Outcome::Rejected(rejection)),
    }
}

/// The row `sql` (a statement with one id parameter) finds, if any.
async fn row(
    tx: &Transaction<'_>,
    sql: &str,
    id: u64,
) -> Result<Option<tokio_postgres::Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&stmt, &[&(id as i64)]).await?)
}

/// Wait for the transaction-scoped advisory lock on `name` in `space`. A
/// hash collision only makes two unrelated names wait for each other.
async fn advisory_lock(tx: &Transaction<'_>, space: i32, name: &str) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    tx.execute(&stmt, &[&space, &name]).await?;
    Ok(())
}

/// Write what [`decide`] chose.
async fn write(
    tx: &Transaction<'_>,
    change: Change,
    changed: &mut Changed,
) -> Result<Outcome, StoreError> {
    match change {
        Change::Insert(t) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO todos ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ))
                .await?;
            tx.execute(&stmt, &todo_params(&t).as_params()).await?;
            changed.todos.insert(t.id, Kept::Put);
        }
        Change::Update(t) => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE todos SET owner = $2, title = $3, description = $4, completed = $5,
                        created_at = $6, updated_at = $7, category_id = $8
                     WHERE id = $1",
                )
                .await?;
            tx.execute(&stmt, &todo_params(&t).as_params()).await?;
            changed.todos.insert(t.id, Kept::Put);
        }
        Change::Delete(id) => {
            let stmt = tx.prepare_cached("DELETE FROM todos WHERE id = $1").await?;
            tx.execute(&stmt, &[&(id as i64)]).await?;
            changed.todos.insert(id, Kept::Deleted);
        }
        Change::InsertUser(u) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO users (id, username, password_hash, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .await?;
            let inserted = tx
                .execute(
                    &stmt,
                    &[
                        &(u.id as i64),
                        &u.username,
                        &u.password_hash,
                        &(u.created_at as i64),
                    ],
                )
                .await?;
            // The facts do not include users by id: a second registration
            // under a taken id (only a forged or replayed command: servers
            // make unique ids) is refused here rather than failing the
            // batch forever on the primary key.
            if inserted == 0 {
                return Ok(Outcome::Rejected(todo_model::Rejection::AlreadyExists));
            }
            changed.users.push(u.id as i64);
        }
        Change::PutCategory(c) => {
            put_category(tx, &c).await?;
            changed.categories.insert(c.id, Kept::Put);
        }
        Change::DeleteCategory(id) => {
            let stmt = tx
                .prepare_cached("DELETE FROM categories WHERE id = $1")
                .await?;
            tx.execute(&stmt, &[&(id as i64)]).await?;
            changed.categories.insert(id, Kept::Deleted);
        }
    }
    Ok(Outcome::Applied)
}

/// A created or renamed category (its owner and creation time never change).
async fn put_category(tx: &Transaction<'_>, c: &Category) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO categories (id, owner, name, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &(c.id as i64),
            &c.owner,
            &c.name,
            &(c.created_at as i64),
            &(c.updated_at as i64),
        ],
    )
    .await?;
    Ok(())
}

/// A todo as the parameters of [`COLUMNS`].
struct TodoParams<'a> {
    todo: &'a Todo,
    id: i64,
    created_at: i64,
    updated_at: i64,
    category_id: Option<i64>,
}

fn todo_params(todo: &Todo) -> TodoParams<'_> {
    TodoParams {
        todo,
        id: todo.id as i64,
        created_at: todo.created_at as i64,
        updated_at: todo.updated_at as i64,
        category_id: todo.category_id.map(|c| c as i64),
    }
}

impl TodoParams<'_> {
    fn as_params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.id,
            &self.todo.owner,
            &self.todo.title,
            &self.todo.description,
            &self.todo.completed,
            &self.created_at,
            &self.updated_at,
            &self.category_id,
        ]
    }
}

/// Whether a row changed in this batch is there at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Put,
    Deleted,
}

/// The rows this batch changed, by their state at its end (a todo created
/// and deleted in one batch is a tombstone only).
#[derive(Default)]
struct Changed {
    todos: HashMap<u64, Kept>,
    users: Vec<i64>,
    categories: HashMap<u64, Kept>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.todos.is_empty() && self.users.is_empty() && self.categories.is_empty()
    }

    /// Stamp every changed row with `version`; tombstones for the deleted,
    /// none for the present (a put removes an older tombstone of its id, so
    /// an id is never both in the feed's puts and its deletes).
    async fn stamp(&self, tx: &Transaction<'_>, version: i64) -> Result<(), StoreError> {
        for (table, kind, rows) in [
            ("todos", "todo", &self.todos),
            ("categories", "category", &self.categories),
        ] {
            let (put, deleted) = split(rows);
            if !put.is_empty() {
                let stamp = tx
                    .prepare_cached(&format!(
                        "UPDATE {table} SET version = $1 WHERE id = ANY($2)"
                    ))
                    .await?;
                tx.execute(&stamp, &[&version, &put]).await?;
                let revive = tx
                    .prepare_cached("DELETE FROM deleted WHERE kind = $1 AND id = ANY($2)")
                    .await?;
                tx.execute(&revive, &[&kind, &put]).await?;
            }
            if !deleted.is_empty() {
                let tombstone = tx
                    .prepare_cached(
                        "INSERT INTO deleted (kind, id, version)
                         SELECT $1, id, $2 FROM UNNEST($3::BIGINT[]) AS id
                         ON CONFLICT (kind, id) DO UPDATE SET version = EXCLUDED.version",
                    )
                    .await?;
                tx.execute(&tombstone, &[&kind, &version, &deleted]).await?;
            }
        }
        if !self.users.is_empty() {
            let stamp = tx
                .prepare_cached("UPDATE users SET version = $1 WHERE id = ANY($2)")
                .await?;
            tx.execute(&stamp, &[&version, &self.users]).await?;
        }
        Ok(())
    }
}

/// The ids kept and the ids deleted, each sorted.
fn split(rows: &HashMap<u64, Kept>) -> (Vec<i64>, Vec<i64>) {
    let mut put = Vec::new();
    let mut deleted = Vec::new();
    for (&id, &kept) in rows {
        match kept {
            Kept::Put => put.push(id as i64),
            Kept::Deleted => deleted.push(id as i64),
        }
    }
    put.sort_unstable();
    deleted.sort_unstable();
    (put, deleted)
}
