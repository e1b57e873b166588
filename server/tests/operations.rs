//! What operators and retrying clients rely on, over real sockets: the
//! `Idempotency-Key` on writes (both modes, across servers and restarts),
//! `GET /commands/{id}` answering `pending` on every server until the
//! worker applies the command, request ids and trace context from the
//! request to the worker's log, and the access log.

mod common;

use std::time::Duration;

use common::api::request_with;
use common::{Response, Server};
use sonic_rs::JsonValueTrait;
use todo_testkit::services::Env;

const SECRET: &str = "operations-test-secret-0123456789abcdef";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn keyed(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Response {
    server.request(&request_with(
        method,
        path,
        Some(token),
        Some(body),
        &[("Idempotency-Key", key)],
    ))
}

/// (command id, todo id) of a 202.
fn ids(r: &Response) -> (u64, u64) {
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    (
        v["command_id"].as_u64().unwrap(),
        v["todo_id"].as_u64().unwrap(),
    )
}

fn error_code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_string()
}

/// The ids of `owner`'s todos.
fn owned(server: &Server, owner: &str) -> Vec<u64> {
    let r = server.get(&format!("/todos?owner={owner}&limit=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    common::api::ids(&r)
}

#[test]
fn a_keyed_create_is_applied_once_across_retries_and_a_restart() {
    let server = Server::start("legacy", &[]);
    let token = server.token("ida");
    let body = r#"{"public":true,"title":"once only"}"#;
    let first = ids(&keyed(&server, &token, "POST", "/todos", "k-1", body));
    let again = keyed(&server, &token, "POST", "/todos", "k-1", body);
    assert_eq!(ids(&again), first, "the first answer again");
    assert_eq!(
        again.header("location"),
        Some(format!("/commands/{}", first.0).as_str())
    );

    // The same key with another body, or another method and path: 422.
    let other = keyed(
        &server,
        &token,
        "POST",
        "/todos",
        "k-1",
        r#"{"public":true,"title":"twice"}"#,
    );
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(error_code(&other), "idempotency_key_reused");
    let put = keyed(
        &server,
        &token,
        "PUT",
        &format!("/todos/{}", first.1),
        "k-1",
        body,
    );
    assert_eq!(put.status, 422);
    // Malformed keys: 400, nothing accepted.
    for bad in ["", &"k".repeat(256), "caf\u{e9}"] {
        let r = keyed(&server, &token, "POST", "/todos", bad, body);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert_eq!(error_code(&r), "invalid_header");
    }
    // Keys are per user.
    let other_user = server.token("joe");
    let theirs = ids(&keyed(&server, &other_user, "POST", "/todos", "k-1", body));
    assert_ne!(theirs, first);
    // An update and a delete take keys too.
    let path = format!("/todos/{}", first.1);
    let update = ids(&keyed(
        &server,
        &token,
        "PUT",
        &path,
        "k-2",
        r#"{"completed":true}"#,
    ));
    assert_eq!(
        ids(&keyed(
            &server,
            &token,
            "PUT",
            &path,
            "k-2",
            r#"{"completed":true}"#
        )),
        update
    );

    // After a restart the key still stands for the first command.
    let data = server.kill();
    let server = Server::start_in("legacy", data, &[]);
    assert_eq!(
        ids(&keyed(&server, &token, "POST", "/todos", "k-1", body)),
        first
    );
    let r = keyed(
        &server,
        &token,
        "POST",
        "/todos",
        "k-1",
        r#"{"public":true,"title":"x"}"#,
    );
    assert_eq!(r.status, 422);
    assert_eq!(owned(&server, "ida"), vec![first.1], "one todo, once");
    let todo = server.get(&path).json();
    assert_eq!(todo["completed"].as_bool(), Some(true));
}

#[test]
fn the_access_log_writes_json_lines_naming_the_instance() {
    let server = Server::start(
        "legacy",
        &["--access-log", "on", "--instance-name", "alpha-1"],
    );
    let token = server.token("logan");
    let read = server.request(&request_with(
        "GET",
        "/todos?limit=1",
        None,
        None,
        &[("X-Request-Id", "req-read-1")],
    ));
    assert_eq!(read.status, 200);
    assert_eq!(read.header("x-request-id"), Some("req-read-1"));
    let write = server.request(&request_with(
        "POST",
        "/todos",
        Some(&token),
        Some(r#"{"public":true,"title":"logged"}"#),
        &[("traceparent", TRACEPARENT)],
    ));
    assert_eq!(write.status, 202, "{}", write.text());
    let write_id = write.header("x-request-id").expect("a made id").to_string();
    assert_eq!(write_id.len(), 24);
    let tp = write.header("traceparent").expect("traceparent echoed");
    assert!(tp.starts_with(&format!("00-{TRACE_ID}-")), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "a new parent id: {tp}");
    let mine = server.call("GET", "/todos?mine=true", Some(&token), None);
    assert_eq!(mine.status, 200);
    let mine_id = mine
        .header("x-request-id")
        .expect("logged, so made")
        .to_string();

    // Lines reach standard output within about a second.
    let lines: Vec<sonic_rs::Value> =
        common::wait_until("three access log lines", Duration::from_secs(10), || {
            let lines: Vec<sonic_rs::Value> = server
                .stdout()
                .lines()
                .map(|l| sonic_rs::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            (lines.len() >= 3).then_some(lines)
        });
    for line in &lines {
        assert_eq!(line["instance"].as_str(), Some("alpha-1"));
        assert!(line["core"].as_u64().unwrap() < 2);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(line["bytes"].as_u64().unwrap() > 0);
        assert!(line["duration_us"].as_u64().is_some());
    }
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"].as_str() == Some(id))
            .unwrap_or_else(|| panic!("no line for {id}"))
    };
    let r = by_id("req-read-1");
    assert_eq!(r["method"].as_str(), Some("GET"));
    assert_eq!(r["path"].as_str(), Some("/todos"));
    assert_eq!(r["query"].as_str(), Some("limit=1"));
    assert_eq!(r["status"].as_u64(), Some(200));
    assert!(r.get("user").is_none());
    let w = by_id(&write_id);
    assert_eq!(w["method"].as_str(), Some("POST"));
    assert_eq!(w["status"].as_u64(), Some(202));
    assert_eq!(w["user"].as_str(), Some("logan"));
    assert_eq!(by_id(&mine_id)["user"].as_str(), Some("logan"));
}

#[test]
fn without_the_log_ids_are_echoed_only_when_sent_and_sampling_thins_it() {
    let quiet = Server::start("legacy", &[]);
    let r = quiet.get("/todos?limit=1");
    assert_eq!(r.header("x-request-id"), None, "the hot path makes none");
    let r = quiet.request(&request_with(
        "GET",
        "/todos?limit=1",
        None,
        None,
        &[("X-Request-Id", "abc.123")],
    ));
    assert_eq!(r.header("x-request-id"), Some("abc.123"));
    // An id that cannot be echoed safely is replaced.
    let r = quiet.request(&request_with(
        "GET",
        "/livez",
        None,
        None,
        &[("X-Request-Id", "a\"b")],
    ));
    assert_eq!(r.header("x-request-id").map(str::len), Some(24));

    // One core, one in three requests logged.
    let sampled = Server::start("legacy", &["--cores", "1", "--access-log", "sample:3"]);
    for _ in 0..9 {
        assert_eq!(sampled.get("/todos?limit=1").status, 200);
    }
    let n = common::wait_until("three sampled lines", Duration::from_secs(10), || {
        let n = sampled.stdout().lines().count();
        (n >= 3).then_some(n)
    });
    assert_eq!(n, 3);
    assert!(quiet.stdout().is_empty());
}

// The distributed path.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn distributed(env: &Env, instance: u16) -> Server {
    let mut vars = env.vars();
    vars.push(("JWT_SECRET", SECRET.to_string()));
    vars.push(("TODO_INSTANCE", instance.to_string()));
    let server = Server::start_with("legacy", common::temp_dir("operations"), &[], &vars);
    common::wait_until("ready", Duration::from_secs(30), || {
        (server.get("/readyz").status == 200).then_some(())
    });
    server
}

fn status(server: &Server, command_id: u64) -> (u16, String) {
    let r = server.get(&format!("/commands/{command_id}"));
    let status = if r.status == 200 {
        r.json()["status"].as_str().unwrap().to_string()
    } else {
        String::new()
    };
    (r.status, status)
}

#[test]
fn a_keyed_create_retried_on_another_server_and_after_a_restart_is_one_todo() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    let _worker = env.start_worker();
    let a = distributed(&env, 1);
    let b = distributed(&env, 2);
    let token = Server::token_with_secret(SECRET, "ivy");
    let body = r#"{"public":true,"title":"idempotent across servers"}"#;

    let first = ids(&keyed(&a, &token, "POST", "/todos", "retry-1", body));
    assert_eq!(
        ids(&keyed(&b, &token, "POST", "/todos", "retry-1", body)),
        first
    );
    let other = keyed(
        &b,
        &token,
        "POST",
        "/todos",
        "retry-1",
        r#"{"public":true,"title":"no"}"#,
    );
    assert_eq!(other.status, 422, "{}", other.text());
    assert_eq!(error_code(&other), "idempotency_key_reused");

    // A restarted server answers the same.
    a.kill();
    let a = distributed(&env, 1);
    assert_eq!(
        ids(&keyed(&a, &token, "POST", "/todos", "retry-1", body)),
        first
    );
    common::wait_until("applied", Duration::from_secs(30), || {
        (status(&b, first.0).1 == "applied").then_some(())
    });
    let db = rt.block_on(env.db());
    let count: i64 = rt
        .block_on(db.query_one(
            "SELECT count(*) FROM todos WHERE title = 'idempotent across servers'",
            &[],
        ))
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "applied once");
    let processed: i64 = rt
        .block_on(db.query_one(
            "SELECT count(*) FROM processed_commands WHERE user_name = 'ivy'",
            &[],
        ))
        .unwrap()
        .get(0);
    assert_eq!(processed, 1, "one command");
}

