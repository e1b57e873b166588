//! Envelopes (one record, many commands) against the real broker and
//! PostgreSQL: the partition a server computes for a todo is the one
//! librdkafka's partitioner gives its single records, and an envelope whose
//! worker dies in the middle of applying it is applied once per command.

use std::time::Duration;

use todo_model::envelope::partition_of;
use todo_testkit::services::{Commands, Env};

#[tokio::test]
async fn single_records_land_in_the_partition_a_server_computes() {
    let env = Env::new(3).await;
    let producer = env.producer();
    let mut cmds = Commands::new(3);
    for i in 0..60 {
        let cmd = cmds.create("pia", &format!("p{i}"));
        let key = cmd.todo_id.to_string();
        let payload = sonic_rs::to_vec(&cmd).unwrap();
        let delivery = producer
            .send(
                rdkafka::producer::FutureRecord::to(&env.topic)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .expect("delivered");
        assert_eq!(
            delivery.partition,
            partition_of(cmd.todo_id, 3),
            "todo {key}"
        );
    }
}

#[tokio::test]
async fn an_envelope_whose_worker_dies_mid_batch_is_applied_once_per_command() {
    let env = Env::new(3).await;
    let mut worker = env.start_worker();
    // Migrated and seeded (100 seed todos) before the test takes its lock.
    env.wait_count("SELECT count(*) FROM todos WHERE owner = 'seed'", 100)
        .await;

    // Hold the outcomes table, so the worker's transaction for the envelope
    // blocks in the middle of its batch.
    let (mut blocker, conn) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE processed_commands IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let mut cmds = Commands::new(4);
    let n = 300;
    let envelope: Vec<_> = (0..n)
        .map(|i| cmds.create("eve", &format!("e{i}")))
        .collect();
    let producer = env.producer();
    env.produce_envelope(&producer, &envelope, 1).await;

    // The worker is inside the batch, waiting on the lock.
    let db = env.db().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
    let mut blocked = false;
    for _ in 0..600 {
        let row = db.query_one(waiting, &[]).await.unwrap();
        if row.get::<_, i64>(0) > 0 {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        blocked,
        "the worker never reached the envelope's transaction"
    );
    worker.kill();
    lock.rollback().await.unwrap();

    // Nothing of the envelope was committed; a new worker applies it whole,
    // once per command.
    let none: i64 = db
        .query_one("SELECT count(*) FROM processed_commands", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    let _worker = env.start_worker();
    let applied = env
        .wait_count("SELECT count(*) FROM processed_commands", n)
        .await;
    assert_eq!(applied, n);
    let rows: i64 = db
        .query_one("SELECT count(*) FROM todos WHERE owner = 'eve'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, n, "one todo per command");
}
