use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use std::time::{Duration, Instant, SystemTime};

fn now_us() -> u64 { SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as u64 }

fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap();
    let topic = std::env::var("TOPIC").unwrap_or("e2e".into());
    let parts: i32 = std::env::var("PARTS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let wait = std::env::var("W").unwrap_or("10".into());
    let rate: u64 = std::env::var("RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let _ = futures_lite::future::block_on(admin.create_topics(&[rdkafka::admin::NewTopic::new(&topic, parts, rdkafka::admin::TopicReplication::Fixed(1))], &rdkafka::admin::AdminOptions::new()));
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "e2e").set("fetch.wait.max.ms", &wait).set("auto.offset.reset", "latest").create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let t = topic.clone();
    let b = brokers.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(8));
        let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &b).set("linger.ms", "1").create().unwrap();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            let due = start + Duration::from_micros(n * 1_000_000 / rate);
            if let Some(w) = due.checked_duration_since(Instant::now()) { std::thread::sleep(w); }
            let payload = now_us().to_string();
            let key = n.to_string();
            let _ = p.send(BaseRecord::to(&t).key(&key).payload(&payload));
            p.poll(Duration::ZERO);
            n += 1;
        }
        p.flush(Duration::from_secs(5)).unwrap();
    });
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(21);
    while Instant::now() < end {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let sent: u64 = std::str::from_utf8(m.payload().unwrap()).unwrap().parse().unwrap();
            lat.push(now_us() - sent);
        }
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!("parts {parts} W {wait} rate {rate}: n {} p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms", lat.len(), p(0.5), p(0.9), p(0.99), p(1.0));
}
