//! The worker's own measurements, read from its `/metrics` while it applies
//! commands from a real broker into real PostgreSQL: batch sizes and
//! transaction times, redeliveries skipped, and the consumer lag, which
//! grows while PostgreSQL is stopped and falls back to 0 once it is back.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use todo_testkit::http::{read_response, series, value};
use todo_testkit::process::wait_until;
use todo_testkit::services::{Commands, Env, Private};

/// Every series of a scrape: `name{labels}` -> value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(r.status, 200);
    series(&r.text())
}

/// Scrape until `series` reads `want` (30 s at most); that scrape. (The
/// tests block their runtime meanwhile: nothing of theirs runs on it.)
fn wait_series(addr: SocketAddr, series: &str, want: f64) -> HashMap<String, f64> {
    wait_until(
        &format!("{series} at {want}"),
        Duration::from_secs(30),
        || {
            let m = scrape(addr);
            (m.get(series) == Some(&want)).then_some(m)
        },
    )
}

/// A histogram's buckets, in order of their bounds: (le, cumulative count).
fn buckets(m: &HashMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut out: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            Some((le.parse().unwrap(), *v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[tokio::test]
async fn batches_their_transactions_and_skipped_redeliveries_are_measured() {
    let env = Env::new(2).await;
    let mut worker = env.start_worker();
    let addr = worker.addr();
    let producer = env.producer();
    let mut cmds = Commands::new(21);
    let creates: Vec<_> = (0..10)
        .map(|i| cmds.create("hana", &format!("h{i}")))
        .collect();
    env.produce(&producer, &creates).await;
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", 10)
            .await,
        10
    );
    // Three of them delivered again, as after a crash before the offsets
    // were committed: skipped, and counted.
    env.produce(&producer, &creates[..3]).await;
    let m = wait_series(addr, "todo_worker_redeliveries_skipped_total", 3.0);

    assert_eq!(
        value(&m, "todo_worker_commands_total{result=\"applied\"}"),
        10.0
    );
    assert_eq!(
        value(&m, "todo_worker_commands_total{result=\"duplicate\"}"),
        3.0
    );
    let batches = value(&m, "todo_worker_batches_total");
    assert!(
        batches >= 2.0,
        "the copies came after the first ten were committed"
    );
    for name in [
        "todo_worker_batch_commands",
        "todo_worker_apply_duration_seconds",
    ] {
        assert_eq!(value(&m, &format!("{name}_count")), batches, "{name}");
        let b = buckets(&m, name);
        assert!(b.len() > 10, "{name}: {b:?}");
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: {b:?}");
        assert_eq!(b.last(), Some(&(f64::INFINITY, batches)), "{name}");
    }
    assert_eq!(value(&m, "todo_worker_batch_commands_sum"), 13.0);
    // No batch of this test holds more than its thirteen commands.
    let b = buckets(&m, "todo_worker_batch_commands");
    assert_eq!(b.iter().find(|(le, _)| *le == 20.0).unwrap().1, batches);
    let spent = value(&m, "todo_worker_apply_duration_seconds_sum");
    assert!(spent > 0.0 && spent < 60.0, "{spent}");

    // Both partitions reported, and nothing left to consume.
    let m = wait_series(addr, "todo_worker_consumer_lag{partition=\"1\"}", 0.0);
    assert_eq!(value(&m, "todo_worker_consumer_lag{partition=\"0\"}"), 0.0);
    worker.kill();
}

#[tokio::test]
async fn the_lag_counts_what_the_group_has_not_committed() {
    let mut postgres = Private::postgres();
    let env = Env::with_all(1, None, None, Some(postgres.database_url())).await;
    let mut worker = env.start_worker();
    let addr = worker.addr();
    let producer = env.producer();
    let mut cmds = Commands::new(22);
    let lag = "todo_worker_consumer_lag{partition=\"0\"}";

    let before: Vec<_> = (0..3)
        .map(|i| cmds.create("ivy", &format!("b{i}")))
        .collect();
    env.produce(&producer, &before).await;
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", 3)
            .await,
        3
    );
    wait_series(addr, lag, 0.0);

    // PostgreSQL away: the worker takes the next commands but cannot commit
    // them, so the group's offset stays and the lag is all of them.
    postgres.stop();
    let during: Vec<_> = (0..4)
        .map(|i| cmds.create("ivy", &format!("d{i}")))
        .collect();
    env.produce(&producer, &during).await;
    wait_series(addr, lag, 4.0);
    wait_series(
        addr,
        "todo_worker_dependency_up{dependency=\"postgresql\"}",
        0.0,
    );

    postgres.start();
    assert_eq!(
        env.wait_count("SELECT count(*) FROM processed_commands", 7)
            .await,
        7
    );
    wait_series(addr, lag, 0.0);
    worker.kill();
}
