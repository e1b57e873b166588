//! The worker's batch transaction: every command of a batch, in order, in
//! ONE transaction (write path, docs/architecture.md §6).
//!
//! ```text
//! new        SELECT processed_commands (whole batch)
//!            -> which commands are new; the others were applied before
//! todo runs  each run of new todo commands (create, update, delete) between
//!            two of another kind, in four round trips however long: read
//!            the todos and categories they name (locked, in id order),
//!            decide each in turn in memory, DELETE and upsert the end states
//! the others one at a time: look up what cmd.needs() names (rows locked),
//!            decide, write the Change
//! 1st write  UPDATE snapshot_version (+1; its row lock orders these
//!            commits), so todos are written once, with their version
//! record     INSERT processed_commands (the new ones, with their outcomes,
//!            ON CONFLICT DO NOTHING): one row missing -> another worker
//!            applied that command meanwhile -> roll back, apply again
//! if changed stamp changed users and categories, and tombstones, with the version
//!            -> render the newest rows as the snapshot of that version
//! COMMIT
//! ```
//!
//! Exactly once: a redelivered command's id is recorded already, so it is
//! skipped; a command being applied by another worker right now (a partition
//! that moved) makes our INSERT of its id wait for that transaction and
//! then find it recorded: ours rolls back ([`StoreError::Raced`]) and is
//! done again, skipping it. Each command's row is written once, outcome
//! included (no pending row updated later). The facts are read under locks so that two workers applying
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
//! Statements that look up a list of ids (`= ANY($1)`) are unnamed
//! (`query_typed`): planned for each run, with the list at hand and each
//! table's size now. A plan cached while a table was still small (a fresh
//! deployment's `processed_commands`) would go on reading the whole table
//! long after it has grown: measured, a backlog that never drained.
//!
//! A todo run locks its rows in id order; the other commands lock in command
//! order, and the version row is locked at the first write, so two workers
//! can deadlock (say, each renames one of two categories to the other's old
//! name, or one deletes a category another is putting todos in after its
//! first write). PostgreSQL then aborts one transaction and its batch is
//! applied again ([`StoreError::is_conflict`]).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Transaction};
use todo_model::{decide, Category, Change, Facts, Op, Outcome, Snapshot, Todo, TodoCommand};
use tokio_postgres::types::Type;

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
    let mut new = not_processed(&tx, cmds).await?;
    let mut changed = Changed::default();
    let mut outcomes = vec![None; cmds.len()];
    // The new todo commands since the last command of another kind: applied
    // together, before the next one of another kind (which reads the tables).
    let mut run = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        // `remove`: a command that came twice in one batch is new only once.
        if !new.remove(&cmd.command_id) {
            continue;
        }
        if matches!(cmd.op, Op::Create | Op::Update | Op::Delete) {
            run.push(i);
            continue;
        }
        apply_todos(&tx, cmds, &run, &mut outcomes, &mut changed).await?;
        run.clear();
        outcomes[i] = Some(apply(&tx, cmd, &mut changed).await?);
    }
    apply_todos(&tx, cmds, &run, &mut outcomes, &mut changed).await?;
    record(&tx, cmds, &outcomes).await?;
    // Rendering inside the transaction, holding the version row's lock, makes
    // the snapshot exactly the state its version names: another worker's
    // commit has to wait for ours.
    let snapshot = if changed.is_empty() {
        None
    } else {
        let version = changed.version(&tx).await?;
        changed.stamp(&tx, version).await?;
        Some(render(&tx, version as u64).await?)
    };
    tx.commit().await?;
    Ok(Applied { outcomes, snapshot })
}

/// The ids of the batch's commands that were not processed before (each
/// once, however often it came).
async fn not_processed(
    tx: &Transaction<'_>,
    cmds: &[TodoCommand],
) -> Result<HashSet<u64>, StoreError> {
    let mut new: HashSet<u64> = cmds.iter().map(|c| c.command_id).collect();
    let ids: Vec<i64> = new.iter().map(|&id| id as i64).collect();
    let rows = tx
        .query_typed(
            "SELECT command_id FROM processed_commands WHERE command_id = ANY($1)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await?;
    for row in rows {
        new.remove(&(row.get::<_, i64>(0) as u64));
    }
    Ok(new)
}

/// Record the outcome of every command applied now. Another worker that
/// applied one of them meanwhile (a partition that moved while both held
/// it) committed its record first: ours then loses the race
/// ([`StoreError::Raced`]) and the whole transaction is rolled back, to be
/// done again without the commands it already did.
async fn record(
    tx: &Transaction<'_>,
    cmds: &[TodoCommand],
    outcomes: &[Option<Outcome>],
) -> Result<(), StoreError> {
    let mut done: Vec<(&TodoCommand, Outcome)> = cmds
        .iter()
        .zip(outcomes)
        .filter_map(|(cmd, outcome)| outcome.map(|o| (cmd, o)))
        .collect();
    if done.is_empty() {
        return Ok(());
    }
    // In id order: two workers recording overlapping batches wait for each
    // other's ids in one order, never in a cycle.
    done.sort_unstable_by_key(|(c, _)| c.command_id);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO processed_commands (command_id, todo_id, op, user_name, outcome, reason)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[],
                                  $5::TEXT[], $6::TEXT[])
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let ids: Vec<i64> = done.iter().map(|(c, _)| c.command_id as i64).collect();
    let targets: Vec<i64> = done.iter().map(|(c, _)| c.todo_id as i64).collect();
    let ops: Vec<&str> = done.iter().map(|(c, _)| c.op.as_str()).collect();
    let users: Vec<&str> = done.iter().map(|(c, _)| c.user.as_str()).collect();
    let (statuses, reasons): (Vec<&str>, Vec<Option<&str>>) =
        done.iter().map(|(_, o)| stored_outcome(*o)).unzip();
    let recorded = tx
        .execute(&stmt, &[&ids, &targets, &ops, &users, &statuses, &reasons])
        .await?;
    if recorded as usize != done.len() {
        return Err(StoreError::Raced);
    }
    Ok(())
}

