//! The read model's feed (todo-server's follower): everything at a version
//! ([`load_all`]), then what changed after it ([`changes_since`]).
//!
//! Every write transaction that changes anything takes the `snapshot_version`
//! row's lock (UPDATE ... +1) and stamps the rows it changed, and the
//! tombstones of the rows it deleted, with its new version before it commits
//! (`pg/apply.rs`; the seed is one version too). Rows written before versions
//! existed carry 0 and come only with [`load_all`].

use todo_model::{Category, Todo, User};
use tokio_postgres::IsolationLevel;

use super::{category_from, todo_from, user_from, CATEGORY_COLUMNS, COLUMNS, USER_COLUMNS};
use crate::StoreError;

/// The whole committed state at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The snapshot version these rows are the state of.
    pub version: u64,
    /// By id, ascending.
    pub todos: Vec<Todo>,
    pub users: Vec<User>,
    pub categories: Vec<Category>,
}

/// What changed after one version, up to `version`. An id is never both put
/// and deleted in one set (a put removes its id's tombstone), so the deletes
/// and the puts may be applied in either order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The current snapshot version: the set brings a follower to it.
    pub version: u64,
    /// Todos created or changed (their whole rows), by id.
    pub todos: Vec<Todo>,
    /// `todo_stamps[i]`: the version whose transaction last changed
    /// `todos[i]` (the change feed's position, with the id).
    pub todo_stamps: Vec<u64>,
    pub deleted_todos: Vec<u64>,
    /// `deleted_todo_stamps[i]`: the version that deleted `deleted_todos[i]`.
    pub deleted_todo_stamps: Vec<u64>,
    pub users: Vec<User>,
    /// Categories created or renamed.
    pub categories: Vec<Category>,
    pub deleted_categories: Vec<u64>,
}

impl ChangeSet {
    /// Nothing changed after the version asked about.
    pub fn is_empty(&self) -> bool {
        self.todos.is_empty()
            && self.deleted_todos.is_empty()
            && self.users.is_empty()
            && self.categories.is_empty()
            && self.deleted_categories.is_empty()
    }
}

/// Every todo, user and category, and the version they are the state of,
/// read in one REPEATABLE READ READ ONLY transaction (one snapshot). A
/// follower starts here and continues with [`changes_since`]`(state.version)`.
pub async fn load_all(client: &mut tokio_postgres::Client) -> Result<State, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version = current_version(&tx).await?;
    let todos = tx
        .query(&format!("SELECT {COLUMNS} FROM todos ORDER BY id"), &[])
        .await?;
    let users = tx
        .query(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"),
            &[],
        )
        .await?;
    let categories = tx
        .query(
            &format!("SELECT {CATEGORY_COLUMNS} FROM categories ORDER BY id"),
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(State {
        version,
        todos: todos.iter().map(todo_from).collect(),
        users: users.iter().map(user_from).collect(),
        categories: categories.iter().map(category_from).collect(),
    })
}

/// The rows changed after `version` (stamped `> version`), with the current
/// version, read in one REPEATABLE READ READ ONLY transaction. A `version`
/// above the current one (the database was replaced) gives an empty set at
/// the lower version: the follower should [`load_all`] again.
///
/// Why no change is missed: a write transaction takes the `snapshot_version`
/// row's lock when it bumps the version and holds it until it commits, so
/// the transactions that change anything commit one at a time, in version
/// order: the one that made version `v` committed before the one making
/// `v + 1` could even read `v`. This transaction's snapshot sees
/// `snapshot_version = V`, so the writer of `V` had committed when the
/// snapshot was taken, and with it every writer of a version below `V`;
/// none of a version above `V` is visible (it commits its stamps and its
/// bump together). So the rows stamped in `(version, V]` are exactly the
/// changes between the two states, and the next call, from `V`, continues
/// where this one ended. A row changed twice carries only its last version,
/// which is what a follower needs: the row as it is at `V`.
pub async fn changes_since(
    client: &mut tokio_postgres::Client,
    version: u64,
) -> Result<ChangeSet, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let now = current_version(&tx).await?;
    if now <= version {
        tx.commit().await?;
        return Ok(ChangeSet {
            version: now,
            ..ChangeSet::default()
        });
    }
    // `<= $2` holds anyway within this snapshot; it says what the set is.
    let range: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&(version as i64), &(now as i64)];
    let todos = tx
        .query(
            &format!(
                "SELECT {COLUMNS}, version FROM todos WHERE version > $1 AND version <= $2 ORDER BY id"
            ),
            &range,
        )
        .await?;
    let users = tx
        .query(
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE version > $1 AND version <= $2 ORDER BY id"
            ),
            &range,
        )
        .await?;
    let categories = tx
        .query(
            &format!("SELECT {CATEGORY_COLUMNS} FROM categories WHERE version > $1 AND version <= $2 ORDER BY id"),
            &range,
        )
        .await?;
    let deleted = tx
        .query(
            "SELECT kind, id, version FROM deleted WHERE version > $1 AND version <= $2 ORDER BY kind, id",
            &range,
        )
        .await?;
    tx.commit().await?;
    let mut set = ChangeSet {
        version: now,
        todos: todos.iter().map(todo_from).collect(),
        todo_stamps: todos.iter().map(|r| stamp(r, STAMP)).collect(),
        users: users.iter().map(user_from).collect(),
        categories: categories.iter().map(category_from).collect(),
        ..ChangeSet::default()
    };
    for row in &deleted {
        let id = row.get::<_, i64>(1) as u64;
        match row.get::<_, &str>(0) {
            "todo" => {
                set.deleted_todos.push(id);
                set.deleted_todo_stamps.push(stamp(row, 2));
            }
            _ => set.deleted_categories.push(id),
        }
    }
    Ok(set)
}

/// Where the stamp is in a row of `SELECT {COLUMNS}, version`.
const STAMP: usize = 9;

fn stamp(row: &tokio_postgres::Row, at: usize) -> u64 {
    row.get::<_, i64>(at) as u64
}

async fn current_version(tx: &tokio_postgres::Transaction<'_>) -> Result<u64, StoreError> {
    let version: i64 = tx
        .query_one("SELECT version FROM snapshot_version", &[])
        .await?
        .get(0);
    Ok(version as u64)
}
