//! The distributed path end to end, over real services: servers produce to
//! the Kafka-protocol broker, todo-worker applies to PostgreSQL and publishes
//! through Redis, every core of every server converges.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{read_response, Server};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};
use todo_testkit::http::scrape;
use todo_testkit::services::{self, Env};

const SECRET: &str = "distributed-test-secret-0123456789abcdef";

fn start_server(env: &Env, instance: u16, extra: &[&str]) -> Server {
    let mut vars = env.vars();
    vars.push(("JWT_SECRET", SECRET.to_string()));
    vars.push(("TODO_INSTANCE", instance.to_string()));
    let server = Server::start_with("legacy", common::temp_dir("dist"), extra, &vars);
    // Ready once a snapshot arrived from Redis.
    common::wait_until("server ready", Duration::from_secs(30), || {
        (server.get("/readyz").status == 200).then_some(())
    });
    server
}

/// How many of `accepted` (command id, todo id) are recorded as applied in
/// PostgreSQL, and how many of their todos are rows there.
fn applied_and_rows(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    accepted: &[(u64, u64)],
) -> (i64, i64) {
    rt.block_on(async {
        let db = env.db().await;
        let commands: Vec<i64> = accepted.iter().map(|(c, _)| *c as i64).collect();
        let todos: Vec<i64> = accepted.iter().map(|(_, t)| *t as i64).collect();
        let count = |sql: &'static str, ids: Vec<i64>| {
            let db = &db;
            async move { db.query_one(sql, &[&ids]).await.unwrap().get::<_, i64>(0) }
        };
        (
            count(
                "SELECT count(*) FROM processed_commands WHERE command_id = ANY($1) AND outcome = 'applied'",
                commands,
            )
            .await,
            count("SELECT count(*) FROM todos WHERE id = ANY($1)", todos).await,
        )
    })
}

