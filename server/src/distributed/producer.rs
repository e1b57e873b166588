//! Producing accepted commands to Kafka. The 202 is sent only once the
//! delivery report says the broker has the command (acks=all); a broker that
//! cannot be reached within `kafka_timeout` gives 503, never a 202.
//!
//! Packing: a core's commands are not produced one record each.
//! [`Producer::start`] puts a command in the core's pack for its partition
//! ([`todo_model::envelope::partition_of`]); [`Producer::finish`] starts a
//! sender for that partition unless one is at work. A sender sends one
//! record (an [`Envelope`] of up to [`MAX_PACK`] commands) at a time and,
//! while it waits for the delivery report, what arrives for the partition
//! waits for the next record: records grow with the broker's latency (a
//! group commit, no timer), and one todo's commands keep their order. Every
//! command's wait ends with its record's delivery report. The partition count comes from the
//! broker's metadata (the `todo-kafka-meta` thread, every 10 s); until it is
//! known, each command goes in a record of its own, keyed by its todo id,
//! which librdkafka's partitioner puts in that same partition.
//!
//! Each core owns its producer (an idempotent librdkafka client). After a
//! failed or missing delivery report the core replaces it (its senders take
//! the client anew for every record), at most once per
//! `kafka_timeout`: an idempotent producer whose in-flight batches timed out
//! can be left waiting on sequence numbers the restarted broker no longer
//! knows, and a fresh producer id is the reliable way out. (Measured here
//! against a broker killed and restarted: the old client never delivered
//! again; a fresh one does.) The old client is dropped on a helper thread,
//! because its drop purges and flushes for up to half a second.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use todo_model::envelope::{partition_of, EnvelopeOf, Packed, ENVELOPE_HEADER};
use todo_model::TodoCommand;

use super::{DistributedError, Settings};
use crate::trace::Trace;
use todo_http::HttpError;

pub struct Producer {
    settings: Arc<Settings>,
    /// Records and commands the broker acknowledged, all cores together.
    delivered: Arc<Delivered>,
    /// The topic's partitions, from the broker's metadata (0: not known
    /// yet). Shared by every core's producer.
    partitions: Arc<AtomicU32>,
    /// Commands waiting to be sent, per partition, and which partitions
    /// have a record in flight. Only this core touches it: the lock is never
    /// contended (it is a `Mutex` because the producer is handed to its
    /// core's thread, and the sending task needs it too).
    pack: Arc<Mutex<Pack>>,
}

/// Per slot (0: partitions not known yet; p + 1: partition p): the commands
/// waiting, and whether a sender task is at work on it; and the core's
/// client, with when it was made (made on first use).
#[derive(Default)]
struct Pack {
    waiting: Vec<Vec<Waiting>>,
    sending: Vec<bool>,
    client: Option<(FutureProducer, Instant)>,
}

impl Pack {
    fn client(&mut self, settings: &Settings) -> Result<FutureProducer, HttpError> {
        if self.client.is_none() {
            let made = client(settings)
                .map_err(|_| HttpError::unavailable("cannot create the Kafka producer", 1))?;
            self.client = Some((made, Instant::now()));
        }
        Ok(self.client.as_ref().expect("made above").0.clone())
    }

    /// After a failed or missing delivery report: a fresh client, at most
    /// once per `kafka_timeout` (see the module doc).
    fn replace_after_failure(&mut self, kafka_timeout: Duration) {
        if self
            .client
            .as_ref()
            .is_some_and(|(_, made)| made.elapsed() >= kafka_timeout)
        {
            if let Some((old, _)) = self.client.take() {
                std::thread::spawn(move || drop(old));
            }
        }
    }
}

/// What the broker acknowledged, counted once per record (the cores share
/// it: a record is hundreds of commands under load, so the counters are
/// touched rarely).
#[derive(Default)]
struct Delivered {
    records: AtomicU64,
    commands: AtomicU64,
}

/// A command in the pack and the end of its wait.
struct Waiting {
    packed: Packed,
    done: flume::Sender<Result<(), HttpError>>,
}

/// A command handed to [`Producer::start`]; [`Producer::finish`] waits on it.
pub struct Ticket(flume::Receiver<Result<(), HttpError>>);

/// Most commands in one record; more go in the next.
const MAX_PACK: usize = 512;
/// How often the partition count is asked of the broker again.
const METADATA_EVERY: Duration = Duration::from_secs(10);

