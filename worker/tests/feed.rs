//! The batch transaction (todo_store::pg::apply_batch) against real
//! PostgreSQL, without Kafka: version stamps, tombstones, the follower's
//! feed (changes_since) and initial load (load_all), and two workers'
//! transactions racing on one name or one category.

use std::collections::BTreeMap;

use todo_model::{Category, Fields, Op, Outcome, Rejection, Todo, TodoCommand, User};
use todo_store::pg::{self, ChangeSet, State};
use todo_testkit::services::{Commands, Env};

async fn database(seed: usize) -> (Env, deadpool_postgres::Pool) {
    let env = Env::new(1).await;
    let pool = pg::pool(&env.database_url, 4).unwrap();
    let seeded = pg::migrate_and_seed(&mut pool.get().await.unwrap(), seed)
        .await
        .unwrap();
    assert_eq!(seeded, seed);
    (env, pool)
}

async fn apply(pool: &deadpool_postgres::Pool, cmds: &[TodoCommand]) -> pg::Applied {
    pg::apply_batch(&mut pool.get().await.unwrap(), cmds)
        .await
        .unwrap()
}

async fn load(pool: &deadpool_postgres::Pool) -> State {
    pg::load_all(&mut pool.get().await.unwrap()).await.unwrap()
}

async fn changes(pool: &deadpool_postgres::Pool, since: u64) -> ChangeSet {
    pg::changes_since(&mut pool.get().await.unwrap(), since)
        .await
        .unwrap()
}

/// A follower's copy: the state, by id.
#[derive(Debug, Default, PartialEq)]
struct Copy {
    version: u64,
    todos: BTreeMap<u64, Todo>,
    users: BTreeMap<u64, User>,
    categories: BTreeMap<u64, Category>,
}

impl Copy {
    fn of(state: &State) -> Copy {
        Copy {
            version: state.version,
            todos: state.todos.iter().map(|t| (t.id, t.clone())).collect(),
            users: state.users.iter().map(|u| (u.id, u.clone())).collect(),
            categories: state.categories.iter().map(|c| (c.id, c.clone())).collect(),
        }
    }

    fn follow(&mut self, set: &ChangeSet) {
        for id in &set.deleted_todos {
            self.todos.remove(id);
        }
        for id in &set.deleted_categories {
            self.categories.remove(id);
        }
        self.todos
            .extend(set.todos.iter().map(|t| (t.id, t.clone())));
        self.users
            .extend(set.users.iter().map(|u| (u.id, u.clone())));
        self.categories
            .extend(set.categories.iter().map(|c| (c.id, c.clone())));
        self.version = set.version;
    }
}

fn titled(title: &str, category: Option<Option<u64>>) -> Fields {
    Fields {
        title: Some(title.into()),
        category_id: category,
        ..Fields::default()
    }
}

