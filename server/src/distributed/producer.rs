//! Producing accepted commands to Kafka. The 202 is sent only once the
//! delivery report says the broker has the command (acks=all); a broker that
//! cannot be reached within `kafka_timeout` gives 503, never a 202.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use todo_model::TodoCommand;

use super::{DistributedError, Settings};
use crate::error::HttpError;

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl Producer {
    pub fn new(settings: &Settings) -> Result<Producer, DistributedError> {
        let timeout_ms = settings.kafka_timeout.as_millis().max(1).to_string();
        let inner: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A report within the timeout, success or failure: librdkafka's
            // default would keep retrying for five minutes.
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "1")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        Ok(Producer {
            inner,
            topic: settings.topic.clone(),
            timeout: settings.kafka_timeout,
        })
    }

    /// Produce `cmd` keyed by its todo id and wait for the broker's ack. The
    /// wait is an await on the core's event loop, not a blocking call: the
    /// report comes from librdkafka's thread and wakes this task.
    pub async fn send(&self, cmd: &TodoCommand) -> Result<(), HttpError> {
        let payload =
            sonic_rs::to_vec(cmd).map_err(|_| HttpError::internal("cannot encode command"))?;
        let key = itoa::Buffer::new().format(cmd.todo_id).to_string();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let delivery = self
            .inner
            .send_result(record)
            .map_err(|_| HttpError::unavailable("the write queue is full", 1))?;
        // librdkafka reports by message.timeout.ms; the extra second only
        // guards against a report that never comes.
        match monoio::time::timeout(self.timeout + Duration::from_secs(1), delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(_))) | Ok(Err(_)) | Err(_) => Err(HttpError::unavailable(
                "the command broker did not confirm the write",
                1,
            )),
        }
    }
}
