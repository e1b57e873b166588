//! The Kafka side: a consumer-group member with at-least-once processing.
//! Offsets are stored only after the batch's transaction committed
//! (`enable.auto.offset.store=false`); the client commits stored offsets in
//! the background.
//!
//! Outages: librdkafka reconnects to the broker by itself, so a consume error
//! (`AllBrokersDown`, transport errors) is logged and the next taken at once; a batch whose
//! transaction fails (PostgreSQL away) is applied again, the same batch,
//! until it commits; at once, without backoff, when it only lost a lock race
//! to another worker's ([`todo_store::StoreError::is_conflict`]). Offsets
//! that cannot be stored (the partition moved to another worker meanwhile)
//! mean redelivery, which the processed-commands table makes harmless.
//!
//! After each COMMIT: the metrics (`metrics.rs`: the batch's size and
//! transaction time, the commands by result) and the command log
//! (`command_log.rs`: one line per command, one write per batch).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::Message;
use todo_model::envelope::{Envelope, ENVELOPE_HEADER};
use todo_model::TodoCommand;

use todo_store::pg;

use crate::command_log::CommandLog;
use crate::metrics::{Dependency, Metrics};
use crate::outage::Outage;
use crate::{WorkerConfig, WorkerError};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;

/// Create the commands topic if it does not exist yet, waiting for the
/// broker as long as it takes.
pub async fn ensure_topic(
    config: &WorkerConfig,
    metrics: &Arc<Metrics>,
) -> Result<(), WorkerError> {
    let mut broker = Outage::new(Dependency::Broker, metrics);
    loop {
        match create_topic(config).await {
            Ok(()) => {
                broker.ok();
                return Ok(());
            }
            Err(WorkerError::CreateTopic { topic, code }) if !transient(code) => {
                return Err(WorkerError::CreateTopic { topic, code })
            }
            Err(e) => broker.failed("creating the topic", &e).await,
        }
    }
}

/// Whether a topic creation error may go away by itself.
fn transient(code: RDKafkaErrorCode) -> bool {
    !matches!(
        code,
        RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::TopicAuthorizationFailed
    )
}

async fn create_topic(config: &WorkerConfig) -> Result<(), WorkerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                &config.topic,
                config.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(WorkerError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// The consumer's callbacks: each rebalance is logged and counted
/// (`todo_worker_partitions`, `todo_worker_assignments_total`), so an
/// operator sees which worker holds what, and when the group moved it.
pub struct Rebalances {
    metrics: Arc<Metrics>,
}

impl rdkafka::ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.metrics.revoked();
            eprintln!(
                "todo-worker: rebalance: giving back partitions {}",
                partitions(list)
            );
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.metrics.assigned(list.count());
                eprintln!(
                    "todo-worker: rebalance: holding partitions {}",
                    partitions(list)
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => eprintln!("todo-worker: rebalance failed: {e}"),
        }
    }
}

/// `[0, 3, 5]`: the partition numbers of `list`.
fn partitions(list: &rdkafka::TopicPartitionList) -> String {
    let mut numbers: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    numbers.sort_unstable();
    format!("{numbers:?}")
}

pub fn consumer(
    config: &WorkerConfig,
    metrics: &Arc<Metrics>,
) -> Result<StreamConsumer<Rebalances>, WorkerError> {
    let context = Rebalances {
        metrics: metrics.clone(),
    };
    let consumer: StreamConsumer<Rebalances> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Fetch as soon as anything is there (default: wait up to 500 ms).
        .set("fetch.wait.max.ms", "10")
        // A worker that dies (SIGKILL) is noticed by its silence within the
        // session timeout; the rebalance timeout (max.poll.interval.ms) bounds
        // how long the group waits for members to rejoin. Defaults are 45 s
        // and 5 min; a batch never takes long, so short bounds cost nothing
        // and let the surviving workers take the partitions over quickly.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "10000")
        .create_with_context(context)?;
    consumer.subscribe(&[&config.topic])?;
    Ok(consumer)
}

/// How long the gathering of a batch waits for one more record before
/// applying what it has (at most `batch_wait` in all).
const IDLE_GAP: Duration = Duration::from_millis(1);