/// Each clone (one per core) makes its own client and pack.
impl Clone for Producer {
    fn clone(&self) -> Self {
        Producer {
            settings: self.settings.clone(),
            delivered: self.delivered.clone(),
            partitions: self.partitions.clone(),
            pack: Arc::default(),
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
    /// configuration fails at start-up, and start the thread that learns
    /// the topic's partition count.
    pub fn new(settings: &Settings) -> Result<Producer, DistributedError> {
        let meta = client(settings)?;
        let partitions = Arc::new(AtomicU32::new(0));
        let learned = partitions.clone();
        let topic = settings.topic.clone();
        std::thread::Builder::new()
            .name("todo-kafka-meta".into())
            .spawn(move || learn_partitions(&meta, &topic, &learned))
            .map_err(DistributedError::Thread)?;
        Ok(Producer {
            settings: Arc::new(settings.clone()),
            delivered: Arc::default(),
            partitions,
            pack: Arc::default(),
        })
    }

    /// The producer's metrics, Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "# HELP todo_kafka_records_total Kafka records the broker acknowledged (each an envelope of commands).\n\
             # TYPE todo_kafka_records_total counter\n\
             todo_kafka_records_total {}\n\
             # HELP todo_kafka_record_commands_total Commands in the records the broker acknowledged.\n\
             # TYPE todo_kafka_record_commands_total counter\n\
             todo_kafka_record_commands_total {}\n",
            self.delivered.records.load(Relaxed),
            self.delivered.commands.load(Relaxed),
        );
    }

    fn pack(&self) -> std::sync::MutexGuard<'_, Pack> {
        self.pack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put `cmd` in this core's pack; [`Producer::finish`] sends the pack
    /// and waits for the broker's ack. Several writes of one connection,
    /// and of other connections on this core, go out together this way.
    /// The request's `x-request-id` and `traceparent` go with the command,
    /// so the worker's log names them.
    pub fn start(&self, cmd: TodoCommand, trace: Option<&Trace>) -> Result<Ticket, HttpError> {
        // Slot 0: the partition count is not known yet, so each command
        // goes in a record of its own, keyed by its todo id, where
        // librdkafka's partitioner puts it: the partition `partition_of`
        // names once the count is known.
        let partitions = self.partitions.load(Relaxed);
        let slot = if partitions == 0 {
            0
        } else {
            partition_of(cmd.todo_id, partitions) as usize + 1
        };
        let (done, wait) = flume::bounded(1);
        let mut pack = self.pack();
        if pack.waiting.len() <= slot {
            pack.waiting.resize_with(slot + 1, Vec::new);
            pack.sending.resize(slot + 1, false);
        }
        pack.waiting[slot].push(Waiting {
            packed: Packed {
                command: cmd,
                request_id: trace.map(|t| t.request_id.clone()),
                traceparent: trace.and_then(|t| t.traceparent.clone()),
            },
            done,
        });
        Ok(Ticket(wait))
    }

    /// Send the pack (if another wait has not already) and wait for this
    /// command's record to be acknowledged. The wait is an await on the
    /// core's event loop: the report comes from librdkafka's thread.
    pub async fn finish(&self, ticket: Ticket) -> Result<(), HttpError> {
        self.send_pack();
        // Delivery reports come within message.timeout.ms; the extra
        // second only guards against one that never comes.
        let waited = monoio::time::timeout(
            self.settings.kafka_timeout + Duration::from_secs(2),
            ticket.0.recv_async(),
        )
        .await;
        match waited {
            Ok(Ok(Ok(()))) => Ok(()),
            // The sender replaced the client if it failed.
            Ok(Ok(Err(e))) => Err(e),
            _ => {
                self.pack()
                    .replace_after_failure(self.settings.kafka_timeout);
                Err(not_confirmed())
            }
        }
    }

    /// Start a sender for every slot with commands waiting and none at
    /// work. A sender sends one record at a time for its partition: what
    /// waits while a record is in flight goes in the next one, so records
    /// grow with the broker's latency (a group commit) and one todo's
    /// commands keep their order. It runs as a task of this core, so a wait
    /// that is dropped (its client went away) leaves the others answered.
    fn send_pack(&self) {
        let mut pack = self.pack();
        let Pack {
            waiting, sending, ..
        } = &mut *pack;
        for (slot, (list, busy)) in waiting.iter().zip(sending.iter_mut()).enumerate() {
            if !list.is_empty() && !*busy {
                *busy = true;
                monoio::spawn(send_slot(
                    self.pack.clone(),
                    self.settings.clone(),
                    self.delivered.clone(),
                    slot,
                ));
            }
        }
    }
}

