//! Rolling restart on one box: server processes share one port through
//! SO_REUSEPORT; a new one starts, the old one drains (SIGTERM), under a
//! pipelined load. No connection may fail and no request may go unanswered:
//! requests pipelined behind a drained connection's last response are sent
//! again on a new connection by the client, as RFC 9112 §9.3.2 has it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

#[test]
fn a_rolling_restart_under_pipelined_load_loses_nothing() {
    ensure_migrate_req();
    let dir = temp_dir("rolling");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("http://{addr}/todos?limit=1");

    let mut old = server(addr, &dir.join("a"), &["--cores", "2", "--instance", "1"]);

    let load = start_bench(
        &url,
        &[
            "-c",
            "200",
            "-p",
            "16",
            "-d",
            "8s",
            "-t",
            "1",
            "--reconnect",
        ],
    );
    wait_served(addr, 0, 1_000);

    // Step 1: a new process joins the port (it is in the group once it says
    // it listens), the old one drains.
    let mut new = server(addr, &dir.join("b"), &["--cores", "2", "--instance", "2"]);
    old.terminate();
    let code = old.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "the old server drained and exited cleanly");

    // Step 2: and back, once the load runs on the new process, so both
    // directions are exercised under load.
    wait_served(addr, 0, 1_000);
    let mut third = server(addr, &dir.join("c"), &["--cores", "2", "--instance", "3"]);
    new.terminate();
    assert_eq!(new.wait_exit(Duration::from_secs(20)), Some(0));

    let report = finish_bench(load);
    eprintln!("{report:?}");
    assert_clean(&report);
    assert!(num(&report, "responses") > 10_000, "{report:?}");
    assert!(
        num(&report, "reconnects") > 0,
        "the drained connections were reopened: {report:?}"
    );
    // The survivor serves new connections.
    assert_eq!(get(addr, "/todos?limit=1").unwrap().status, 200);
    third.terminate();
    assert_eq!(third.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
