//! The planner's choices for the queries todo-store runs, on a database with
//! realistic statistics: 50,000 todos of 500 owners, 5,000 users, categories
//! and tombstones, 50,000 processed commands, then ANALYZE. No planner
//! setting is forced (no `enable_seqscan = off`).
//!
//! The plans are the real statements' own: every connection of the pool
//! under test loads `auto_explain` (PostgreSQL's contrib) with
//! `log_min_duration = 0` and `log_level = notice`, so the EXPLAIN of each
//! statement the store functions run, nested ones (the foreign key's checks)
//! included, comes back to the client as a notice. Each list query and
//! each feed and fact query must be an index scan; no statement may scan a
//! whole table other than the one-row `snapshot_version`. The list queries
//! are checked with custom plans (a statement's first runs) and with the
//! generic plan PostgreSQL may switch a cached statement to later.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use todo_model::{Fields, Op};
use todo_store::pg::{self, ListOrder, ListTodos};
use todo_testkit::services::{Commands, Env};
use tokio_postgres::AsyncMessage;

/// Tables that grow: a sequential scan of one is a finding.
const BIG: [&str; 5] = [
    "todos",
    "users",
    "categories",
    "deleted",
    "processed_commands",
];

/// A deadpool connector whose connections explain every statement into
/// `plans`.
struct Explaining {
    plans: Arc<Mutex<Vec<String>>>,
    /// `plan_cache_mode` for the session.
    plan_cache_mode: &'static str,
}

type Connected =
    Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>;

impl deadpool_postgres::Connect for Explaining {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Pin<Box<dyn Future<Output = Connected> + Send + '_>> {
        let config = config.clone();
        let plans = self.plans.clone();
        Box::pin(async move {
            let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
            let task = tokio::spawn(async move {
                while let Some(Ok(message)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await
                {
                    if let AsyncMessage::Notice(n) = message {
                        plans.lock().unwrap().push(n.message().to_string());
                    }
                }
            });
            client
                .batch_execute(&format!(
                    "LOAD 'auto_explain';
                     SET auto_explain.log_min_duration = 0;
                     SET auto_explain.log_level = notice;
                     SET auto_explain.log_nested_statements = on;
                     SET plan_cache_mode = {}",
                    self.plan_cache_mode
                ))
                .await?;
            Ok((client, task))
        })
    }
}

fn explaining_pool(
    env: &Env,
    plan_cache_mode: &'static str,
) -> (deadpool_postgres::Pool, Arc<Mutex<Vec<String>>>) {
    let plans = Arc::new(Mutex::new(Vec::new()));
    let manager = deadpool_postgres::Manager::from_connect(
        env.database_url.parse().unwrap(),
        Explaining {
            plans: plans.clone(),
            plan_cache_mode,
        },
        deadpool_postgres::ManagerConfig::default(),
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    (pool, plans)
}

/// One explained statement: its text and its plan.
struct Plan {
    query: String,
    plan: String,
}

fn parse(notice: &str) -> Option<Plan> {
    let (_, rest) = notice.split_once("Query Text: ")?;
    // The plan starts at the first line that is a plan node (the query
    // text may span lines).
    let lines: Vec<&str> = rest.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("(cost="))
        .unwrap_or(lines.len());
    Some(Plan {
        query: lines[..at].join(" "),
        plan: lines[at..].join("\n"),
    })
}

/// The scan nodes of `plan` on the big tables.
fn big_scans(plan: &str) -> Vec<&str> {
    plan.lines()
        .map(|l| l.trim().trim_start_matches("->").trim())
        .filter(|l| {
            l.contains("Scan")
                && BIG
                    .iter()
                    .any(|t| l.contains(&format!(" on {t} ")) || l.ends_with(&format!(" on {t}")))
        })
        .collect()
}

/// Check every plan; the statements whose text contains each of `must_see`.
fn check(plans: &[String], must_see: &[&str]) {
    let plans: Vec<Plan> = plans.iter().filter_map(|n| parse(n)).collect();
    if std::env::var_os("SHOW_PLANS").is_some() {
        for p in &plans {
            eprintln!("{}\n{}\n", p.query, p.plan);
        }
    }
    assert!(!plans.is_empty(), "auto_explain sent no plans");
    for p in &plans {
        let scans = big_scans(&p.plan);
        for scan in &scans {
            assert!(
                !scan.starts_with("Seq Scan"),
                "a whole table is scanned:\n{}\n{}",
                p.query,
                p.plan
            );
        }
        if !scans.is_empty() {
            assert!(
                p.plan.contains("Index"),
                "no index:\n{}\n{}",
                p.query,
                p.plan
            );
        }
    }
    for needle in must_see {
        let seen: Vec<&Plan> = plans.iter().filter(|p| p.query.contains(needle)).collect();
        assert!(!seen.is_empty(), "no plan for a statement with {needle:?}");
        for p in seen {
            assert!(
                !big_scans(&p.plan).is_empty(),
                "{needle:?} reads no table?\n{}\n{}",
                p.query,
                p.plan
            );
        }
    }
}