/// Consume until an error; each applied batch's snapshot goes to `latest`.
pub async fn consume(
    config: &WorkerConfig,
    pool: &Pool,
    latest: &tokio::sync::watch::Sender<std::sync::Arc<todo_model::Snapshot>>,
    metrics: &Arc<Metrics>,
) -> Result<(), WorkerError> {
    let consumer = consumer(config, metrics)?;
    let mut broker = Outage::new(Dependency::Broker, metrics);
    let mut postgres = Outage::new(Dependency::Postgres, metrics);
    let mut batch: Vec<TodoCommand> = Vec::with_capacity(config.max_batch);
    // Highest offset seen per partition in this batch.
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let mut log = CommandLog::new(config.command_log);
    loop {
        batch.clear();
        offsets.clear();
        log.clear();
        let first = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                // An error event from librdkafka, which reconnects with its
                // own backoff. Waiting here would only queue up more of
                // them, and each would be waited for again after the broker
                // is back: take the next at once (a short pause keeps a
                // burst from spinning).
                broker.seen("consuming", &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        broker.ok();
        let deadline = Instant::now() + config.batch_wait;
        take(&first, &mut batch, &mut offsets, &mut log, metrics);
        drop(first);
        // A fetch's records arrive together: once none has come for
        // IDLE_GAP, what the broker had is in the batch.
        while batch.len() < config.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(IDLE_GAP), consumer.recv()).await {
                Ok(Ok(m)) => take(&m, &mut batch, &mut offsets, &mut log, metrics),
                // Apply what came; the next recv waits the error out.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // The same batch until it commits: its offsets are not stored, and
        // the consumer has moved past it.
        let (applied, took) = loop {
            match apply(pool, &batch).await {
                Ok(done) => break done,
                // Another worker's transaction won a lock race (a deadlock
                // PostgreSQL broke): not an outage; again at once.
                Err(e) if e.is_conflict() => {
                    eprintln!(
                        "todo-worker: batch lost to a concurrent one ({e}); applying it again"
                    )
                }
                Err(e) => postgres.failed("applying a batch", &e).await,
            }
        };
        postgres.ok();
        metrics.committed(
            &applied.outcomes,
            applied.snapshot.as_ref().map(|s| s.version()),
            took,
        );
        log.write(&batch, &applied.outcomes);
        for (partition, offset) in &offsets {
            if let Err(e) = consumer.store_offset(&config.topic, *partition, *offset) {
                eprintln!(
                    "todo-worker: offset {offset} of partition {partition} not stored ({e}); it will be delivered again and skipped"
                );
            }
        }
        if let Some(snapshot) = applied.snapshot {
            latest.send_replace(std::sync::Arc::new(snapshot));
        }
    }
}

/// Apply `batch` in one transaction; what it did, and how long the
/// transaction took (BEGIN to COMMIT, without waiting for a connection).
async fn apply(
    pool: &Pool,
    batch: &[TodoCommand],
) -> Result<(pg::Applied, Duration), todo_store::StoreError> {
    let mut client = pool.get().await?;
    let begun = Instant::now();
    let applied = pg::apply_batch(&mut client, batch).await?;
    Ok((applied, begun.elapsed()))
}

/// Add one message to the batch and note its offset (and, for the command
/// log, where it came from).
fn take(
    m: &rdkafka::message::BorrowedMessage<'_>,
    batch: &mut Vec<TodoCommand>,
    offsets: &mut HashMap<i32, i64>,
    log: &mut CommandLog,
    metrics: &Metrics,
) {
    offsets.insert(m.partition(), m.offset());
    let received = std::time::SystemTime::now();
    let packed = m
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key == ENVELOPE_HEADER));
    if packed {
        match m.payload().map(sonic_rs::from_slice::<Envelope>) {
            Some(Ok(envelope)) => {
                for p in envelope.commands {
                    log.note_packed(
                        m.partition(),
                        m.offset(),
                        received,
                        p.request_id.as_deref(),
                        p.traceparent.as_deref(),
                    );
                    batch.push(p.command);
                }
            }
            other => {
                metrics.unreadable();
                eprintln!(
                    "todo-worker: skipping unreadable envelope at {}/{}: {:?}",
                    m.partition(),
                    m.offset(),
                    other.map(|r| r.err())
                )
            }
        }
        return;
    }
    // A record of one bare command (servers before envelopes).
    match m.payload().map(sonic_rs::from_slice::<TodoCommand>) {
        Some(Ok(cmd)) => {
            batch.push(cmd);
            log.note(m.partition(), m.offset(), received, m.headers());
        }
        // A command no server could have produced: skipped, and its offset
        // stored with the batch so it is not retried forever.
        other => {
            metrics.unreadable();
            eprintln!(
                "todo-worker: skipping unreadable message at {}/{}: {:?}",
                m.partition(),
                m.offset(),
                other.map(|r| r.err())
            )
        }
    }
}
