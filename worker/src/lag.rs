//! Consumer lag (`todo_worker_consumer_lag{partition}`): how many messages
//! of each partition the consumer group has not committed yet.
//!
//! A thread of its own, with a Kafka client of its own (a consumer of the
//! same group that never subscribes, so it joins nothing), asks the broker
//! every [`LAG_EVERY`] for the topic's partitions, the group's committed
//! offsets and each partition's watermarks, and sets
//! `lag = high watermark - committed offset` (the low watermark stands in
//! for a partition the group never committed: `auto.offset.reset` is
//! `earliest`). The calls block, so they stay off the consume loop; and
//! since they depend on the broker alone, the lag keeps growing in the
//! metrics while the loop waits for PostgreSQL, which is when it matters.
//!
//! Every worker of a group reports the group's lag for every partition, so
//! aggregate with `max by (partition)`, not `sum`. While the broker is away
//! the last measurement stays (`todo_worker_dependency_up` says why).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::{WorkerConfig, WorkerError};

/// Time between two measurements.
pub const LAG_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for each of the broker's answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Start the measuring thread (it runs as long as the process).
pub fn spawn(config: &WorkerConfig, metrics: &Arc<Metrics>) -> Result<(), WorkerError> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .create()?;
    let topic = config.topic.clone();
    let metrics = metrics.clone();
    std::thread::Builder::new()
        .name("todo-worker-lag".into())
        .spawn(move || loop {
            if let Ok(lag) = measure(&client, &topic) {
                metrics.set_lag(lag);
            }
            // Serve the client's own events (errors while the broker is
            // away), which nothing else reads; none is a message.
            let _ = client.poll(Duration::ZERO);
            std::thread::sleep(LAG_EVERY);
        })
        .map(drop)
        .map_err(WorkerError::Thread)
}

/// Every partition of `topic` and its lag.
fn measure(client: &BaseConsumer, topic: &str) -> KafkaResult<Vec<(i32, u64)>> {
    let metadata = client.fetch_metadata(Some(topic), ASK_TIMEOUT)?;
    let mut asked = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            asked.add_partition(topic, p.id());
        }
    }
    let committed = client.committed_offsets(asked, ASK_TIMEOUT)?;
    let mut lag = Vec::with_capacity(committed.count());
    for element in committed.elements() {
        let partition = element.partition();
        let (low, high) = client.fetch_watermarks(topic, partition, ASK_TIMEOUT)?;
        let from = match element.offset() {
            Offset::Offset(n) => n,
            _ => low,
        };
        lag.push((partition, high.saturating_sub(from).max(0) as u64));
    }
    Ok(lag)
}
