//! The access log: one JSON line per request, on standard output.
//!
//! ```text
//! {"time":"2026-11-30T21:00:00.123456Z","instance":"host/0","core":1,
//!  "method":"GET","path":"/todos","query":"limit=1","status":200,
//!  "bytes":412,"duration_us":38,"request_id":"...","user":"alice"}
//! ```
//!
//! `TODO_ACCESS_LOG=off|on|sample:N` (`--access-log`): `sample:N` logs one
//! request in N per core. Each core appends lines to its own buffer (no
//! lock, no syscall on the request path) and hands full buffers, and every
//! buffer once a second, to the `todo-log` thread, which writes them. When
//! that thread falls behind by [`QUEUED_BUFFERS`] buffers, further lines
//! are dropped and counted (`todo_access_log_dropped_total`), so a slow
//! log reader never slows the cores.
//!
//! `duration_us` runs from the moment the batch holding the request was
//! read to the moment its response was appended (before it is written).

use std::cell::{Cell, RefCell};
use std::io::Write;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::metrics::CoreMetrics;

/// A core hands its buffer over once it holds this many bytes.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// Buffers waiting for the writer at most; past it lines are dropped.
pub const QUEUED_BUFFERS: usize = 256;

/// Which requests are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    On,
    /// One request in N, per core.
    Sample(u32),
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "on" => Ok(Mode::On),
            _ => match s.strip_prefix("sample:").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 1 => Ok(if n == 1 { Mode::On } else { Mode::Sample(n) }),
                _ => Err(format!("{s}: expected off, on or sample:N (N >= 1)")),
            },
        }
    }
}

/// The writer thread's end, shared by the cores.
#[derive(Clone)]
pub struct Sink {
    tx: flume::Sender<Vec<u8>>,
    pub instance: Arc<str>,
}

impl Sink {
    /// Start the `todo-log` thread, writing to standard output.
    pub fn start(instance: &str) -> Sink {
        let (tx, rx) = flume::bounded::<Vec<u8>>(QUEUED_BUFFERS);
        std::thread::Builder::new()
            .name("todo-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(buf) = rx.recv() {
                    let mut out = stdout.lock();
                    // A closed stdout loses log lines, never requests.
                    let _ = out.write_all(&buf).and_then(|()| out.flush());
                }
            })
            .expect("spawning the access log thread");
        Sink {
            tx,
            instance: instance.into(),
        }
    }
}

/// What one line says.
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub started: Instant,
    pub request_id: &'a str,
    pub user: Option<&'a str>,
}

/// A core's access log.
pub struct AccessLog {
    /// False when the log is off: one load on the hot path.
    pub on: bool,
    mode: Mode,
    core: usize,
    sink: Option<Sink>,
    seen: Cell<u32>,
    /// The formatted time up to the second, and which second.
    second: RefCell<(u64, Vec<u8>)>,
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    pub fn new(mode: Mode, core: usize, sink: Option<Sink>) -> AccessLog {
        let mode = if sink.is_none() { Mode::Off } else { mode };
        AccessLog {
            on: mode != Mode::Off,
            mode,
            core,
            sink,
            seen: Cell::new(0),
            second: RefCell::new((0, Vec::new())),
            buf: RefCell::new(Vec::new()),
        }
    }

    /// Whether the next request is logged (counts it for `sample:N`).
    #[inline]
    pub fn wants(&self) -> bool {
        match self.mode {
            Mode::Off => false,
            Mode::On => true,
            Mode::Sample(n) => {
                let seen = self.seen.get() + 1;
                let hit = seen >= n;
                self.seen.set(if hit { 0 } else { seen });
                hit
            }
        }
    }