/// Runtime for the harness's async parts (topic, database, Redis setup).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn writes_from_many_clients_reach_every_server() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    let mut worker = env.start_worker();
    let a = start_server(&env, 1, &[]);
    let b = start_server(&env, 2, &[]);
    let token = Server::token_with_secret(SECRET, "alice");

    // 8 clients x 25 writes, alternating servers; each write is timed from
    // its request until the todo shows in GET /todos on BOTH servers.
    let written: Vec<(u64, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let (a, b, token) = (&a, &b, &token);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..25 {
                        let server = if (c + i) % 2 == 0 { a } else { b };
                        let started = Instant::now();
                        let r = server.send_json(
                            "POST",
                            "/todos",
                            token,
                            &format!(r#"{{"public":true,"title":"c{c} w{i}"}}"#),
                        );
                        assert_eq!(r.status, 202, "{}", r.text());
                        mine.push((r.json()["todo_id"].as_u64().unwrap(), started));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending = written;
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} writes never became visible",
            pending.len()
        );
        let (on_a, on_b) = (a.newest_ids(1000), b.newest_ids(1000));
        let now = Instant::now();
        pending.retain(|(id, started)| {
            let seen = on_a.contains(id) && on_b.contains(id);
            if seen {
                latencies.push(now - *started);
            }
            !seen
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "write-to-visible on both servers, {} writes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    assert_eq!(latencies.len(), 200);

    // Every core of both servers serves the same snapshot: the same version
    // everywhere (one version is one rendering), and the same bytes.
    let newest = a.version().max(b.version());
    a.wait_every_core_at(newest, 10);
    b.wait_every_core_at(newest, 10);
    let cores = [a.core_versions(), b.core_versions()].concat();
    assert!(
        cores.iter().all(|&v| v == newest),
        "versions per core: {cores:?}"
    );
    let mut bodies = std::collections::HashSet::new();
    for server in [&a, &b] {
        let mut s = server.connect();
        s.write_all(b"GET /todos?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        bodies.insert(read_response(&mut s, &mut Vec::new()).unwrap().body);
    }
    assert_eq!(bodies.len(), 1, "servers disagree at one version");
    // The outcome is recorded and served from PostgreSQL.
    let id = a.newest_ids(1)[0];
    assert_eq!(
        a.get(&format!("/todos/{id}")).json()["owner"].as_str(),
        Some("alice")
    );
    worker.kill();
}

#[test]
fn a_stopped_broker_gives_503_never_202_and_writes_flow_after() {
    /// How long the broker stays away: longer than any timeout of the
    /// producer, the consumer group or the worker's backoff.
    const DOWN: Duration = Duration::from_secs(30);
    let mut broker = services::Private::broker();
    let rt = runtime();
    let env = rt.block_on(Env::with(2, Some(broker.addr()), None));
    let mut worker = env.start_worker();
    let server = start_server(&env, 3, &["--kafka-timeout", "2s"]);
    let token = Server::token_with_secret(SECRET, "dana");
    let write = |title: &str| {
        server.send_json(
            "POST",
            "/todos",
            &token,
            &format!(r#"{{"public":true,"title":"{title}"}}"#),
        )
    };
    let before = write("before");
    assert_eq!(before.status, 202, "{}", before.text());
    let mut accepted = vec![before.json()["todo_id"].as_u64().unwrap()];

    broker.kill();
    let down = Instant::now();
    let mut refused = 0;
    while down.elapsed() < DOWN {
        let started = Instant::now();
        let r = write("during");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.header("retry-after").is_some());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "503 took {:?}",
            started.elapsed()
        );
        refused += 1;
        // Reads go on meanwhile.
        assert_eq!(server.get("/todos?limit=1").status, 200);
    }
    assert!(
        refused >= 5,
        "{refused} writes tried while the broker was away"
    );
    assert_eq!(
        worker.child.try_wait().unwrap(),
        None,
        "the worker rides the outage out"
    );
    // ... and says so in its metrics.
    let kafka_up = r#"todo_worker_dependency_up{dependency="kafka"}"#;
    let kafka_outages = r#"todo_worker_outages_total{dependency="kafka"}"#;
    common::wait_until(
        "the worker reporting the broker away",
        Duration::from_secs(30),
        || (scrape(worker.addr(), kafka_up) == Some(0)).then_some(()),
    );
    assert!(scrape(worker.addr(), kafka_outages) >= Some(1));

    broker.start();
    common::wait_until("writes flow again", Duration::from_secs(60), || {
        let r = write("after");
        assert!(matches!(r.status, 202 | 503), "{} {}", r.status, r.text());
        (r.status == 202).then(|| accepted.push(r.json()["todo_id"].as_u64().unwrap()))
    });
    for i in 0..5 {
        let r = write(&format!("after {i}"));
        assert_eq!(r.status, 202, "{}", r.text());
        accepted.push(r.json()["todo_id"].as_u64().unwrap());
    }
    // Every accepted write is applied and visible, by the same worker.
    common::wait_until(
        "every accepted write visible",
        Duration::from_secs(60),
        || {
            let ids = server.newest_ids(50);
            accepted.iter().all(|id| ids.contains(id)).then_some(())
        },
    );
    assert!(server
        .get("/todos?limit=50")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["title"].as_str() != Some("during")));
    assert_eq!(worker.child.try_wait().unwrap(), None, "never restarted");
    assert_eq!(
        scrape(worker.addr(), kafka_up),
        Some(1),
        "back in the metrics"
    );
    let applied = r#"todo_worker_commands_total{result="applied"}"#;
    assert!(scrape(worker.addr(), applied) >= Some(accepted.len() as u64));
    worker.kill();
}

#[test]
fn writes_under_load_come_back_after_a_broker_restart_and_every_202_is_applied() {
    // Eight clients write without pause through the outage: each core's
    // packs always hold commands, so its senders never rest, and the
    // client replaced after the failure must be the one they use.
    let mut broker = services::Private::broker();
    let rt = runtime();
    let env = rt.block_on(Env::with(2, Some(broker.addr()), None));
    let _worker = env.start_worker();
    let server = start_server(&env, 4, &["--kafka-timeout", "2s"]);
    let token = Server::token_with_secret(SECRET, "lou");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let restarted = std::sync::Mutex::new(None::<Instant>);
    let after_restart = std::sync::atomic::AtomicUsize::new(0);
    let accepted: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let (server, token, stop) = (&server, &token, &stop);
                let (restarted, after_restart) = (&restarted, &after_restart);
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let mut i = 0;
                    // The deadline turns a failure below into a panic, not
                    // clients writing forever.
                    let deadline = Instant::now() + Duration::from_secs(150);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        i += 1;
                        let r = server.send_json(
                            "POST",
                            "/todos",
                            token,
                            &format!(r#"{{"public":true,"title":"c{c} w{i}"}}"#),
                        );
                        assert!(matches!(r.status, 202 | 503), "{} {}", r.status, r.text());
                        if r.status == 202 {
                            let v = r.json();
                            mine.push((
                                v["command_id"].as_u64().unwrap(),
                                v["todo_id"].as_u64().unwrap(),
                            ));
                            if restarted.lock().unwrap().is_some() {
                                after_restart.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        // Load, then the broker away for longer than the producer's
        // timeout, then back.
        common::wait_until("writes accepted", Duration::from_secs(30), || {
            let n: u64 = todo_testkit::http::scrape(
                server.addr,
                r#"todo_requests_total{route="todos_write",status="202"}"#,
            )
            .unwrap_or(0);
            (n >= 50).then_some(())
        });
        broker.kill();
        common::wait_until("writes refused", Duration::from_secs(30), || {
            let n = todo_testkit::http::scrape(
                server.addr,
                r#"todo_requests_total{route="todos_write",status="503"}"#,
            )
            .unwrap_or(0);
            (n >= 20).then_some(())
        });
        broker.start();
        *restarted.lock().unwrap() = Some(Instant::now());
        common::wait_until(
            "writes flowing again under load",
            Duration::from_secs(60),
            || (after_restart.load(std::sync::atomic::Ordering::Relaxed) >= 200).then_some(()),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // Every 202 applied, once.
    common::wait_until(
        "every accepted write applied",
        Duration::from_secs(60),
        || {
            let (outcomes, rows) = applied_and_rows(&rt, &env, &accepted);
            (outcomes == accepted.len() as i64 && rows == accepted.len() as i64).then_some(())
        },
    );
}

#[test]
fn redis_restarted_reads_never_fail_and_every_core_converges() {
    let mut redis = services::Private::redis();
    let rt = runtime();
    let env = rt.block_on(Env::with(
        2,
        None,
        Some(format!("redis://{}/", redis.addr())),
    ));
    let mut worker = env.start_worker();
    let server = start_server(&env, 4, &[]);
    let token = Server::token_with_secret(SECRET, "fred");

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A reader that must never see anything but 200 while Redis is away.
        let reader = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = server.get("/todos?limit=3");
                assert_eq!(r.status, 200, "a read failed while Redis was away");
                n += 1;
            }
            n
        });
        redis.kill();
        let stale =
            server.wait_for_secs("/readyz", 10, |r| r.json()["stale"].as_bool() == Some(true));
        assert_eq!(
            stale.json()["stale"].as_bool(),
            Some(true),
            "{}",
            stale.text()
        );
        assert!(server
            .get("/metrics")
            .text()
            .contains("todo_snapshot_stale{core=\"0\"} 1"));
        // Written while Redis is down: durable in Kafka, applied to PostgreSQL.
        let r = server.send_json(
            "POST",
            "/todos",
            &token,
            r#"{"public":true,"title":"while redis was away"}"#,
        );
        assert_eq!(r.status, 202);
        let id = r.json()["todo_id"].as_u64().unwrap();
        let command = r.json()["command_id"].as_u64().unwrap();
        // Applied to PostgreSQL while Redis is away (the outcome is read
        // from there), so the snapshot Redis gets back must come from it.
        server.wait_for_secs(&format!("/commands/{command}"), 30, |r| {
            r.status == 200 && r.json()["status"].as_str() == Some("applied")
        });
        redis.start(); // empty: no persistence
                       // Every core converges on one snapshot, holding the new todo.
        common::wait_until(
            "every core fresh, at one version, with the new todo first",
            Duration::from_secs(30),
            || {
                let versions = server.core_versions();
                let fresh = server
                    .per_core("todo_snapshot_stale")
                    .iter()
                    .all(|&s| s == 0);
                let one = versions.windows(2).all(|w| w[0] == w[1]);
                (fresh && one && server.newest_ids(1).first() == Some(&id)).then_some(())
            },
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    worker.kill();
}

/// A `GET /commands/{id}` answer saying the command was applied.
fn applied(r: &common::Response) -> bool {
    r.status == 200 && r.json()["status"].as_str() == Some("applied")
}

#[test]
fn postgresql_stopped_during_writes_loses_nothing_and_applies_everything_once() {
    let mut postgres = services::Private::postgres();
    let rt = runtime();
    let env = rt.block_on(Env::with_all(2, None, None, Some(postgres.database_url())));
    let mut worker = env.start_worker();
    let server = start_server(&env, 5, &[]);
    let token = Server::token_with_secret(SECRET, "gina");
    let write = |title: &str| server.create(&token, title);
    // Outside the snapshot, PostgreSQL answers: a todo that is not there.
    assert_eq!(server.get("/todos/12345").status, 404);
    let (before, _) = write("before");
    server.wait_for_secs(&format!("/commands/{before}"), 30, applied);

    postgres.stop();
    // Writes are durable in Kafka, so they are accepted; reads that need
    // PostgreSQL say it is away (503), never a false 404 or a 500. Ten
    // writes spread over the outage's 5 s (the pacing is the test's input).
    let during: Vec<(u64, u64)> = (0..10)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(500));
            write(&format!("during {i}"))
        })
        .collect();
    for path in [
        "/todos/12345".to_string(),
        format!("/commands/{}", during[0].0),
    ] {
        let r = server.get(&path);
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        server.get("/todos?limit=1").status,
        200,
        "the snapshot is served"
    );
    assert_eq!(worker.child.try_wait().unwrap(), None, "the worker waits");
    let pg_up = r#"todo_worker_dependency_up{dependency="postgresql"}"#;
    common::wait_until(
        "the worker reporting PostgreSQL away",
        Duration::from_secs(30),
        || (scrape(worker.addr(), pg_up) == Some(0)).then_some(()),
    );

    postgres.start();
    for (command, todo) in &during {
        // Pending (200) until the worker has committed it.
        let r = server.wait_for_secs(&format!("/commands/{command}"), 60, applied);
        assert_eq!(r.json()["status"].as_str(), Some("applied"), "{}", r.text());
        assert_eq!(server.get(&format!("/todos/{todo}")).status, 200);
    }
    // Each once: one recorded outcome and one row per command.
    let (outcomes, rows) = applied_and_rows(&rt, &env, &during);
    assert_eq!((outcomes, rows), (10, 10));
    assert_eq!(worker.child.try_wait().unwrap(), None, "never restarted");
    assert_eq!(scrape(worker.addr(), pg_up), Some(1), "back in the metrics");
    let outages = r#"todo_worker_outages_total{dependency="postgresql"}"#;
    assert!(scrape(worker.addr(), outages) >= Some(1));
    worker.kill();
}

