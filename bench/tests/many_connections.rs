//! As many concurrent keep-alive connections as this machine's open-files
//! limits allow, held by several client processes from several loopback
//! source addresses, while a pipelined client keeps measuring. Asserts that
//! every held connection is still served at the end, that the pipelined
//! client saw no error, and that an idle connection costs the server at most
//! 4 KiB of resident memory. The throughput ratio with and without the idle
//! connections is printed; bench/connections.sh measures it on release
//! binaries (speed is not asserted in tests).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Open files of this process (the servers raise soft to hard at start-up).
fn nofile_hard() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn idle_connections_cost_little_and_do_not_slow_the_pipelined_client() {
    let dir = temp_dir("many");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("http://{addr}/todos?limit=1");
    let server = server(addr, &dir, &["--cores", "2"]);

    // The server's budget: its open-files limit less what it keeps for
    // itself and for the pipelined client.
    let budget = nofile_hard().saturating_sub(1000).min(60_000) as usize;
    let holders = 4;
    let per = budget / holders;
    assert!(
        per >= 500,
        "open-files limit too low for this test: {}",
        nofile_hard()
    );
    let pipelined = ["-c", "50", "-p", "32", "-d", "3s", "-t", "1"];

    // Warm up, then the baseline: memory and throughput without idle
    // connections.
    bench(&url, &pipelined);
    let alone = bench(&url, &pipelined);
    // The pipelined client's connections are closed: nothing open but the
    // one asking.
    wait_until(
        "the pipelined client's connections closed",
        Duration::from_secs(10),
        || (gauge(addr, "todo_connections_open") <= 1).then_some(()),
    );
    let rss_before = server.rss();

    let hold_for = "14s";
    let holds: Vec<_> = (0..holders)
        .map(|i| {
            let per = per.to_string();
            let source = format!("127.0.0.{}", i + 2);
            start_bench(&url, &["--hold", &per, "--source", &source, "-d", hold_for])
        })
        .collect();
    // Connected, answered once, and quiet: every one has given its buffers
    // back (the server counts them).
    wait_until(
        "every held connection quiet",
        Duration::from_secs(12),
        || (gauge(addr, "todo_connections_quiet") >= (per * holders) as u64).then_some(()),
    );
    let rss_held = server.rss();
    let with_idle = bench(&url, &pipelined);

    let mut held = 0;
    for h in holds {
        let r = finish_bench(h);
        assert_eq!(num(&r, "failed"), 0, "{r:?}");
        assert_eq!(
            num(&r, "answered_after"),
            num(&r, "held"),
            "a held connection was dropped: {r:?}"
        );
        held += num(&r, "held");
    }
    assert_eq!(held as usize, per * holders);

    for r in [&alone, &with_idle] {
        for key in ["framing_errors", "connect_errors", "io_errors"] {
            assert_eq!(num(r, key), 0, "{key}: {r:?}");
        }
    }
    let per_conn = rss_held.saturating_sub(rss_before) as f64 / held as f64;
    let ratio = float(&with_idle, "requests_per_sec") / float(&alone, "requests_per_sec");
    eprintln!(
        "{held} idle connections from {holders} processes: {per_conn:.0} bytes of server memory each \
         (RSS {rss_before} -> {rss_held}); pipelined client {:.0} req/s alone, {:.0} with them ({ratio:.2}x)",
        float(&alone, "requests_per_sec"),
        float(&with_idle, "requests_per_sec"),
    );
    assert!(
        per_conn <= 4096.0,
        "{per_conn:.0} bytes per idle connection"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