    pub fn write(&self, metrics: &CoreMetrics, e: &Entry<'_>) {
        let Some(sink) = &self.sink else { return };
        let mut buf = self.buf.borrow_mut();
        let duration = e.started.elapsed().as_micros() as u64;
        let mut n = itoa::Buffer::new();
        buf.extend_from_slice(b"{\"time\":\"");
        self.time(&mut buf);
        buf.extend_from_slice(b"\",\"instance\":");
        json_str(&mut buf, &sink.instance);
        buf.extend_from_slice(b",\"core\":");
        buf.extend_from_slice(n.format(self.core).as_bytes());
        buf.extend_from_slice(b",\"method\":\"");
        buf.extend_from_slice(e.method.as_bytes());
        buf.extend_from_slice(b"\",\"path\":");
        json_str(&mut buf, e.path);
        buf.extend_from_slice(b",\"query\":");
        json_str(&mut buf, e.query);
        buf.extend_from_slice(b",\"status\":");
        buf.extend_from_slice(n.format(e.status).as_bytes());
        buf.extend_from_slice(b",\"bytes\":");
        buf.extend_from_slice(n.format(e.bytes).as_bytes());
        buf.extend_from_slice(b",\"duration_us\":");
        buf.extend_from_slice(n.format(duration).as_bytes());
        buf.extend_from_slice(b",\"request_id\":");
        json_str(&mut buf, e.request_id);
        if let Some(user) = e.user {
            buf.extend_from_slice(b",\"user\":");
            json_str(&mut buf, user);
        }
        buf.extend_from_slice(b"}\n");
        if buf.len() >= FLUSH_BYTES {
            drop(buf);
            self.flush(metrics);
        }
    }

    /// RFC 3339 UTC with microseconds; the part up to the second is
    /// formatted once a second.
    fn time(&self, buf: &mut Vec<u8>) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut second = self.second.borrow_mut();
        if second.0 != now.as_secs() || second.1.is_empty() {
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
            // "2026-11-30T21:00:00Z" without its "Z".
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            second.0 = now.as_secs();
            second.1 = text.trim_end_matches('Z').as_bytes().to_vec();
        }
        buf.extend_from_slice(&second.1);
        let micros = now.subsec_micros();
        let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
        let mut m = micros;
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        buf.extend_from_slice(&digits);
    }

    /// Hand the buffered lines to the writer (each second, and when full).
    pub fn flush(&self, metrics: &CoreMetrics) {
        let Some(sink) = &self.sink else { return };
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut *buf);
        if let Err(e) = sink.tx.try_send(lines) {
            let lost = e.into_inner();
            metrics.log_dropped(lost.iter().filter(|&&b| b == b'\n').count() as u64);
        }
    }
}

/// `s` as a JSON string (RFC 8259 §7).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert_eq!("on".parse(), Ok(Mode::On));
        assert_eq!("sample:1".parse(), Ok(Mode::On));
        assert_eq!("sample:100".parse(), Ok(Mode::Sample(100)));
        for bad in ["", "sample:0", "sample:x", "yes"] {
            assert!(bad.parse::<Mode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sample_logs_one_in_n() {
        let log = AccessLog {
            on: true,
            mode: Mode::Sample(4),
            core: 0,
            sink: None,
            seen: Cell::new(0),
            second: RefCell::new((0, Vec::new())),
            buf: RefCell::new(Vec::new()),
        };
        let hits = (0..100).filter(|_| log.wants()).count();
        assert_eq!(hits, 25);
    }

    #[test]
    fn lines_are_json() {
        let (tx, rx) = flume::bounded(4);
        let sink = Sink {
            tx,
            instance: "a\"b".into(),
        };
        let log = AccessLog::new(Mode::On, 2, Some(sink));
        let metrics = CoreMetrics::default();
        log.write(
            &metrics,
            &Entry {
                method: "GET",
                path: "/todos",
                query: "q=\u{1}x",
                status: 200,
                bytes: 10,
                started: Instant::now(),
                request_id: "r1",
                user: Some("al\\ice"),
            },
        );
        log.flush(&metrics);
        let buf = rx.try_recv().unwrap();
        let v: sonic_rs::Value = sonic_rs::from_slice(&buf).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v["instance"].as_str(), Some("a\"b"));
        assert_eq!(v["core"].as_u64(), Some(2));
        assert_eq!(v["query"].as_str(), Some("q=\u{1}x"));
        assert_eq!(v["user"].as_str(), Some("al\\ice"));
        assert_eq!(v["status"].as_u64(), Some(200));
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-11-30T21:00:00.123456Z".len(), "{time}");
        humantime::parse_rfc3339(time).unwrap();
    }
}
