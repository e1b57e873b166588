//! todo-bench against small HTTP peers on 127.0.0.1:0 whose answers we
//! choose: it must count correct responses and only those.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_todo-bench");

/// A peer that answers every request it reads (counted by blank lines)
/// with `answer(i)`, for `conns` connections.
fn peer(conns: usize, answer: fn(usize) -> Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                let mut seen = 0;
                let mut buf = [0u8; 65536];
                let mut tail = Vec::new();
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    tail.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    while let Some(end) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
                        tail.drain(..end + 4);
                        out.extend_from_slice(&answer(seen));
                        seen += 1;
                    }
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/todos?limit=1")
}

fn bench(url: &str, args: &[&str]) -> sonic_rs::Value {
    let out = Command::new(BIN)
        .arg(url)
        .args(args)
        .args(["--json", "-t", "1", "-d", "5s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    sonic_rs::from_str(line)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

fn ok(_: usize) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]".to_vec()
}

use sonic_rs::JsonValueTrait;

#[test]
fn counts_exactly_the_requests_asked_for() {
    let url = peer(4, ok);
    let r = bench(&url, &["-c", "4", "-p", "8", "-n", "1000"]);
    assert_eq!(r["responses"].as_u64(), Some(1000));
    assert_eq!(r["io_errors"].as_u64(), Some(0));
    assert!(r["latency"]["p99_us"].as_u64().is_some());
}

#[test]
fn a_wrong_status_is_an_error_not_a_response() {
    fn every_tenth_fails(i: usize) -> Vec<u8> {
        if i % 10 == 9 {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            ok(i)
        }
    }
    let url = peer(1, every_tenth_fails);
    let r = bench(&url, &["-c", "1", "-p", "10", "-n", "100"]);
    assert_eq!(r["responses"].as_u64(), Some(90));
    assert_eq!(r["wrong_status"]["503"].as_u64(), Some(10));
}

#[test]
fn a_response_without_length_is_a_framing_error() {
    fn unframed(_: usize) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\n\r\n[]".to_vec()
    }
    let url = peer(1, unframed);
    let out = Command::new(BIN)
        .args([
            url.as_str(),
            "-c",
            "1",
            "-n",
            "10",
            "--json",
            "-t",
            "1",
            "-d",
            "5s",
        ])
        .output()
        .unwrap();
    // Nothing was counted, so it exits non-zero, and says why.
    assert!(!out.status.success());
    let r: sonic_rs::Value =
        sonic_rs::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["framing_errors"].as_u64(), Some(1));
    assert_eq!(r["responses"].as_u64(), Some(0));
}