#[test]
fn a_command_is_pending_on_every_server_until_applied_and_traced_to_the_worker() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    // The schema, without a worker: commands stay pending until one runs.
    rt.block_on(async {
        let pool = todo_store::pg::pool(&env.database_url, 1).unwrap();
        let mut client = pool.get().await.unwrap();
        todo_store::pg::migrate_and_seed(&mut client, 10)
            .await
            .unwrap();
    });
    let a = distributed(&env, 1);
    let b = distributed(&env, 2);
    let token = Server::token_with_secret(SECRET, "pam");

    let r = a.request(&request_with(
        "POST",
        "/todos",
        Some(&token),
        Some(r#"{"public":true,"title":"followed"}"#),
        &[("traceparent", TRACEPARENT), ("X-Request-Id", "write-1")],
    ));
    let (command_id, _) = ids(&r);
    assert_eq!(r.header("x-request-id"), Some("write-1"));
    for server in [&a, &b] {
        assert_eq!(status(server, command_id), (200, "pending".into()));
    }
    // Never accepted: 404.
    assert_eq!(status(&b, command_id + 1).0, 404);

    let dir = common::temp_dir("worker-log");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("stdout.log");
    let file = std::fs::File::create(&log).unwrap();
    let _worker = env.start_worker_with_stdout(file);
    common::wait_until(
        "applied on the other server",
        Duration::from_secs(30),
        || (status(&b, command_id) == (200, "applied".into())).then_some(()),
    );
    // The worker's line for the command carries the request's trace.
    let line = common::wait_until("the worker's line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| sonic_rs::from_str::<sonic_rs::Value>(l).ok())
            .find(|v| v["command_id"].as_u64() == Some(command_id))
    });
    let tp = line["traceparent"].as_str().expect("traceparent logged");
    assert!(tp.starts_with(&format!("00-{TRACE_ID}-")), "{tp}");
    assert_eq!(line["request_id"].as_str(), Some("write-1"));
    assert_eq!(line["result"].as_str(), Some("applied"));
}