/// Apply a run of todo commands (create, update, delete) in four round
/// trips however long it is: read every todo they name (`FOR UPDATE`) and
/// every category they put a todo in (`FOR KEY SHARE`), in id order; decide
/// each command in turn on those facts as the earlier ones left them; write
/// each touched todo's end state, deletes in one statement and the rest in
/// one upsert. Each command's outcome is what [`apply`] would have decided.
async fn apply_todos(
    tx: &Transaction<'_>,
    cmds: &[TodoCommand],
    run: &[usize],
    outcomes: &mut [Option<Outcome>],
    changed: &mut Changed,
) -> Result<(), StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    let mut todo_ids: Vec<i64> = run.iter().map(|&i| cmds[i].todo_id as i64).collect();
    todo_ids.sort_unstable();
    todo_ids.dedup();
    let rows = tx
        .query_typed(
            &format!("SELECT {COLUMNS} FROM todos WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
            &[(&todo_ids, Type::INT8_ARRAY)],
        )
        .await?;
    // Every named id, present or not: the facts as the run goes on.
    let mut todos: HashMap<u64, Option<Todo>> =
        todo_ids.iter().map(|&id| (id as u64, None)).collect();
    for r in rows {
        let todo = todo_from(&r);
        todos.insert(todo.id, Some(todo));
    }
    let mut category_ids: Vec<i64> = run
        .iter()
        .filter_map(|&i| cmds[i].needs().category)
        .map(|id| id as i64)
        .collect();
    category_ids.sort_unstable();
    category_ids.dedup();
    let mut categories = HashMap::new();
    if !category_ids.is_empty() {
        let sql = format!(
            "SELECT {CATEGORY_COLUMNS} FROM categories WHERE id = ANY($1) ORDER BY id FOR KEY SHARE"
        );
        for r in tx
            .query_typed(&sql, &[(&category_ids, Type::INT8_ARRAY)])
            .await?
        {
            let category = category_from(&r);
            categories.insert(category.id, category);
        }
    }
    let mut written = HashMap::new();
    for &i in run {
        let cmd = &cmds[i];
        let facts = Facts {
            todo: todos.get(&cmd.todo_id).and_then(Option::as_ref),
            category: cmd.needs().category.and_then(|id| categories.get(&id)),
            name_taken: false,
            username_taken: false,
            category_todos: 0,
        };
        outcomes[i] = Some(match decide(&facts, cmd) {
            Ok(Change::Insert(todo) | Change::Update(todo)) => {
                written.insert(todo.id, Kept::Put);
                todos.insert(todo.id, Some(todo));
                Outcome::Applied
            }
            Ok(Change::Delete(id)) => {
                written.insert(id, Kept::Deleted);
                todos.insert(id, None);
                Outcome::Applied
            }
            // A todo command changes a todo only; any other change is a
            // model bug, written by the one-command path so nothing is lost.
            Ok(other) => write(tx, other, changed).await?,
            Err(rejection) => Outcome::Rejected(rejection),
        });
    }
    if written.is_empty() {
        return Ok(());
    }
    let version = changed.version(tx).await?;
    let (put, deleted) = split(&written);
    if !deleted.is_empty() {
        delete_todos(tx, &deleted).await?;
    }
    if !put.is_empty() {
        let rows: Vec<&Todo> = put
            .iter()
            .filter_map(|id| todos.get(&(*id as u64)).and_then(Option::as_ref))
            .collect();
        upsert_todos(tx, &rows, version).await?;
    }
    changed.todos.extend(written);
    Ok(())
}

