//! Helpers for tests that run the binaries as separate processes: servers,
//! todo-lb and todo-bench, talking over real loopback sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BENCH: &str = env!("CARGO_BIN_EXE_todo-bench");

/// A binary of another workspace package, built beside todo-bench by
/// `cargo test --workspace` (`cargo test -p todo-bench` alone does not
/// rebuild it: a stale one would be tested).
pub fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(BENCH).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped, unless it was waited for.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Wait up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start an embedded-default todo-server on `addr` with a data directory of
/// its own; `extra` are more flags.
pub fn server(addr: SocketAddr, data_dir: &std::path::Path, extra: &[&str]) -> Proc {
    let child = Command::new(sibling("todo-server"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--seed", "100"])
        .args(extra)
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::null())
        .spawn()
        .expect("start todo-server");
    Proc {
        child,
        name: format!("todo-server {addr}"),
    }
}

/// Wait until `GET path` on `addr` answers 200.
pub fn wait_ready(addr: SocketAddr, path: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, _, _)) = get(addr, path) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}{path} not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `GET` on a new connection: status, head and body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

/// Send `raw` on a new connection and read to the end.
pub fn request(addr: SocketAddr, raw: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, head, all[split + 4..].to_vec()))
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
