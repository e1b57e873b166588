//! Test harness: start the real `todo-server` binary on `127.0.0.1:0` and talk
//! raw HTTP/1.1 bytes to it; responses are read by todo-testkit's reader,
//! which shares no code with the server's parser.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod deploy;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use todo_testkit::http::{closed, read_answer, read_response, Response};
pub use todo_testkit::process::{poll_until, temp_dir, wait_until, Proc};

pub const BIN: &str = env!("CARGO_BIN_EXE_todo-server");

/// Variables that select the distributed path or a shared secret: cleared
/// for every server a test starts, so each test says what it runs.
const SELECTORS: [&str; 4] = ["KAFKA_BROKERS", "REDIS_URL", "DATABASE_URL", "JWT_SECRET"];

/// `todo-server` with the selecting variables cleared.
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    for v in SELECTORS {
        c.env_remove(v);
    }
    c
}

/// The drivers to test: io_uring and epoll. A server asked for io_uring
/// either says it listens on it or exits saying why not; without io_uring
/// the test fails unless `TODO_TEST_SKIP` names `io_uring`
/// (todo_testkit::capability), and then tests epoll only.
pub fn drivers() -> Vec<&'static str> {
    let mut child = command()
        .args(["--driver", "uring", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp_dir("probe"))
        .args(["--seed", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn todo-server");
    // The listening line, or the error it exits with (a backtrace may
    // follow it when RUST_BACKTRACE is set).
    let mut said = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if line.contains("listening on ") || line.starts_with("Error") {
            said = line;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let probe = if said.contains("listening on ") && said.contains("io_uring driver") {
        Ok(())
    } else {
        Err(format!("todo-server --driver uring said: {said:?}"))
    };
    if todo_testkit::capability::available("io_uring", probe) {
        vec!["uring", "legacy"]
    } else {
        vec!["legacy"]
    }
}

pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Cores it runs (`--cores`): what a per-core check must see.
    pub cores: usize,
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
        let mut cmd = command();
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--cores") {
            cmd.args(["--cores", "2"]);
        }
        cmd.args(["--driver", driver, "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        // Standard output (the access log) is kept for the test to read;
        // appended, so a restarted server adds to it.
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("stdout.log"))
            .expect("stdout file");
        cmd.stdout(stdout);
        let proc = Proc::spawn("server", cmd, Duration::from_secs(60));
        let cores = extra
            .windows(2)
            .filter(|w| w[0] == "--cores")
            .find_map(|w| w[1].parse().ok())
            .unwrap_or(2);
        Server {
            cores,
            addr: proc.addr(),
            proc,
            data_dir,
            driver,
        }
    }

    /// What the server printed on standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("stdout.log")).unwrap_or_default()
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
        self.proc.kill();
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
        self.call(method, path, Some(token), Some(body))
    }

    /// The ids `GET /todos?limit=N` lists, newest first.
    pub fn newest_ids(&self, limit: usize) -> Vec<u64> {
        use sonic_rs::{JsonContainerTrait, JsonValueTrait};
        let r = self.get(&format!("/todos?limit={limit}"));
        assert_eq!(r.status, 200, "{}", r.text());
        api::ids(&r)
    }

    /// POST a todo titled `title`, which must be accepted: (command id,
    /// todo id).
    pub fn create(&self, token: &str, title: &str) -> (u64, u64) {
        use sonic_rs::JsonValueTrait;
        let r = self.send_json(
            "POST",
            "/todos",
            token,
            &format!(r#"{{"public":true,"title":"{title}"}}"#),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let v = r.json();
        (
            v["command_id"].as_u64().unwrap(),
            v["todo_id"].as_u64().unwrap(),
        )
    }

    /// Check `GET path` until `accept` holds (2 s at most); the last answer.
    pub fn wait_for(&self, path: &str, accept: impl Fn(&Response) -> bool) -> Response {
        self.wait_for_secs(path, 2, accept)
    }

    /// Check `GET path` until `accept` holds (`secs` at most); the last
    /// answer, accepted or not.
    pub fn wait_for_secs(
        &self,
        path: &str,
        secs: u64,
        accept: impl Fn(&Response) -> bool,
    ) -> Response {
        let mut last = None;
        poll_until(Duration::from_secs(secs), || {
            let r = self.get(path);
            let done = accept(&r);
            last = Some(r);
            done.then_some(())
        });
        last.expect("asked at least once")
    }

    /// `metric{core="i"}` for every core, from `/metrics`, in core order:
    /// one entry per core, so a check of "every core" cannot miss one.
    pub fn per_core(&self, metric: &str) -> Vec<u64> {
        let text = self.get("/metrics").text();
        let prefix = format!("{metric}{{core=\"");
        let mut values: Vec<(usize, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (core, value) = rest.split_once("\"} ")?;
                Some((core.parse().ok()?, value.trim().parse().ok()?))
            })
            .collect();
        values.sort();
        let cores: Vec<usize> = values.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            cores,
            (0..self.cores).collect::<Vec<_>>(),
            "{metric}: one line per core"
        );
        values.into_iter().map(|(_, v)| v).collect()
    }

    /// The snapshot version each core serves.
    pub fn core_versions(&self) -> Vec<u64> {
        self.per_core("todo_snapshot_version")
    }

    /// Wait (`secs` at most) until every core serves a snapshot version of at
    /// least `version`.
    pub fn wait_every_core_at(&self, version: u64, secs: u64) {
        wait_until(
            &format!("every core at snapshot version {version}"),
            Duration::from_secs(secs),
            || {
                let v = self.core_versions();
                v.iter().all(|&c| c >= version).then_some(())
            },
        )
    }

    /// The version `/readyz` reports (the answering core's).
    pub fn version(&self) -> u64 {
        use sonic_rs::JsonValueTrait;
        let r = self.get("/readyz");
        let v: sonic_rs::Value = sonic_rs::from_slice(&r.body).unwrap_or_default();
        v["snapshot_version"].as_u64().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.proc.kill();
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

/// A deterministic random sequence (xorshift64) for tests that draw random
/// writes: the same seed, the same writes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
