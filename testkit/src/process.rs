//! The workspace's binaries as child processes. A server is ready when it
//! says so: every one prints `NAME: listening on ADDR (...)` once its
//! listeners are bound and its cores run, so [`Proc::spawn`] reads stderr up
//! to that line and takes the address from it (tests bind port 0). The rest
//! of stderr keeps being copied to the test's output, prefixed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// A workspace binary, built beside the test executable by
/// `cargo test --workspace` (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (./scripts/test.sh)",
        path.display()
    );
    path
}

/// A new, empty directory under the system's temporary directory.
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

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Check `cond` until it holds, for states a test can only observe from
/// outside (a row in PostgreSQL, a version on every core); panics with
/// `what` after `limit`. Returns the value `cond` produced.
pub fn wait_until<T>(what: &str, limit: Duration, cond: impl FnMut() -> Option<T>) -> T {
    poll_until(limit, cond).unwrap_or_else(|| panic!("{what}: not within {limit:?}"))
}

/// [`wait_until`] that gives up quietly: `None` after `limit`.
pub fn poll_until<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A child process, killed (SIGKILL) when dropped unless it has exited.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Where it listens, from its `listening on` line.
    pub addr: Option<SocketAddr>,
    lines: Option<Mutex<mpsc::Receiver<String>>>,
}

impl Proc {
    /// Start `cmd` and wait (`limit` at most) for its `listening on ADDR`
    /// line on stderr. Panics with what it printed if it exits first.
    pub fn spawn(name: &str, mut cmd: Command, limit: Duration) -> Proc {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = forward_stderr(name, &mut child);
        let mut proc = Proc {
            child,
            name: name.to_string(),
            addr: None,
            lines: Some(Mutex::new(lines)),
        };
        let line = proc.wait_line("listening on ", limit);
        proc.addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        proc
    }

    /// Start `cmd` without waiting for anything (a client, a worker).
    pub fn start(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = forward_stderr(name, &mut child);
        Proc {
            child,
            name: name.to_string(),
            addr: None,
            lines: Some(Mutex::new(lines)),
        }
    }

    /// Wait for a stderr line containing `needle` (printed since the last
    /// wait) and return it.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let lines = self.lines.as_ref().expect("stderr is forwarded");
        let lines = lines.lock().expect("one waiter at a time");
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{}: no line with {needle:?} within {limit:?}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{}: exited ({status:?}) before printing {needle:?}",
                        self.name
                    )
                }
            }
        }
    }

    /// The address from the `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("{} printed no address", self.name))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM: a server drains.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `limit` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory, bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is running");
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
            self.kill();
        }
    }
}

/// Copy the child's stderr to ours as `[name] line`, and hand each line to
/// whoever waits for one (the channel is unbounded: lines nobody waits for
/// cost a little memory, never a blocked child).
fn forward_stderr(name: &str, child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            eprint!("[{name}] {line}");
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    rx
}
