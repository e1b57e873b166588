//! The broker's own produce-to-consume latency, the floor under a write's
//! time to visible: one producer (librdkafka, `linger.ms=1`) writes
//! `RATE` small messages a second for `SECS` seconds (10), each carrying
//! its send time, and one consumer of a group (with the worker's
//! `fetch.wait.max.ms`) reads them; prints the percentiles of receive time
//! - send time, for the whole run and for each tenth of it.
//!
//! ```sh
//! SD=$(scripts/services.sh start); . $SD/env
//! KAFKA_BROKERS=$KAFKA_BROKERS PARTS=6 RATE=1000 \
//!   cargo run --release -p todo-bench --example broker_latency
//! scripts/services.sh stop $SD
//! ```

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS")?;
    let parts: i32 = env_or("PARTS", "6").parse()?;
    let wait = env_or("W", "10");
    let rate: u64 = env_or("RATE", "1000").parse()?;
    let secs: u64 = env_or("SECS", "10").parse()?;
    let topic = format!("broker-latency-{parts}-{}", std::process::id());
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let new =
        rdkafka::admin::NewTopic::new(&topic, parts, rdkafka::admin::TopicReplication::Fixed(1));
    futures_lite::future::block_on(
        admin.create_topics(&[new], &rdkafka::admin::AdminOptions::new()),
    )?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &topic)
        .set("fetch.wait.max.ms", &wait)
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()?;
    let sending = std::thread::spawn({
        let topic = topic.clone();
        move || -> anyhow::Result<()> {
            // The consumer joins its group meanwhile.
            std::thread::sleep(Duration::from_secs(8));
            let start = Instant::now();
            for n in 0..rate * secs {
                let due = start + Duration::from_micros(n * 1_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (payload, key) = (now_us().to_string(), n.to_string());
                producer
                    .send(BaseRecord::to(&topic).key(&key).payload(&payload))
                    .map_err(|(e, _)| e)?;
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(60))?;
            Ok(())
        }
    });
    let mut waited = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs + 70);
    while Instant::now() < end && waited.len() < (rate * secs) as usize {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let sent: u64 = std::str::from_utf8(m?.payload().unwrap_or_default())?.parse()?;
            waited.push(now_us().saturating_sub(sent));
        }
    }
    sending
        .join()
        .map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    anyhow::ensure!(!waited.is_empty(), "nothing was consumed");
    let tenth = waited.len().div_ceil(10);
    let parts_of_run: Vec<Vec<u64>> = waited.chunks(tenth).map(<[u64]>::to_vec).collect();
    let line = |mut v: Vec<u64>| {
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
        format!(
            "p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        )
    };
    println!(
        "{parts} partitions, fetch.wait.max.ms {wait}, {rate}/s for {secs} s: {} consumed; {}",
        waited.len(),
        line(waited.clone())
    );
    for (i, part) in parts_of_run.into_iter().enumerate() {
        println!("  tenth {}: {}", i + 1, line(part));
    }
    Ok(())
}
