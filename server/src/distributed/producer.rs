//! Producing accepted commands to Kafka. The 202 is sent only once the
//! delivery report says the broker has the command (acks=all); a broker that
//! cannot be reached within `kafka_timeout` gives 503, never a 202.
//!
//! Each core owns its producer (an idempotent librdkafka client). After a
//! failed or missing delivery report the core replaces it, at most once per
//! `kafka_timeout`: an idempotent producer whose in-flight batches timed out
//! can be left waiting on sequence numbers the restarted broker no longer
//! knows, and a fresh producer id is the reliable way out. (Measured here
//! against a broker killed and restarted: the old client never delivered
//! again; a fresh one does.) The old client is dropped on a helper thread,
//! because its drop purges and flushes for up to half a second.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use todo_model::TodoCommand;

use super::{DistributedError, Settings};
use crate::trace::Trace;
use todo_http::HttpError;

pub struct Producer {
    settings: Settings,
    /// The core's client and when it was made; made on first use.
    inner: RefCell<Option<(FutureProducer, Instant)>>,
}

/// Each clone (one per core) makes its own client.
impl Clone for Producer {
    fn clone(&self) -> Self {
        Producer {
            settings: self.settings.clone(),
            inner: RefCell::new(None),
        }
    }
}

fn client(settings: &Settings) -> Result<FutureProducer, DistributedError> {
    let timeout_ms = settings.kafka_timeout.as_millis().max(1).to_string();
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // A report within the timeout, success or failure: librdkafka's
        // default would keep retrying for five minutes.
        .set("message.timeout.ms", &timeout_ms)
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

impl Producer {
    /// Check the settings by building one client now, so a bad
    /// configuration fails at start-up.
    pub fn new(settings: &Settings) -> Result<Producer, DistributedError> {
        drop(client(settings)?);
        Ok(Producer {
            settings: settings.clone(),
            inner: RefCell::new(None),
        })
    }

    fn current(&self) -> Result<FutureProducer, HttpError> {
        let mut inner = self.inner.borrow_mut();
        if inner.is_none() {
            let made = client(&self.settings)
                .map_err(|_| HttpError::unavailable("cannot create the Kafka producer", 1))?;
            *inner = Some((made, Instant::now()));
        }
        Ok(inner.as_ref().expect("made above").0.clone())
    }

    fn replace_after_failure(&self) {
        let mut inner = self.inner.borrow_mut();
        if inner
            .as_ref()
            .is_some_and(|(_, made)| made.elapsed() >= self.settings.kafka_timeout)
        {
            if let Some((old, _)) = inner.take() {
                std::thread::spawn(move || drop(old));
            }
        }
    }

    /// Produce `cmd` keyed by its todo id now; [`Producer::finish`] waits
    /// for the broker's ack. Several writes of one connection are in flight
    /// together this way.
    ///
    /// The record's headers carry the request's `x-request-id` and
    /// `traceparent`, so the worker's log names them with the command.
    pub fn start(
        &self,
        cmd: &TodoCommand,
        trace: Option<&Trace>,
    ) -> Result<DeliveryFuture, HttpError> {
        let payload =
            sonic_rs::to_vec(cmd).map_err(|_| HttpError::internal("cannot encode command"))?;
        let key = itoa::Buffer::new().format(cmd.todo_id).to_string();
        let producer = self.current()?;
        let mut record = FutureRecord::to(&self.settings.topic)
            .key(&key)
            .payload(&payload);
        if let Some(trace) = trace {
            let mut headers = OwnedHeaders::new_with_capacity(2).insert(Header {
                key: "x-request-id",
                value: Some(trace.request_id.as_bytes()),
            });
            if let Some(tp) = &trace.traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(tp.as_bytes()),
                });
            }
            record = record.headers(headers);
        }
        producer
            .send_result(record)
            .map_err(|_| HttpError::unavailable("the write queue is full", 1))
    }

    /// Wait for the delivery report. The wait is an await on the core's event
    /// loop, not a blocking call: the report comes from librdkafka's thread
    /// and wakes this task.
    pub async fn finish(&self, delivery: DeliveryFuture) -> Result<(), HttpError> {
        // librdkafka reports by message.timeout.ms; the extra second only
        // guards against a report that never comes.
        let waited = monoio::time::timeout(
            self.settings.kafka_timeout + Duration::from_secs(1),
            delivery,
        )
        .await;
        match waited {
            Ok(Ok(Ok(_))) => Ok(()),
            _ => {
                self.replace_after_failure();
                Err(HttpError::unavailable(
                    "the command broker did not confirm the write",
                    1,
                ))
            }
        }
    }
}