async fn load(env: &Env) {
    let pool = pg::pool(&env.database_url, 1).unwrap();
    let mut client = pool.get().await.unwrap();
    pg::migrate_and_seed(&mut client, 0).await.unwrap();
    // Ids are time-ordered like real ones; category g belongs to owner
    // g % 500, and a quarter of the todos are in one of their owner's.
    client
        .batch_execute(
            "INSERT INTO users (id, username, password_hash, created_at, version)
               SELECT g, 'user' || g, 'hash', 1700000000000 + g, 1 + g / 10
               FROM generate_series(0::BIGINT, 4999) g;
             INSERT INTO categories (id, owner, name, created_at, updated_at, version)
               SELECT g, 'user' || (g % 500), 'category ' || g, 1700000000000 + g,
                      1700000000000 + g, 1 + g / 10
               FROM generate_series(0::BIGINT, 4999) g;
             INSERT INTO todos (id, owner, title, description, completed, created_at,
                                updated_at, category_id, public, version)
               SELECT (1700000000000 + g * 60000) << 22, 'user' || (g % 500), md5(g::text),
                      'todo number ' || g, g % 3 = 0, 1700000000000 + g * 60000,
                      1700000000000 + g * 60000 + (g * 7919 % 86400) * 1000,
                      CASE WHEN g % 4 = 0 THEN g % 5000 END, g % 3 <> 1, 1 + g / 100
               FROM generate_series(1::BIGINT, 50000) g;
             INSERT INTO deleted (kind, id, version)
               SELECT 'todo', g, 1 + g / 10 FROM generate_series(1, 5000) g;
             INSERT INTO processed_commands (command_id, todo_id, op, user_name, outcome)
               SELECT g, g, 'create', 'user' || (g % 500), 'applied'
               FROM generate_series(1::BIGINT, 50000) g;
             UPDATE snapshot_version SET version = 501;
             ANALYZE;",
        )
        .await
        .unwrap();
}

/// A todo id from the middle of the loaded ones, and its row.
async fn middle(pool: &deadpool_postgres::Pool) -> todo_model::Todo {
    let client = pool.get().await.unwrap();
    let id: i64 = client
        .query_one("SELECT id FROM todos ORDER BY id OFFSET 25000 LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    pg::todo(&client, id as u64).await.unwrap().unwrap()
}

/// Every list shape of the API, first pages and deeper ones.
fn list_queries(mid: &todo_model::Todo) -> Vec<ListTodos<'_>> {
    let base = ListTodos::default();
    // A user's own list (`mine=true`): her private todos too.
    let owner = ListTodos {
        owner: Some("user7"),
        completed: Some(false),
        public_only: false,
        ..base
    };
    let day = 86_400_000;
    vec![
        // (a) a user's open todos, newest first, and (b) a deeper page.
        owner,
        ListTodos {
            order: ListOrder::Created {
                desc: true,
                after: Some(mid.id),
            },
            ..owner
        },
        // A user's todos whatever their state, oldest first.
        ListTodos {
            owner: Some("user7"),
            order: ListOrder::Created {
                desc: false,
                after: Some(mid.id),
            },
            ..base
        },
        // (c) one category's todos.
        ListTodos {
            category_id: Some(42),
            ..base
        },
        ListTodos {
            category_id: Some(42),
            order: ListOrder::Created {
                desc: true,
                after: Some(mid.id),
            },
            ..base
        },
        // (d) recently updated, and a page after a row.
        ListTodos {
            order: ListOrder::Updated {
                desc: true,
                after: None,
            },
            ..base
        },
        ListTodos {
            order: ListOrder::Updated {
                desc: true,
                after: Some((mid.updated_at, mid.id)),
            },
            ..base
        },
        ListTodos {
            order: ListOrder::Updated {
                desc: false,
                after: Some((mid.updated_at, mid.id)),
            },
            ..base
        },
        // (e) by title, both ways.
        ListTodos {
            order: ListOrder::Title {
                desc: false,
                after: Some((&mid.title, mid.id)),
            },
            ..base
        },
        ListTodos {
            order: ListOrder::Title {
                desc: true,
                after: Some((&mid.title, mid.id)),
            },
            ..base
        },
        // (f) created in a day, and after a time.
        ListTodos {
            created_after: Some(mid.created_at),
            created_before: Some(mid.created_at + day),
            ..base
        },
        ListTodos {
            created_after: Some(mid.created_at - day),
            ..base
        },
        // The newest of all (the snapshot's query).
        base,
    ]
}