/// The sender of one slot: records of up to [`MAX_PACK`] commands, one at
/// a time, until nothing waits; each command's wait ends with its record's
/// delivery report. The list of commands and the record's bytes are kept
/// from one record to the next: a busy slot allocates neither.
async fn send_slot(
    pack: Arc<Mutex<Pack>>,
    settings: Arc<Settings>,
    delivered: Arc<Delivered>,
    slot: usize,
) {
    let wait = settings.kafka_timeout + Duration::from_secs(1);
    let mut list: Vec<Waiting> = Vec::new();
    let mut payload = Vec::new();
    loop {
        // The client is taken anew for every record: one replaced after a
        // failure is not used again.
        let producer = {
            let mut pack = pack.lock().unwrap_or_else(|e| e.into_inner());
            let waiting = &mut pack.waiting[slot];
            // A command whose wait ended (it was answered 503 after
            // `kafka_timeout`, or its client went away) got no 202: it is
            // not sent after all.
            waiting.retain(|w| !w.done.is_disconnected());
            if waiting.is_empty() {
                pack.sending[slot] = false;
                return;
            }
            // Slot 0 (partitions not known): one command per record.
            let most = if slot == 0 { 1 } else { MAX_PACK };
            if waiting.len() <= most {
                // `list` is empty: the slot gets its capacity back.
                std::mem::swap(waiting, &mut list);
            } else {
                list.extend(waiting.drain(..most));
            }
            pack.client(&settings)
        };
        let result = match producer {
            Ok(producer) => {
                send_record(&producer, &settings.topic, slot, &list, &mut payload, wait).await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            let mut pack = pack.lock().unwrap_or_else(|e| e.into_inner());
            pack.replace_after_failure(settings.kafka_timeout);
        } else {
            delivered.records.fetch_add(1, Relaxed);
            delivered.commands.fetch_add(list.len() as u64, Relaxed);
        }
        for w in list.drain(..) {
            let _ = w.done.send(result.clone());
        }
    }
}

/// Produce one envelope of `list`'s commands (its bytes written into
/// `payload`) to `slot`'s partition and wait (at most `wait`) for its
/// delivery report.
async fn send_record(
    producer: &FutureProducer,
    topic: &str,
    slot: usize,
    list: &[Waiting],
    payload: &mut Vec<u8>,
    wait: Duration,
) -> Result<(), HttpError> {
    let key = itoa::Buffer::new()
        .format(list[0].packed.command.todo_id)
        .to_string();
    payload.clear();
    let envelope = EnvelopeOf {
        items: list,
        packed: |w: &Waiting| &w.packed,
    };
    sonic_rs::to_writer(&mut *payload, &envelope)
        .map_err(|_| HttpError::internal("cannot encode commands"))?;
    let mut record = FutureRecord::to(topic)
        .key(&key)
        .payload(&payload[..])
        .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
            key: ENVELOPE_HEADER,
            value: Some("1"),
        }));
    if slot > 0 {
        record = record.partition(slot as i32 - 1);
    }
    let delivery = producer
        .send_result(record)
        .map_err(|_| HttpError::unavailable("the write queue is full", 1))?;
    match monoio::time::timeout(wait, delivery).await {
        Ok(Ok(Ok(_))) => Ok(()),
        _ => Err(not_confirmed()),
    }
}

fn not_confirmed() -> HttpError {
    HttpError::unavailable("the command broker did not confirm the write", 1)
}

/// The `todo-kafka-meta` thread: ask the broker how many partitions the
/// topic has, every 100 ms until it answers, then every [`METADATA_EVERY`].
fn learn_partitions(client: &FutureProducer, topic: &str, partitions: &AtomicU32) {
    loop {
        let asked = client
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5));
        let count = asked.ok().and_then(|m| {
            m.topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as u32)
        });
        match count {
            Some(n) if n > 0 => {
                if partitions.swap(n, Relaxed) != n {
                    eprintln!("todo-server: topic {topic}: {n} partitions");
                }
                std::thread::sleep(METADATA_EVERY);
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