async fn delete_todos(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    tx.execute_typed(
        "DELETE FROM todos WHERE id = ANY($1)",
        &[(&ids, Type::INT8_ARRAY)],
    )
    .await?;
    Ok(())
}

/// Insert `rows`, or overwrite the rows of their ids, in one statement,
/// stamped with the batch's `version` (one write per row: a later stamp
/// would be a second version of each row in every index).
async fn upsert_todos(
    tx: &Transaction<'_>,
    rows: &[&Todo],
    version: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO todos ({COLUMNS}, version)
             SELECT *, $10 FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[],
                                      $5::BOOLEAN[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[],
                                      $9::BOOLEAN[])
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, title = EXCLUDED.title,
                description = EXCLUDED.description, completed = EXCLUDED.completed,
                created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
                category_id = EXCLUDED.category_id, public = EXCLUDED.public,
                version = EXCLUDED.version"
        ))
        .await?;
    let ids: Vec<i64> = rows.iter().map(|t| t.id as i64).collect();
    let owners: Vec<&str> = rows.iter().map(|t| t.owner.as_str()).collect();
    let titles: Vec<&str> = rows.iter().map(|t| t.title.as_str()).collect();
    let descriptions: Vec<&str> = rows.iter().map(|t| t.description.as_str()).collect();
    let completed: Vec<bool> = rows.iter().map(|t| t.completed).collect();
    let created: Vec<i64> = rows.iter().map(|t| t.created_at as i64).collect();
    let updated: Vec<i64> = rows.iter().map(|t| t.updated_at as i64).collect();
    let category: Vec<Option<i64>> = rows
        .iter()
        .map(|t| t.category_id.map(|c| c as i64))
        .collect();
    let public: Vec<bool> = rows.iter().map(|t| t.public).collect();
    tx.execute(
        &stmt,
        &[
            &ids,
            &owners,
            &titles,
            &descriptions,
            &completed,
            &created,
            &updated,
            &category,
            &public,
            &version,
        ],
    )
    .await?;
    Ok(())
}

/// Look up the facts a command of users or categories needs, decide, and
/// write the change (todo commands go through [`apply_todos`]).
async fn apply(
    tx: &Transaction<'_>,
    cmd: &TodoCommand,
    changed: &mut Changed,
) -> Result<Outcome, StoreError> {
    let needs = cmd.needs();
    // A category being renamed or deleted is locked before its name or its
    // todos are looked at, so no todo can enter it meanwhile.
    let category = match needs.category {
        Some(id) => row(
            tx,
            &format!("SELECT {CATEGORY_COLUMNS} FROM categories WHERE id = $1 FOR UPDATE"),
            id,
        )
        .await?
        .map(|r| category_from(&r)),
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
        todo: None,
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
        Change::Insert(t) | Change::Update(t) => {
            let version = changed.version(tx).await?;
            upsert_todos(tx, &[&t], version).await?;
            changed.todos.insert(t.id, Kept::Put);
        }
        Change::Delete(id) => {
            delete_todos(tx, &[id as i64]).await?;
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
    /// The batch's snapshot version, taken (with its row's lock) before the
    /// first todo is written.
    version: Option<i64>,
    todos: HashMap<u64, Kept>,
    users: Vec<i64>,
    categories: HashMap<u64, Kept>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.todos.is_empty() && self.users.is_empty() && self.categories.is_empty()
    }

    /// The batch's version, taken now if it was not yet.
    async fn version(&mut self, tx: &Transaction<'_>) -> Result<i64, StoreError> {
        if let Some(version) = self.version {
            return Ok(version);
        }
        let version = super::next_version(tx).await?;
        self.version = Some(version);
        Ok(version)
    }

    /// Stamp every changed row not written with `version` already (users and
    /// categories), and tombstones for the deleted,
    /// none for the present (a put removes an older tombstone of its id, so
    /// an id is never both in the feed's puts and its deletes).
    async fn stamp(&self, tx: &Transaction<'_>, version: i64) -> Result<(), StoreError> {
        for (table, kind, rows) in [
            ("todos", "todo", &self.todos),
            ("categories", "category", &self.categories),
        ] {
            let (put, deleted) = split(rows);
            if !put.is_empty() {
                if table != "todos" {
                    tx.execute_typed(
                        &format!("UPDATE {table} SET version = $1 WHERE id = ANY($2)"),
                        &[(&version, Type::INT8), (&put, Type::INT8_ARRAY)],
                    )
                    .await?;
                }
                tx.execute_typed(
                    "DELETE FROM deleted WHERE kind = $1 AND id = ANY($2)",
                    &[(&kind, Type::TEXT), (&put, Type::INT8_ARRAY)],
                )
                .await?;
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
            tx.execute_typed(
                "UPDATE users SET version = $1 WHERE id = ANY($2)",
                &[(&version, Type::INT8), (&self.users, Type::INT8_ARRAY)],
            )
            .await?;
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