#[tokio::test]
async fn the_feed_brings_a_follower_to_every_version() {
    let (_env, pool) = database(50).await;
    let start = load(&pool).await;
    assert_eq!(start.version, 1, "the seed is one version");
    assert_eq!(start.todos.len(), 50);
    assert!(start.todos.windows(2).all(|w| w[0].id < w[1].id));
    assert!(changes(&pool, 1).await.is_empty());
    // The seed's rows carry its version: a follower from 0 gets them.
    assert_eq!(changes(&pool, 0).await.todos, start.todos);
    let mut copy = Copy::of(&start);

    let mut cmds = Commands::new(21);
    let carol = cmds.register("carol");
    let home = cmds.category(Op::CreateCategory, None, "carol", Some("home"));
    let attic = cmds.category(Op::CreateCategory, None, "carol", Some("attic"));
    let broom = cmds.make(
        Op::Create,
        None,
        "carol",
        titled("broom", Some(Some(home.todo_id))),
    );
    let mop = cmds.make(
        Op::Create,
        None,
        "carol",
        titled("mop", Some(Some(attic.todo_id))),
    );
    let gone = cmds.create("carol", "gone at once");
    let first = vec![
        carol.clone(),
        home.clone(),
        attic.clone(),
        broom.clone(),
        mop.clone(),
        gone.clone(),
        cmds.make(Op::Delete, Some(gone.todo_id), "carol", Fields::default()),
        // Redelivered within the batch: applied once.
        broom.clone(),
    ];
    let applied = apply(&pool, &first).await;
    assert_eq!(
        applied.outcomes,
        [vec![Some(Outcome::Applied); 7], vec![None]].concat()
    );
    let v2 = applied.snapshot.expect("changed").version();
    assert_eq!(v2, 2);
    let set = changes(&pool, 1).await;
    assert_eq!(set.version, 2);
    assert_eq!(
        set.todos.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![broom.todo_id, mop.todo_id]
    );
    assert_eq!(set.todos[0].category_id, Some(home.todo_id));
    assert_eq!(
        set.deleted_todos,
        vec![gone.todo_id],
        "created and deleted: a tombstone only"
    );
    assert_eq!(set.users.len(), 1);
    assert_eq!(set.users[0].username, "carol");
    assert_eq!(set.categories.len(), 2);
    copy.follow(&set);
    assert_eq!(copy, Copy::of(&load(&pool).await));

    // The same batch again: nothing happens, no version.
    let again = apply(&pool, &first).await;
    assert!(again.outcomes.iter().all(Option::is_none));
    assert!(again.snapshot.is_none());
    assert!(changes(&pool, 2).await.is_empty());

    // Renames, moves, deletes; one rejected command changes nothing.
    let second = vec![
        cmds.category(
            Op::UpdateCategory,
            Some(home.todo_id),
            "carol",
            Some("house"),
        ),
        cmds.make(
            Op::Update,
            Some(mop.todo_id),
            "carol",
            Fields {
                category_id: Some(None),
                completed: Some(true),
                ..Fields::default()
            },
        ),
        cmds.category(Op::DeleteCategory, Some(attic.todo_id), "carol", None),
        cmds.category(Op::DeleteCategory, Some(home.todo_id), "carol", None),
        cmds.make(
            Op::Delete,
            Some(start.todos[0].id),
            "seed",
            Fields::default(),
        ),
    ];
    let applied = apply(&pool, &second).await;
    assert_eq!(
        applied.outcomes,
        vec![
            Some(Outcome::Applied),
            Some(Outcome::Applied),
            Some(Outcome::Applied),
            Some(Outcome::Rejected(Rejection::CategoryNotEmpty)),
            Some(Outcome::Applied),
        ]
    );
    let set = changes(&pool, 2).await;
    assert_eq!(set.version, 3);
    assert_eq!(set.categories.len(), 1);
    assert_eq!(set.categories[0].name, "house");
    assert_eq!(set.deleted_categories, vec![attic.todo_id]);
    assert_eq!(set.deleted_todos, vec![start.todos[0].id]);
    assert_eq!(set.todos.len(), 1);
    assert_eq!(
        (set.todos[0].completed, set.todos[0].category_id),
        (true, None)
    );
    copy.follow(&set);
    let now = load(&pool).await;
    assert_eq!(copy, Copy::of(&now));

    // A follower that skipped a version catches up in one set.
    let mut late = Copy::of(&start);
    late.follow(&changes(&pool, 1).await);
    assert_eq!(late, copy);

    // Stored outcomes read back as typed.
    let db = pool.get().await.unwrap();
    assert_eq!(
        pg::command_outcome(&db, second[3].command_id)
            .await
            .unwrap(),
        Some(Outcome::Rejected(Rejection::CategoryNotEmpty))
    );
    assert_eq!(
        pg::user_by_name(&db, "carol").await.unwrap(),
        Some(set_user(&now, "carol"))
    );
    assert_eq!(pg::user_by_name(&db, "nobody").await.unwrap(), None);
    assert_eq!(
        pg::category(&db, home.todo_id)
            .await
            .unwrap()
            .map(|c| c.name),
        Some("house".to_string())
    );
    assert_eq!(pg::category(&db, attic.todo_id).await.unwrap(), None);
    assert_eq!(
        pg::todo(&db, broom.todo_id)
            .await
            .unwrap()
            .and_then(|t| t.category_id),
        Some(home.todo_id)
    );

    // A deleted id put again (only a forged command does that) leaves the
    // tombstones: the feed never has an id in both lists.
    let mut revive = cmds.create("carol", "back");
    revive.todo_id = gone.todo_id;
    apply(&pool, &[revive]).await;
    let set = changes(&pool, 1).await;
    assert!(set.todos.iter().any(|t| t.id == gone.todo_id));
    assert!(!set.deleted_todos.contains(&gone.todo_id));
}

fn set_user(state: &State, name: &str) -> User {
    state
        .users
        .iter()
        .find(|u| u.username == name)
        .cloned()
        .unwrap()
}

/// `a` and `b`, each in its own transaction, at the same time.
async fn race(
    pool: &deadpool_postgres::Pool,
    a: TodoCommand,
    b: TodoCommand,
) -> (pg::Applied, pg::Applied) {
    let (a, b) = ([a], [b]);
    tokio::join!(apply(pool, &a), apply(pool, &b))
}

