//! Test harness: start the real `todo-server` binary on `127.0.0.1:0` and talk
//! raw HTTP/1.1 bytes to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_todo-server");

/// Variables that select the distributed path or a shared secret: cleared
/// for every server a test starts, so each test says what it runs.
const SELECTORS: [&str; 4] = ["KAFKA_BROKERS", "REDIS_URL", "DATABASE_URL", "JWT_SECRET"];

/// `todo-server` with the selecting variables cleared.
fn command() -> Command {
    let mut c = Command::new(BIN);
    for v in SELECTORS {
        c.env_remove(v);
    }
    c
}

/// The drivers to test: io_uring where this kernel allows it, and epoll.
pub fn drivers() -> Vec<&'static str> {
    let out = command()
        .args(["--driver", "uring", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp_dir("probe"))
        .args(["--seed", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut line = String::new();
            BufReader::new(child.stderr.take().unwrap()).read_line(&mut line)?;
            let _ = child.kill();
            let _ = child.wait();
            Ok(line)
        })
        .unwrap_or_default();
    if out.contains("io_uring driver") {
        vec!["uring", "legacy"]
    } else {
        eprintln!(
            "io_uring unavailable here ({}); testing epoll only",
            out.trim()
        );
        vec!["legacy"]
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "todo-it-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub driver: &'static str,
}

impl Server {
    pub fn start(driver: &'static str, extra: &[&str]) -> Server {
        Server::start_in(driver, temp_dir(driver), extra)
    }

    pub fn start_in(driver: &'static str, data_dir: PathBuf, extra: &[&str]) -> Server {
        Server::start_with(driver, data_dir, extra, &[])
    }

    /// Start with extra environment variables (the distributed path's).
    pub fn start_with(
        driver: &'static str,
        data_dir: PathBuf,
        extra: &[&str],
        vars: &[(&str, String)],
    ) -> Server {
        let mut child = command()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--cores",
                "2",
                "--driver",
                driver,
                "--data-dir",
            ])
            .arg(&data_dir)
            .args(extra)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn todo-server");
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        for _ in 0..100 {
            line.clear();
            if reader.read_line(&mut line).expect("read start-up line") == 0
                || line.contains("listening on ")
            {
                break;
            }
            eprint!("[server] {line}");
        }
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in start-up line: {line:?}"));
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                eprint!("[server] {sink}");
                sink.clear();
            }
        });
        Server {
            child,
            addr,
            data_dir,
            driver,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A token from the binary's own `token` subcommand, for this data dir
    /// (or for JWT_SECRET when the test environment sets it).
    pub fn token(&self, sub: &str) -> String {
        token_for(&self.data_dir, sub)
    }

    /// A token signed with `secret`, as `JWT_SECRET=secret todo-server token`.
    pub fn token_with_secret(secret: &str, sub: &str) -> String {
        let mut c = command();
        c.args(["token", "--sub", sub]).env("JWT_SECRET", secret);
        run_token(c)
    }

    /// SIGKILL: nothing gets a chance to flush.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }

    /// One request on a fresh connection.
    pub fn request(&self, raw: &[u8]) -> Response {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        read_response(&mut s, &mut Vec::new()).expect("a response")
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
    }

    pub fn send_json(&self, method: &str, path: &str, token: &str, body: &str) -> Response {
        self.request(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    /// Poll `GET path` until `accept` holds (2 s at most).
    pub fn wait_for(&self, path: &str, accept: impl Fn(&Response) -> bool) -> Response {
        self.wait_for_secs(path, 2, accept)
    }

    /// Poll `GET path` until `accept` holds (`secs` at most).
    pub fn wait_for_secs(
        &self,
        path: &str,
        secs: u64,
        accept: impl Fn(&Response) -> bool,
    ) -> Response {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.get(path);
            if accept(&r) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

pub fn token_for(data_dir: &Path, sub: &str) -> String {
    let mut c = command();
    c.args(["token", "--sub", sub, "--data-dir"]).arg(data_dir);
    run_token(c)
}

/// Run a `todo-server token` command and return the token it printed.
fn run_token(mut c: Command) -> String {
    let out = c.output().expect("todo-server token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response from `s`; `buf` carries bytes read past it to the next
/// call. `None` on EOF before a response.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Response> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let status = resp.code.unwrap();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            if status == 100 {
                buf.drain(..head);
                continue;
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().expect("numeric Content-Length"))
                .expect("every response has Content-Length");
            if buf.len() >= head + len {
                let body = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return Some(Response {
                    status,
                    headers,
                    body,
                });
            }
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// True when the server has closed `s` (EOF within the read timeout).
pub fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}
