//! Users and categories through the whole write path: Kafka, the worker,
//! PostgreSQL. Commands on different keys may be applied in any order (they
//! land on different partitions), so each phase waits for the one before.

use todo_model::{Fields, Op, TodoCommand};
use todo_testkit::http::scrape;
use todo_testkit::services::{Commands, Env};

/// Produce `cmds`, wait until every command so far is processed.
async fn phase(
    env: &Env,
    producer: &rdkafka::producer::FutureProducer,
    total: &mut i64,
    cmds: &[TodoCommand],
) {
    env.produce(producer, cmds).await;
    *total += cmds.len() as i64;
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", *total)
            .await,
        *total
    );
}

async fn outcome(db: &tokio_postgres::Client, cmd: &TodoCommand) -> (String, Option<String>) {
    let row = db
        .query_one(
            "SELECT outcome, reason FROM processed_commands WHERE command_id = $1",
            &[&(cmd.command_id as i64)],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn applied() -> (String, Option<String>) {
    ("applied".into(), None)
}

fn rejected(reason: &str) -> (String, Option<String>) {
    ("rejected".into(), Some(reason.into()))
}

fn in_category(title: &str, category: Option<u64>) -> Fields {
    Fields {
        title: Some(title.into()),
        category_id: Some(category),
        ..Fields::default()
    }
}

#[tokio::test]
async fn users_and_categories_apply_exactly_once() {
    let env = Env::new(3).await;
    let mut worker = env.start_worker();
    let producer = env.producer();
    let db = env.db().await;
    let mut cmds = Commands::new(11);
    let mut total = 0;

    // Two registrations of one name (two ids, likely two partitions), two
    // categories of one name: one of each applies, whichever came first.
    let users = [
        cmds.register("alice"),
        cmds.register("alice"),
        cmds.register("bob"),
    ];
    let work = [
        cmds.category(Op::CreateCategory, None, "alice", Some("work")),
        cmds.category(Op::CreateCategory, None, "alice", Some("work")),
        cmds.category(Op::CreateCategory, None, "bob", Some("work")),
    ];
    let first: Vec<_> = users.iter().chain(&work).cloned().collect();
    phase(&env, &producer, &mut total, &first).await;
    let mut alice = Vec::new();
    for cmd in &users[..2] {
        alice.push(outcome(&db, cmd).await);
    }
    alice.sort();
    assert_eq!(alice, vec![applied(), rejected("username_taken")]);
    assert_eq!(outcome(&db, &users[2]).await, applied());
    let row = db
        .query_one(
            "SELECT count(*), min(password_hash) FROM users WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(row.get::<_, String>(1).starts_with("$argon2id$"));
    let mut names = Vec::new();
    for cmd in &work[..2] {
        names.push(outcome(&db, cmd).await);
    }
    names.sort();
    assert_eq!(names, vec![applied(), rejected("name_taken")]);
    assert_eq!(
        outcome(&db, &work[2]).await,
        applied(),
        "names are per owner"
    );
    let mine = if outcome(&db, &work[0]).await == applied() {
        work[0].todo_id
    } else {
        work[1].todo_id
    };
    let bobs = work[2].todo_id;

    // Todos in categories: only in one's own.
    let todo = cmds.make(Op::Create, None, "alice", in_category("report", Some(mine)));
    let second = vec![
        todo.clone(),
        cmds.make(Op::Create, None, "bob", in_category("sneaky", Some(mine))),
        cmds.make(
            Op::Create,
            None,
            "alice",
            in_category("nowhere", Some(u64::MAX >> 1)),
        ),
        cmds.make(Op::Create, None, "alice", in_category("theirs", Some(bobs))),
        cmds.category(Op::UpdateCategory, Some(mine), "bob", Some("mine now")),
        cmds.category(Op::DeleteCategory, Some(mine), "bob", None),
        cmds.category(Op::UpdateCategory, Some(mine), "alice", Some("job")),
        cmds.category(Op::DeleteCategory, Some(u64::MAX >> 1), "alice", None),
    ];
    phase(&env, &producer, &mut total, &second).await;
    let got = {
        let mut got = Vec::new();
        for cmd in &second {
            got.push(outcome(&db, cmd).await);
        }
        got
    };
    assert_eq!(
        got,
        vec![
            applied(),
            rejected("unknown_category"),
            rejected("unknown_category"),
            rejected("unknown_category"),
            rejected("not_owner"),
            rejected("not_owner"),
            applied(),
            rejected("not_found"),
        ]
    );
    let row = db
        .query_one(
            "SELECT t.category_id, c.name FROM todos t JOIN categories c ON c.id = t.category_id WHERE t.id = $1",
            &[&(todo.todo_id as i64)],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0) as u64, row.get::<_, String>(1)),
        (mine, "job".to_string())
    );

    // A category that holds a todo stays, whoever asks and however.
    let delete = cmds.category(Op::DeleteCategory, Some(mine), "alice", None);
    phase(&env, &producer, &mut total, std::slice::from_ref(&delete)).await;
    assert_eq!(outcome(&db, &delete).await, rejected("category_not_empty"));
    let raw = db
        .execute("DELETE FROM categories WHERE id = $1", &[&(mine as i64)])
        .await
        .expect_err("the foreign key refuses");
    assert_eq!(
        raw.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );

    // Emptied (the todo moves out), it goes, with a tombstone.
    let out = cmds.make(
        Op::Update,
        Some(todo.todo_id),
        "alice",
        Fields {
            category_id: Some(None),
            ..Fields::default()
        },
    );
    phase(&env, &producer, &mut total, std::slice::from_ref(&out)).await;
    let delete = cmds.category(Op::DeleteCategory, Some(mine), "alice", None);
    phase(&env, &producer, &mut total, std::slice::from_ref(&delete)).await;
    assert_eq!(outcome(&db, &out).await, applied());
    assert_eq!(outcome(&db, &delete).await, applied());
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM categories WHERE id = $1),
                    (SELECT version FROM deleted WHERE kind = 'category' AND id = $1),
                    (SELECT version FROM snapshot_version)",
            &[&(mine as i64)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(row.get::<_, i64>(1), row.get::<_, i64>(2));

    // Everything again (a redelivery): nothing changes.
    let before = dump(&db).await;
    let all: Vec<_> = first
        .iter()
        .chain(&second)
        .chain([&out, &delete])
        .cloned()
        .collect();
    env.produce(&producer, &all).await;
    let duplicates = r#"todo_worker_commands_total{result="duplicate"}"#;
    todo_testkit::process::wait_until(
        "every redelivered command seen as a duplicate",
        std::time::Duration::from_secs(30),
        || (scrape(worker.addr(), duplicates) >= Some(all.len() as u64)).then_some(()),
    );
    let processed: i64 = db
        .query_one("SELECT count(*) FROM processed_commands", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        processed, total,
        "redelivered commands are not recorded again"
    );
    assert_eq!(
        dump(&db).await,
        before,
        "redelivered commands change no row and make no version"
    );
    worker.kill();
}

/// Every user, category and todo row (with versions), and the version.
async fn dump(db: &tokio_postgres::Client) -> (String, i64) {
    let rows: String = db
        .query_one(
            "SELECT concat_ws(E'\\n',
                (SELECT string_agg(u::text, E'\\n' ORDER BY id) FROM users u),
                (SELECT string_agg(c::text, E'\\n' ORDER BY id) FROM categories c),
                (SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM todos t),
                (SELECT string_agg(d::text, E'\\n' ORDER BY kind, id) FROM deleted d))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let version: i64 = db
        .query_one("SELECT version FROM snapshot_version", &[])
        .await
        .unwrap()
        .get(0);
    (rows, version)
}
