//! Helpers for tests that run the binaries as separate processes: servers,
//! todo-lb and todo-bench, talking over real loopback sockets.
#![allow(dead_code, unused_imports)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use todo_testkit::http::{read_response, Response};
pub use todo_testkit::process::{bin, free_port, temp_dir, wait_until, Proc};

pub const BENCH: &str = env!("CARGO_BIN_EXE_todo-bench");

/// An embedded-default todo-server on `addr` with a data directory of its
/// own, ready (its `listening on` line) when this returns; `extra` are more
/// flags.
pub fn server(addr: SocketAddr, data_dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("todo-server"));
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--seed", "100"])
        .args(extra)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::null());
    Proc::spawn(&format!("todo-server {addr}"), cmd, Duration::from_secs(20))
}

/// One `GET` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    read_response(&mut s, &mut Vec::new())
        .ok_or_else(|| std::io::Error::other(format!("no response to GET {path}")))
}

/// Wait until `GET path` on `addr` answers 200 (a readiness endpoint).
pub fn wait_ready(addr: SocketAddr, path: &str, limit: Duration) {
    wait_until(&format!("{addr}{path} ready"), limit, || {
        get(addr, path).ok().filter(|r| r.status == 200).map(|_| ())
    })
}

/// Requests answered 200 on `GET /todos` by the server at `addr`, from its
/// `/metrics`: how a test knows load reaches a server.
pub fn todos_served(addr: SocketAddr) -> u64 {
    get(addr, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("todo_requests_total{route=\"todos_list\",status=\"200\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A metric without labels from the `/metrics` of the server at `addr`.
pub fn gauge(addr: SocketAddr, name: &str) -> u64 {
    get(addr, "/metrics")
        .map(|r| r.text())
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Wait (20 s at most) until the server at `addr` has answered `more` list
/// requests beyond `from`; returns its count.
pub fn wait_served(addr: SocketAddr, from: u64, more: u64) -> u64 {
    wait_until(
        &format!("{addr} answering {more} more requests"),
        Duration::from_secs(20),
        || {
            let n = todos_served(addr);
            (n >= from + more).then_some(n)
        },
    )
}

/// Run todo-bench with `args` (plus `--json`) and parse its report.
pub fn bench(url: &str, args: &[&str]) -> sonic_rs::Value {
    let out = Command::new(BENCH)
        .arg(url)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    parse_report(&out)
}

/// Start todo-bench in the background; [`finish_bench`] collects its report.
pub fn start_bench(url: &str, args: &[&str]) -> Child {
    Command::new(BENCH)
        .arg(url)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn finish_bench(child: Child) -> sonic_rs::Value {
    parse_report(&child.wait_with_output().unwrap())
}

fn parse_report(out: &std::process::Output) -> sonic_rs::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    sonic_rs::from_str(line).unwrap_or_else(|e| {
        panic!(
            "todo-bench report: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn num(v: &sonic_rs::Value, key: &str) -> u64 {
    use sonic_rs::JsonValueTrait;
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("{key} missing in {v:?}"))
}

pub fn float(v: &sonic_rs::Value, key: &str) -> f64 {
    use sonic_rs::JsonValueTrait;
    v.get(key)
        .and_then(|x| x.as_f64())
        .unwrap_or_else(|| panic!("{key} missing in {v:?}"))
}

/// net.ipv4.tcp_migrate_req must be 1 for a closing listener to hand its
/// queued connections to the other process on the port (tuning/apply.sh sets
/// it). Set it here when we may (root), as the operator would.
pub fn ensure_migrate_req() {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    let now = std::fs::read_to_string(path).unwrap_or_default();
    if now.trim() != "1" {
        std::fs::write(path, "1").unwrap_or_else(|e| {
            panic!("{path} is {now:?} and cannot be set ({e}): run tuning/apply.sh as root")
        });
    }
}

/// The load saw no error at all: no connect, io or framing error and no
/// unexpected status.
pub fn assert_clean(report: &sonic_rs::Value) {
    use sonic_rs::{JsonContainerTrait, JsonValueTrait};
    for key in ["framing_errors", "connect_errors", "io_errors"] {
        assert_eq!(num(report, key), 0, "{key} in {report:?}");
    }
    let wrong = report.get("wrong_status").unwrap();
    assert!(
        wrong.as_object().is_none_or(|o| o.is_empty()),
        "wrong statuses: {report:?}"
    );
}
