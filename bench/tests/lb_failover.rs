//! todo-lb in front of two real todo-server processes, under pipelined load:
//! one server is killed (SIGKILL) mid-run and started again; or replaced by
//! a rolling restart (a new process on its port, the old one drained). The
//! client must see no error either way: the balancer retries GETs on the
//! other server and ejects the dead one, and sends what a draining server
//! did not read (it answered `Connection: close`) elsewhere.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

fn todos_served(addr: SocketAddr) -> u64 {
    let (_, _, body) = get(addr, "/metrics").unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("todo_requests_total{route=\"todos_list\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_balancer_hides_a_killed_server_and_takes_it_back() {
    let dir = std::env::temp_dir().join(format!("todo-lb-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lb_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server_a = || server(a, &dir.join("a"), &["--cores", "1", "--instance", "1"]);
    let first_a = server_a();
    let _b = server(b, &dir.join("b"), &["--cores", "1", "--instance", "2"]);
    wait_ready(a, "/readyz", Duration::from_secs(20));
    wait_ready(b, "/readyz", Duration::from_secs(20));
    let lb = Command::new(sibling("todo-lb"))
        .args(["--listen", &lb_addr.to_string()])
        .args(["--upstream", &a.to_string(), "--upstream", &b.to_string()])
        .args(["--cores", "2", "--health-interval", "200ms"])
        .args(["--eject-after", "1", "--eject-for", "500ms"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _lb = Proc {
        child: lb,
        name: "todo-lb".into(),
    };
    wait_ready(lb_addr, "/readyz", Duration::from_secs(20));

    let load = start_bench(
        &format!("http://{lb_addr}/todos?limit=1"),
        &["-c", "64", "-p", "16", "-d", "7s", "-t", "1"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    // SIGKILL: no drain, connections reset mid-batch.
    drop(first_a);
    std::thread::sleep(Duration::from_millis(2000));
    let _second_a = server_a();
    wait_ready(a, "/readyz", Duration::from_secs(20));
    let before = todos_served(a);
    // Health checks every 200 ms bring it back; give the load time to reach it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while todos_served(a) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let reached = todos_served(a) - before;

    let report = finish_bench(load);
    eprintln!("{report:?}");
    for key in ["framing_errors", "connect_errors", "io_errors"] {
        assert_eq!(num(&report, key), 0, "{key}: {report:?}");
    }
    let wrong = report.get("wrong_status").unwrap();
    assert!(
        wrong.as_object().is_none_or(|o| o.is_empty()),
        "the killed server showed through: {report:?}"
    );
    assert!(num(&report, "responses") > 10_000, "{report:?}");
    assert!(reached > 0, "the restarted server got no traffic back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rolling_restart_behind_the_balancer_is_invisible() {
    ensure_migrate_req();
    let dir = std::env::temp_dir().join(format!("todo-lb-rolling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lb_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut old_a = server(a, &dir.join("a"), &["--cores", "1", "--instance", "1"]);
    let _b = server(b, &dir.join("b"), &["--cores", "1", "--instance", "2"]);
    wait_ready(a, "/readyz", Duration::from_secs(20));
    wait_ready(b, "/readyz", Duration::from_secs(20));
    let lb = Command::new(sibling("todo-lb"))
        .args(["--listen", &lb_addr.to_string()])
        .args(["--upstream", &a.to_string(), "--upstream", &b.to_string()])
        .args(["--cores", "2", "--health-interval", "200ms"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _lb = Proc {
        child: lb,
        name: "todo-lb".into(),
    };
    wait_ready(lb_addr, "/readyz", Duration::from_secs(20));
    let load = start_bench(
        &format!("http://{lb_addr}/todos?limit=1"),
        &["-c", "64", "-p", "16", "-d", "6s", "-t", "1"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let _new_a = server(a, &dir.join("a2"), &["--cores", "1", "--instance", "3"]);
    std::thread::sleep(Duration::from_millis(1000));
    old_a.terminate();
    assert_eq!(old_a.wait_exit(Duration::from_secs(20)), Some(0));
    let report = finish_bench(load);
    eprintln!("{report:?}");
    for key in ["framing_errors", "connect_errors", "io_errors"] {
        assert_eq!(num(&report, key), 0, "{key}: {report:?}");
    }
    let wrong = report.get("wrong_status").unwrap();
    assert!(
        wrong.as_object().is_none_or(|o| o.is_empty()),
        "the restart showed through: {report:?}"
    );
    assert!(num(&report, "responses") > 10_000, "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
