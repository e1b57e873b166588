//! The broker's own produce rate, the peer of todo-server's accepted writes:
//! the same client library and settings the server uses (idempotent, acks=all,
//! linger 1 ms), the same message size, a fixed window of messages in flight,
//! every delivery report checked.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct Produced {
    pub acked: u64,
    pub failed: u64,
    pub seconds: f64,
}

pub fn produce(
    brokers: &str,
    topic: &str,
    size: usize,
    window: usize,
    duration: Duration,
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the producer")?;
    // The topic of its own, so no worker reads these messages.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("admin client")?;
    let new = rdkafka::admin::NewTopic::new(topic, 6, rdkafka::admin::TopicReplication::Fixed(1));
    let _ = futures_lite::future::block_on(
        admin.create_topics(&[new], &rdkafka::admin::AdminOptions::new()),
    );
    let payload = vec![b'x'; size];
    let mut inflight = VecDeque::with_capacity(window);
    let (mut acked, mut failed, mut key) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let deadline = started + duration;
    let mut settle = |f: rdkafka::producer::DeliveryFuture| match futures_lite::future::block_on(f)
    {
        Ok(Ok(_)) => acked += 1,
        _ => failed += 1,
    };
    while Instant::now() < deadline {
        key += 1;
        let k = key.to_string();
        match producer.send_result(FutureRecord::to(topic).key(&k).payload(&payload)) {
            Ok(f) => inflight.push_back(f),
            Err(_) => {
                if let Some(f) = inflight.pop_front() {
                    settle(f);
                }
                continue;
            }
        }
        if inflight.len() >= window {
            settle(inflight.pop_front().expect("non-empty"));
        }
    }
    for f in inflight {
        settle(f);
    }
    Ok(Produced {
        acked,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    })
}
