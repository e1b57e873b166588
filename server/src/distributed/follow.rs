//! Keeping the read model current on the distributed path.
//!
//! ```text
//! start:  pg::load_all          -> the whole state, under one version
//! then:   wake (a core saw a newer snapshot, or FALLBACK_POLL passed)
//!         pg::changes_since(v)  -> rows and tombstones stamped after v
//!         -> applied under the model's write lock, version moved to the new v
//! ```
//!
//! The worker stamps every row it changes with the snapshot version of its
//! transaction, so "what changed since v" is an indexed range read; the
//! snapshot version's row lock orders those transactions, so a reader that
//! sees version v sees every change up to v (`todo_store::pg`). Wake-ups
//! come from the cores' Redis subscriptions (each new snapshot); the poll is
//! there for when Redis is away. PostgreSQL away: keep the last state (still
//! served), retry with backoff.

use std::sync::Arc;
use std::time::Duration;

use todo_model::Change;
use todo_store::pg;

use crate::feed::{Changes, Fanout, Position, TodoChange};
use crate::read_model::{ReadModel, Shared};

/// Changes are fetched at least this often without a wake-up.
const FALLBACK_POLL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub async fn run(
    pool: deadpool_postgres::Pool,
    model: Shared,
    wake: Arc<tokio::sync::Notify>,
    feeds: Fanout,
) {
    let mut backoff = Duration::from_millis(50);
    // The first load.
    loop {
        match load(&pool).await {
            Ok(loaded) => {
                eprintln!(
                    "todo-server: read model loaded: {} todos at version {}",
                    loaded.len(),
                    loaded.version()
                );
                let version = loaded.version();
                model.replace(loaded);
                feeds.send(Changes::start(version));
                break;
            }
            Err(e) => {
                eprintln!("todo-server: loading the read model: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    backoff = Duration::from_millis(50);
    loop {
        let _ = tokio::time::timeout(FALLBACK_POLL, wake.notified()).await;
        match catch_up(&pool, &model, &feeds).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                eprintln!("todo-server: following PostgreSQL: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn load(pool: &deadpool_postgres::Pool) -> Result<ReadModel, todo_store::StoreError> {
    let mut client = pool.get().await?;
    let state = pg::load_all(&mut client).await?;
    let model = ReadModel::from_rows(state.version, state.categories, state.users, state.todos);
    Ok(model)
}

/// Fetch and apply what changed since the model's version.
async fn catch_up(
    pool: &deadpool_postgres::Pool,
    model: &Shared,
    feeds: &Fanout,
) -> Result<(), todo_store::StoreError> {
    let since = model.version();
    let mut client = pool.get().await?;
    let changes = pg::changes_since(&mut client, since).await?;
    if changes.version < since {
        // The database is older than what the model holds (it was replaced
        // or restored): start again from what it has.
        drop(client);
        eprintln!(
            "todo-server: PostgreSQL is at version {} below the read model's {since}; reloading",
            changes.version
        );
        let loaded = load(pool).await?;
        let version = loaded.version();
        model.replace(loaded);
        // A feed cannot follow across this: its subscribers reset.
        feeds.send(Changes::start(version));
        return Ok(());
    }
    if changes.version == since {
        return Ok(());
    }
    let mut m = model.write();
    // Each todo's change, at its stamp: before it from the model.
    let put = changes.todos.iter().map(|t| t.id);
    let stamped = changes.todo_stamps.iter().copied().zip(put);
    let deleted = changes.deleted_todo_stamps.iter().copied();
    let deleted = deleted.zip(changes.deleted_todos.iter().copied());
    let mut todos: Vec<TodoChange> = stamped
        .chain(deleted)
        .map(|(version, id)| TodoChange {
            at: Position { version, id },
            before: m.todo(id).cloned(),
            after: None,
        })
        .collect();
    m.put_rows(changes.categories, changes.users, changes.todos);
    // Deletes of todos before deletes of their categories.
    for id in changes.deleted_todos {
        m.apply(Change::Delete(id));
    }
    for id in changes.deleted_categories {
        m.apply(Change::DeleteCategory(id));
    }
    m.set_version(changes.version);
    for change in &mut todos {
        change.after = m.todo(change.at.id).cloned();
    }
    drop(m);
    todos.retain(|c| c.before != c.after);
    todos.sort_unstable_by_key(|c| c.at);
    feeds.send(Changes {
        from: since,
        to: changes.version,
        todos,
    });
    Ok(())
}
