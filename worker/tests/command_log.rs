//! The command log on the worker's stdout, against a real broker and
//! PostgreSQL: records produced straight to the topic with the headers a
//! server sets (`x-request-id`, `traceparent`) come out as one JSON line per
//! command, carrying them, the outcome and the record's partition and
//! offset.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sonic_rs::JsonValueTrait;
use todo_model::{Fields, Op, TodoCommand};
use todo_testkit::process::Proc;
use todo_testkit::services::{worker_bin, Commands, Env};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A worker of `env` whose stdout lines come out of the receiver (the
/// command log is on by default: nothing here turns it on).
fn worker_with_stdout(env: &Env) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = Command::new(worker_bin());
    cmd.envs(env.vars())
        .env("TODO_WORKER_GROUP", &env.group)
        .env("TODO_WORKER_METRICS_LISTEN", "127.0.0.1:0")
        .env("TODO_SEED", "10")
        .env_remove("TODO_WORKER_COMMAND_LOG")
        .stdout(Stdio::piped());
    let mut worker = Proc::spawn("worker", cmd, Duration::from_secs(30));
    let stdout = worker.child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (worker, rx)
}

/// Produce `cmd` keyed by its todo, with `headers`; its (partition, offset).
async fn produce(
    env: &Env,
    producer: &FutureProducer,
    cmd: &TodoCommand,
    headers: Option<OwnedHeaders>,
) -> (i32, i64) {
    let payload = sonic_rs::to_vec(cmd).unwrap();
    let key = cmd.todo_id.to_string();
    let mut record = FutureRecord::to(&env.topic).key(&key).payload(&payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    (delivery.partition, delivery.offset)
}

/// Read stdout until a line for each of `ids` has come (30 s at most);
/// those lines, parsed, in the order of `ids`.
fn lines_for(rx: &mpsc::Receiver<String>, ids: &[u64]) -> Vec<sonic_rs::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut found: Vec<Option<sonic_rs::Value>> = vec![None; ids.len()];
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no command-log line for each of {ids:?}: {e}"));
        let v: sonic_rs::Value =
            sonic_rs::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["event"].as_str(), Some("command"), "{line}");
        if let Some(i) = ids
            .iter()
            .position(|id| v["command_id"].as_u64() == Some(*id))
        {
            found[i] = Some(v);
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn every_command_is_logged_with_its_result_and_trace_context() {
    let env = Env::new(2).await;
    let (mut worker, rx) = worker_with_stdout(&env);
    let producer = env.producer();
    let mut cmds = Commands::new(31);

    let started = SystemTime::now();
    let create = cmds.create("juno", "traced");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "x-request-id",
            value: Some("req-31"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(TRACEPARENT),
        });
    let (partition, offset) = produce(&env, &producer, &create, Some(headers)).await;
    // Someone else's update of it, with no headers: rejected.
    let stolen = cmds.make(
        Op::Update,
        Some(create.todo_id),
        "kim",
        Fields {
            title: Some("mine".into()),
            ..Fields::default()
        },
    );
    let (stolen_partition, stolen_offset) = produce(&env, &producer, &stolen, None).await;
    let lines = lines_for(&rx, &[create.command_id, stolen.command_id]);

    let line = &lines[0];
    assert_eq!(line["traceparent"].as_str(), Some(TRACEPARENT), "{line:?}");
    assert_eq!(line["request_id"].as_str(), Some("req-31"));
    assert_eq!(line["todo_id"].as_u64(), Some(create.todo_id));
    assert_eq!(line["op"].as_str(), Some("create"));
    assert_eq!(line["user"].as_str(), Some("juno"));
    assert_eq!(line["result"].as_str(), Some("applied"));
    assert!(line.get("reason").is_none(), "{line:?}");
    assert_eq!(line["partition"].as_i64(), Some(i64::from(partition)));
    assert_eq!(line["offset"].as_i64(), Some(offset));
    // RFC 3339, UTC, microseconds, and now.
    let time = line["time"].as_str().expect("a time");
    let (_, fraction) = time.rsplit_once('.').expect("a fraction");
    assert!(
        fraction.len() == 7 && fraction.ends_with('Z'),
        "six digits and Z: {time}"
    );
    let at = humantime::parse_rfc3339(time).expect("RFC 3339");
    assert!(at >= started && at <= SystemTime::now(), "{time}");

    let line = &lines[1];
    assert_eq!(line["result"].as_str(), Some("rejected"));
    assert_eq!(line["reason"].as_str(), Some("not_found"), "another's todo");
    assert_eq!(line["user"].as_str(), Some("kim"));
    assert!(line.get("request_id").is_none() && line.get("traceparent").is_none());
    assert_eq!(
        (line["partition"].as_i64(), line["offset"].as_i64()),
        (Some(i64::from(stolen_partition)), Some(stolen_offset))
    );

    // The same record again (a redelivery): logged as a duplicate, with the
    // headers of the copy.
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some(TRACEPARENT),
    });
    let (_, again) = produce(&env, &producer, &create, Some(headers)).await;
    let line = &lines_for(&rx, &[create.command_id])[0];
    assert_eq!(line["result"].as_str(), Some("duplicate"));
    assert_eq!(line["offset"].as_i64(), Some(again));
    assert_eq!(line["traceparent"].as_str(), Some(TRACEPARENT));
    worker.kill();
}
