//! todo-lb in front of two real todo-server processes, under pipelined load:
//! one server is killed (SIGKILL) mid-run and started again; or replaced by
//! a rolling restart (a new process on its port, the old one drained). The
//! client must see no error either way: the balancer retries GETs on the
//! other server and ejects the dead one, and sends what a draining server
//! did not read (it answered `Connection: close`) elsewhere.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Two one-core servers A and B and todo-lb (two cores) in front of them.
struct Topology {
    dir: std::path::PathBuf,
    a: SocketAddr,
    b: SocketAddr,
    lb: SocketAddr,
    server_a: Proc,
    _server_b: Proc,
    _balancer: Proc,
}

impl Topology {
    fn start(tag: &str, lb_flags: &[&str]) -> Self {
        let dir = temp_dir(tag);
        let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let server_a = server(a, &dir.join("a"), &["--cores", "1", "--instance", "1"]);
        let server_b = server(b, &dir.join("b"), &["--cores", "1", "--instance", "2"]);
        let mut cmd = Command::new(bin("todo-lb"));
        cmd.args(["--listen", &lb.to_string()])
            .args(["--upstream", &a.to_string(), "--upstream", &b.to_string()])
            .args(["--cores", "2", "--health-interval", "200ms"])
            .args(lb_flags)
            .stdout(Stdio::null());
        let balancer = Proc::spawn("todo-lb", cmd, Duration::from_secs(20));
        wait_ready(lb, "/readyz", Duration::from_secs(20));
        Topology {
            dir,
            a,
            b,
            lb,
            server_a,
            _server_b: server_b,
            _balancer: balancer,
        }
    }

    /// Pipelined GETs through the balancer for `duration`.
    fn load(&self, duration: &str) -> std::process::Child {
        start_bench(
            &format!("http://{}/todos?limit=1", self.lb),
            &["-c", "64", "-p", "16", "-d", duration, "-t", "1"],
        )
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_balancer_hides_a_killed_server_and_takes_it_back() {
    let mut t = Topology::start("failover", &["--eject-after", "1", "--eject-for", "500ms"]);
    let load = t.load("7s");
    wait_served(t.a, 0, 1_000);
    // SIGKILL: no drain, connections reset mid-batch.
    t.server_a.kill();
    // The load goes on through B alone for a while.
    wait_served(t.b, todos_served(t.b), 2_000);
    t.server_a = server(t.a, &t.dir.join("a"), &["--cores", "1", "--instance", "1"]);
    let before = todos_served(t.a);
    // Health checks every 200 ms bring it back, and the load reaches it.
    wait_served(t.a, before, 1);

    let report = finish_bench(load);
    eprintln!("{report:?}");
    assert_clean(&report);
    assert!(num(&report, "responses") > 10_000, "{report:?}");
}

#[test]
fn a_rolling_restart_behind_the_balancer_is_invisible() {
    ensure_migrate_req();
    let mut t = Topology::start("rolling", &[]);
    let load = t.load("6s");
    wait_served(t.a, 0, 1_000);
    // The new process is in A's SO_REUSEPORT group once it says it listens.
    let mut old = std::mem::replace(
        &mut t.server_a,
        server(t.a, &t.dir.join("a2"), &["--cores", "1", "--instance", "3"]),
    );
    old.terminate();
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    let report = finish_bench(load);
    eprintln!("{report:?}");
    assert_clean(&report);
    assert!(num(&report, "responses") > 10_000, "{report:?}");
}