/// Two workers' transactions at once on the same facts: the locks make one
/// wait for the other, so the second decides on the first's result instead
/// of failing on a constraint or deciding on stale facts.
#[tokio::test]
async fn racing_batches_decide_on_the_truth() {
    let (_env, pool) = database(0).await;
    let mut cmds = Commands::new(22);
    for round in 0..20 {
        // One name, two ids: two partitions, two workers.
        let name = format!("dave{round}");
        let (a, b) = (cmds.register(&name), cmds.register(&name));
        let (x, y) = race(&pool, a, b).await;
        let mut got = [x.outcomes[0], y.outcomes[0]];
        got.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            got,
            [
                Some(Outcome::Applied),
                Some(Outcome::Rejected(Rejection::UsernameTaken))
            ]
        );

        // A category's delete against a todo put into it.
        let shelf = cmds.category(Op::CreateCategory, None, &name, Some("shelf"));
        let twin = cmds.category(Op::CreateCategory, None, &name, Some("shelf"));
        let (x, y) = race(&pool, shelf.clone(), twin).await;
        let mut got = [x.outcomes[0], y.outcomes[0]];
        got.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            got,
            [
                Some(Outcome::Applied),
                Some(Outcome::Rejected(Rejection::NameTaken))
            ]
        );
        let shelf_id = if x.outcomes[0] == Some(Outcome::Applied) {
            shelf.todo_id
        } else {
            // The twin won: its id is the category.
            let db = pool.get().await.unwrap();
            let row = db
                .query_one("SELECT id FROM categories WHERE owner = $1", &[&name])
                .await
                .unwrap();
            row.get::<_, i64>(0) as u64
        };
        let put = cmds.make(
            Op::Create,
            None,
            &name,
            titled("book", Some(Some(shelf_id))),
        );
        let delete = cmds.category(Op::DeleteCategory, Some(shelf_id), &name, None);
        let (x, y) = race(&pool, put.clone(), delete).await;
        let db = pool.get().await.unwrap();
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM categories WHERE id = $1",
                &[&(shelf_id as i64)],
            )
            .await
            .unwrap()
            .get(0);
        match (x.outcomes[0], y.outcomes[0]) {
            (Some(Outcome::Applied), Some(Outcome::Rejected(Rejection::CategoryNotEmpty))) => {
                assert_eq!(left, 1)
            }
            (Some(Outcome::Rejected(Rejection::UnknownCategory)), Some(Outcome::Applied)) => {
                assert_eq!(left, 0)
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// A database made before users and categories (the first schema's todos
/// table) migrates at the next start (its rows public, docs/api.md "Private
/// todos"), and later starts do not wait for readers of todos (no ACCESS
/// EXCLUSIVE lock once the columns exist).
#[tokio::test]
async fn an_old_database_migrates_and_later_starts_do_not_lock_readers_out() {
    let env = Env::new(1).await;
    let db = env.db().await;
    db.batch_execute(
        "CREATE TABLE todos (
             id          BIGINT PRIMARY KEY,
             owner       TEXT    NOT NULL,
             title       TEXT    NOT NULL,
             description TEXT    NOT NULL DEFAULT '',
             completed   BOOLEAN NOT NULL DEFAULT false,
             created_at  BIGINT  NOT NULL,
             updated_at  BIGINT  NOT NULL
         );
         INSERT INTO todos (id, owner, title, created_at, updated_at)
             VALUES (1, 'old', 'from before', 1000, 1000);",
    )
    .await
    .unwrap();
    let pool = pg::pool(&env.database_url, 2).unwrap();
    let seeded = pg::migrate_and_seed(&mut pool.get().await.unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(seeded, 0, "a database with todos is not seeded");
    let state = load(&pool).await;
    assert_eq!(state.todos.len(), 1);
    assert_eq!(state.todos[0].category_id, None);
    // Published under the old rules, when every reader saw every todo: it
    // stays public, and is in the snapshot.
    assert!(
        state.todos[0].public,
        "a row from before visibility is public"
    );
    let snapshot = pg::current_snapshot(&pool.get().await.unwrap())
        .await
        .unwrap();
    assert_eq!(snapshot.ids(), &[1]);
    // A row written from now on that does not say is private.
    db.batch_execute(
        "INSERT INTO todos (id, owner, title, created_at, updated_at)
             VALUES (2, 'new', 'unsaid', 2000, 2000)",
    )
    .await
    .unwrap();
    let public: bool = db
        .query_one("SELECT public FROM todos WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!public, "the column's default is private");
    db.batch_execute("DELETE FROM todos WHERE id = 2")
        .await
        .unwrap();

    // The old row can be put in a category now.
    let mut cmds = Commands::new(23);
    let box_ = cmds.category(Op::CreateCategory, None, "old", Some("box"));
    let move_in = cmds.make(
        Op::Update,
        Some(1),
        "old",
        Fields {
            category_id: Some(Some(box_.todo_id)),
            ..Fields::default()
        },
    );
    let applied = apply(&pool, &[box_.clone(), move_in]).await;
    assert_eq!(applied.outcomes, vec![Some(Outcome::Applied); 2]);
    let set = changes(&pool, state.version).await;
    assert_eq!(set.todos[0].category_id, Some(box_.todo_id));

    // A reader holds todos open (a follower's load_all); the next start
    // migrates beside it.
    db.batch_execute("BEGIN; SELECT count(*) FROM todos;")
        .await
        .unwrap();
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        pg::migrate_and_seed(&mut pool.get().await.unwrap(), 100).await
    })
    .await
    .expect("the migration waited for a reader");
    assert_eq!(again.unwrap(), 0);
    db.batch_execute("COMMIT").await.unwrap();
}