#[test]
fn the_worker_and_a_server_killed_at_once_lose_and_double_nothing() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    let mut worker = env.start_worker();
    let a = start_server(&env, 8, &[]);
    let b = start_server(&env, 9, &[]);
    let token = Server::token_with_secret(SECRET, "ivan");
    let write = |server: &Server, title: String| server.create(&token, &title);
    let mut accepted: Vec<(u64, u64)> = (0..20).map(|i| write(&a, format!("a {i}"))).collect();

    // SIGKILL both at once, whatever they were doing.
    worker.kill();
    let _ = a.kill();
    // Writes go on through the other server meanwhile: durable in Kafka.
    accepted.extend((0..20).map(|i| write(&b, format!("b {i}"))));
    let _worker = env.start_worker();
    let a = start_server(&env, 8, &[]);
    accepted.extend((0..5).map(|i| write(&a, format!("a again {i}"))));

    // Every accepted write applied, visible on both servers, each once.
    for server in [&a, &b] {
        common::wait_until(
            "every accepted write visible",
            Duration::from_secs(60),
            || {
                let ids = server.newest_ids(100);
                accepted
                    .iter()
                    .all(|(_, todo)| ids.contains(todo))
                    .then_some(())
            },
        );
    }
    let (outcomes, rows) = applied_and_rows(&rt, &env, &accepted);
    assert_eq!((outcomes, rows), (45, 45));
}
