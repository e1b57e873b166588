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
    // Another's todo: rejected as one that does not exist.
    assert_eq!(
        outcome(later[0].command_id).await,
        ("rejected".into(), Some("not_found".into()))
    );
    assert_eq!(
        outcome(later[1].command_id).await,
        ("rejected".into(), Some("not_found".into()))
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

/// A command recorded by another worker while this batch was being applied
/// (a partition that moved while both held it): the batch rolls back whole
/// and, done again, skips that command, so nothing is applied twice.
#[tokio::test]
async fn a_batch_that_loses_a_command_to_another_worker_rolls_back_and_skips_it() {
    use todo_store::pg;
    let env = Env::new(1).await;
    let pool = pg::pool(&env.database_url, 2).unwrap();
    pg::migrate_and_seed(&mut pool.get().await.unwrap(), 0)
        .await
        .unwrap();
    let mut cmds = Commands::new(1);
    let batch: Vec<_> = (0..3)
        .map(|i| cmds.create("ann", &format!("t{i}")))
        .collect();
    let raced = &batch[1];

    // The other worker: its record of the middle command, not committed yet.
    let mut other = env.db().await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO processed_commands (command_id, todo_id, op, user_name, outcome)
         VALUES ($1, $2, 'create', 'ann', 'applied')",
        &[&(raced.command_id as i64), &(raced.todo_id as i64)],
    )
    .await
    .unwrap();
    let ours = {
        let (pool, batch) = (pool.clone(), batch.clone());
        tokio::spawn(async move { pg::apply_batch(&mut pool.get().await.unwrap(), &batch).await })
    };
    // Ours waits for that row's transaction once it records its outcomes.
    let watcher = env.db().await;
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    tx.commit().await.unwrap();
    let lost = ours.await.unwrap().err().expect("the batch lost the race");
    assert!(lost.is_conflict(), "{lost}");

    let again = pg::apply_batch(&mut pool.get().await.unwrap(), &batch)
        .await
        .unwrap();
    assert_eq!(
        again.outcomes,
        vec![
            Some(todo_model::Outcome::Applied),
            None,
            Some(todo_model::Outcome::Applied)
        ]
    );
    let present = |id: u64| {
        let watcher = &watcher;
        async move {
            watcher
                .query_one("SELECT count(*) FROM todos WHERE id = $1", &[&(id as i64)])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(present(batch[0].todo_id).await, 1);
    // The losing attempt's write of the raced command was rolled back.
    assert_eq!(present(raced.todo_id).await, 0);
    assert_eq!(present(batch[2].todo_id).await, 1);
    let recorded: i64 = watcher
        .query_one("SELECT count(*) FROM processed_commands", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 3);
}
