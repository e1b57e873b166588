//! The worker against real PostgreSQL, Redis and a Kafka-protocol broker.

use sonic_rs::JsonValueTrait;
use todo_model::{Fields, Op};
use todo_testkit::services::{Commands, Env};

#[tokio::test]
async fn commands_are_applied_rendered_and_published() {
    let env = Env::new(3).await;
    let mut worker = env.start_worker();
    let producer = env.producer();
    let mut cmds = Commands::new(1);

    let alice: Vec<_> = (0..200)
        .map(|i| cmds.create("alice", &format!("a{i}")))
        .collect();
    env.produce(&producer, &alice).await;
    let target = alice[10].todo_id;
    let later = vec![
        cmds.make(
            Op::Update,
            Some(target),
            "bob",
            Fields {
                title: Some("stolen".into()),
                ..Fields::default()
            },
        ),
        cmds.make(Op::Delete, Some(target), "bob", Fields::default()),
        cmds.make(
            Op::Update,
            Some(target),
            "alice",
            Fields {
                completed: Some(true),
                ..Fields::default()
            },
        ),
        cmds.make(
            Op::Delete,
            Some(alice[11].todo_id),
            "alice",
            Fields::default(),
        ),
        cmds.make(
            Op::Update,
            Some(42),
            "alice",
            Fields {
                title: Some("x".into()),
                ..Fields::default()
            },
        ),
    ];
    // Per-todo order holds because commands are keyed by todo id.
    env.produce(&producer, &later).await;

    let total = (alice.len() + later.len()) as i64;
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", total)
            .await,
        total
    );
    let db = env.db().await;
    let outcome = |id: u64| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT outcome, reason FROM processed_commands WHERE command_id = $1",
                    &[&(id as i64)],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, Option<String>>(1))
        }
    };
    assert_eq!(
        outcome(later[0].command_id).await,
        ("rejected".into(), Some("not_owner".into()))
    );
    assert_eq!(
        outcome(later[1].command_id).await,
        ("rejected".into(), Some("not_owner".into()))
    );
    assert_eq!(outcome(later[2].command_id).await, ("applied".into(), None));
    assert_eq!(
        outcome(later[4].command_id).await,
        ("rejected".into(), Some("not_found".into()))
    );
    let row = db
        .query_one(
            "SELECT title, completed FROM todos WHERE id = $1",
            &[&(target as i64)],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("a10".into(), true)
    );
    let todos: i64 = db
        .query_one("SELECT count(*) FROM todos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(todos, 100 + 200 - 1, "seed + creates - one delete");

    // The snapshot in Redis is the newest rows, at the version in PostgreSQL.
    let version: i64 = db
        .query_one("SELECT version FROM snapshot_version", &[])
        .await
        .unwrap()
        .get(0);
    let snapshot = env.wait_redis_snapshot(version as u64).await;
    assert_eq!(snapshot.version(), version as u64);
    let rows: Vec<sonic_rs::Value> = sonic_rs::from_slice(snapshot.body()).unwrap();
    assert_eq!(rows.len(), 299.min(todo_model::SNAPSHOT_MAX));
    assert_eq!(
        rows[0]["id"].as_u64(),
        Some(alice[199].todo_id),
        "newest first"
    );
    assert!(
        rows.iter()
            .all(|r| r["id"].as_u64() != Some(alice[11].todo_id)),
        "deleted todo gone"
    );

    worker.kill();
}

#[tokio::test]
async fn sigkill_during_the_flow_applies_every_command_exactly_once() {
    let env = Env::new(3).await;
    let producer = env.producer();
    let mut cmds = Commands::new(2);
    let (creates, updates) = cmds.create_then_complete("erin", 1500);
    let all: Vec<_> = creates.iter().chain(&updates).cloned().collect();
    let total = all.len() as i64;

    let mut worker = env.start_worker();
    let producing = {
        let env_topic_producer = producer.clone();
        let chunks: Vec<Vec<_>> = all.chunks(150).map(|c| c.to_vec()).collect();
        let env = &env;
        async move {
            for chunk in chunks {
                env.produce(&env_topic_producer, &chunk).await;
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            }
        }
    };
    let killing = async {
        // Each kill lands while commands flow: once the worker has applied
        // some more since it started.
        let mut applied = 0;
        for _ in 0..3 {
            applied = env
                .wait_count_above("SELECT count(*) FROM processed_commands", applied + 100)
                .await;
            worker.kill(); // SIGKILL
            worker = env.start_worker();
        }
    };
    tokio::join!(producing, killing);

    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", total)
            .await,
        total
    );
    let db = env.db().await;
    let rejected: i64 = db
        .query_one(
            "SELECT count(*) FROM processed_commands WHERE outcome <> 'applied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rejected, 0,
        "a redelivered command was applied twice (its second run would be rejected)"
    );
    let row = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE completed) FROM todos WHERE owner = 'erin'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1500, 1500));
    worker.kill();
}

#[tokio::test]
async fn two_workers_share_the_partitions_and_apply_each_command_once() {
    let env = Env::new(4).await;
    let mut workers = [env.start_worker(), env.start_worker()];
    let producer = env.producer();
    let mut cmds = Commands::new(3);
    let (creates, updates) = cmds.create_then_complete("gus", 800);
    env.produce(&producer, &creates).await;
    env.produce(&producer, &updates).await;
    let total = (creates.len() + updates.len()) as i64;
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", total)
            .await,
        total
    );
    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE outcome <> 'applied'),
                    (SELECT count(*) FROM todos WHERE owner = 'gus' AND completed)
             FROM processed_commands",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 800));
    for w in &mut workers {
        w.kill();
    }
}