#[tokio::test]
async fn every_query_is_an_index_scan() {
    let env = Env::new(1).await;
    load(&env).await;

    // The list queries, with custom and with generic plans.
    for mode in ["force_custom_plan", "force_generic_plan"] {
        let (pool, plans) = explaining_pool(&env, mode);
        let mid = middle(&pool).await;
        let client = pool.get().await.unwrap();
        for q in list_queries(&mid) {
            // Twice: the second run of a cached statement is the one a
            // generic plan would serve.
            for _ in 0..2 {
                pg::list_todos(&client, &q).await.unwrap();
            }
        }
        drop(client);
        let plans = plans.lock().unwrap().clone();
        check(
            &plans,
            &[
                "owner = $1 AND completed = $2",
                "category_id = $1",
                "ORDER BY updated_at DESC",
                "ORDER BY updated_at, id",
                r#"ORDER BY title COLLATE "C", id"#,
                "created_at > $1 AND created_at < $2",
            ],
        );
        eprintln!("{mode}: {} list plans checked", plans.len());
    }

    // The worker's batch: every fact query and every kind of write, and the
    // follower's feed and lookups.
    let (pool, plans) = explaining_pool(&env, "auto");
    let mut cmds = Commands::new(31);
    let user = cmds.register("newcomer");
    let shelf = cmds.category(Op::CreateCategory, None, "user7", Some("shelf"));
    let book = cmds.make(
        Op::Create,
        None,
        "user7",
        Fields {
            title: Some("book".into()),
            category_id: Some(Some(shelf.todo_id)),
            ..Fields::default()
        },
    );
    let mid = middle(&pool).await;
    let batch = vec![
        user,
        shelf.clone(),
        book.clone(),
        cmds.category(
            Op::UpdateCategory,
            Some(shelf.todo_id),
            "user7",
            Some("rack"),
        ),
        cmds.make(
            Op::Update,
            Some(mid.id),
            &mid.owner,
            Fields {
                completed: Some(true),
                category_id: Some(None),
                ..Fields::default()
            },
        ),
        cmds.category(Op::DeleteCategory, Some(shelf.todo_id), "user7", None),
        cmds.make(Op::Delete, Some(book.todo_id), "user7", Fields::default()),
        cmds.category(Op::DeleteCategory, Some(shelf.todo_id), "user7", None),
        cmds.category(Op::UpdateCategory, Some(42), "user42", Some("renamed")),
    ];
    let applied = pg::apply_batch(&mut pool.get().await.unwrap(), &batch)
        .await
        .unwrap();
    assert!(
        applied
            .outcomes
            .iter()
            .all(|o| o == &Some(todo_model::Outcome::Applied)
                || o == &Some(todo_model::Outcome::Rejected(
                    todo_model::Rejection::CategoryNotEmpty
                ))),
        "{:?}",
        applied.outcomes
    );
    let mut client = pool.get().await.unwrap();
    let set = pg::changes_since(&mut client, 495).await.unwrap();
    assert_eq!(set.version, 502);
    assert!(set.todos.len() > 100 && set.deleted_todos.len() > 10);
    pg::user_by_name(&client, "user42").await.unwrap().unwrap();
    pg::category(&client, 42).await.unwrap().unwrap();
    pg::command_outcome(&client, batch[0].command_id)
        .await
        .unwrap()
        .unwrap();
    drop(client);
    let plans = plans.lock().unwrap().clone();
    check(
        &plans,
        &[
            // facts
            "FROM todos WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            "FROM categories WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
            "FROM categories WHERE id = $1 FOR UPDATE",
            "owner = $1 AND name = $2",
            "FROM users WHERE username = $1",
            "count(*) FROM todos WHERE category_id = $1",
            // writes and stamps
            "DELETE FROM todos WHERE id = ANY($1)",
            "DELETE FROM categories",
            "UPDATE categories SET version",
            "UPDATE users SET version",
            "DELETE FROM deleted",
            "FROM processed_commands WHERE command_id = ANY($1)",
            // the snapshot, the feed, the lookups
            "ORDER BY id DESC LIMIT 1000",
            "FROM todos WHERE version > $1",
            "FROM users WHERE version > $1",
            "FROM categories WHERE version > $1",
            "FROM deleted WHERE version > $1",
            "FROM processed_commands WHERE command_id = $1",
        ],
    );
    eprintln!("batch and feed: {} plans checked", plans.len());
}
