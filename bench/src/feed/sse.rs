//! One subscriber's stream: a plain HTTP/1.1 `GET` with `Accept:
//! text/event-stream`, its response head checked (200, `Content-Type:
//! text/event-stream`, a body delimited by the connection's end: no
//! Content-Length, not chunked), then the stream read line by line (the
//! WHATWG EventSource format: `field: value` lines, a blank line ends an
//! event, `:` starts a comment).
//!
//! Ready: the head came and, when the server announces a reconnection delay
//! first (todo-server's `retry:` line), that line too. Every `data:` line is
//! searched for this run's marker; the time of the read that brought the
//! line is the delivery's time.
//!
//! Opening is blocking (connect, write, read up to ready, with time-outs);
//! afterwards the socket is non-blocking and read when epoll says so
//! (subscribers.rs).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::marker::Marker;
use crate::target::Target;

/// A subscriber's first line buffer, bytes; it doubles for a longer line.
const LINE_BUF: usize = 2 * 1024;
/// Longest line (or response head) accepted, bytes.
const MAX_LINE: usize = 64 * 1024;
/// Connecting, and then reading up to ready, each at most this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every subscriber asks and waits for.
pub struct Feed {
    pub url: Target,
    /// Wait for a `retry:` line after the head before counting ready.
    pub wait_retry: bool,
    pub marker: Marker,
}

impl Feed {
    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            self.url.path, self.url.host
        )
    }
}

/// What reads found, booked against the ledger once per batch of reads.
#[derive(Default)]
pub struct Tally {
    /// (write index, when read, bytes of its `data:` value).
    pub deliveries: Vec<(usize, Instant, usize)>,
    pub duplicates: u64,
    pub foreign: u64,
    pub comments: u64,
}

/// One subscriber's connection and the bytes read and not yet taken.
pub struct Subscriber {
    pub stream: TcpStream,
    lines: Lines,
    /// The newest write this subscriber has had.
    last: Option<usize>,
}

impl Subscriber {
    /// Connect and send the request (the answer is read by `ready`).
    pub fn start(feed: &Feed) -> Result<Subscriber, String> {
        let mut stream = TcpStream::connect_timeout(&feed.url.addr, OPEN_TIMEOUT)
            .map_err(|e| format!("connect: {}", e.kind()))?;
        stream
            .write_all(feed.request().as_bytes())
            .map_err(|e| format!("write: {}", e.kind()))?;
        Ok(Subscriber {
            stream,
            lines: Lines::new(),
            last: None,
        })
    }

    /// Read up to ready (blocking), then make the socket non-blocking.
    pub fn ready(&mut self, feed: &Feed) -> Result<(), String> {
        let stream = &mut self.stream;
        stream
            .set_read_timeout(Some(OPEN_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let lines = &mut self.lines;
        loop {
            if let Some(len) = head(lines.pending())? {
                lines.start += len;
                break;
            }
            lines.fill_from(stream, "before the head")?;
        }
        if feed.wait_retry {
            'retry: loop {
                while let Some(r) = lines.next_line() {
                    if lines.buf[r].starts_with(b"retry:") {
                        break 'retry;
                    }
                }
                lines.fill_from(stream, "before the retry: line")?;
            }
        }
        stream.set_nonblocking(true).map_err(|e| e.to_string())
    }

    /// Read what the socket has (non-blocking) and take every whole line;
    /// `Err` with the reason when the stream ended.
    pub fn read(&mut self, marker: &Marker, tally: &mut Tally) -> Result<(), String> {
        match self.lines.fill(&mut self.stream) {
            Ok(0) => return Err("closed by the server".into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
        let now = Instant::now();
        while let Some(r) = self.lines.next_line() {
            let line = &self.lines.buf[r];
            if let Some(data) = line.strip_prefix(b"data:") {
                let data = data.strip_prefix(b" ").unwrap_or(data);
                match marker.find(data) {
                    Some(i) if self.last.is_some_and(|l| i <= l) => tally.duplicates += 1,
                    Some(i) => {
                        self.last = Some(i);
                        tally.deliveries.push((i, now, data.len()));
                    }
                    None => tally.foreign += 1,
                }
            } else if line.starts_with(b":") {
                tally.comments += 1;
            }
        }
        Ok(())
    }
}

/// The response head at the front of `buf`: its length when it is whole and
/// is an event stream's, `None` when more bytes are needed.
fn head(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_LINE {
            Err("response head too long".into())
        } else {
            Ok(None)
        };
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let mut event_stream = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-type" => event_stream = value.starts_with("text/event-stream"),
            "content-length" => return Err("a Content-Length on an event stream".into()),
            // Events are read straight off the socket; a chunked stream
            // would need de-chunking first, which neither peer asks for.
            "transfer-encoding" => return Err(format!("Transfer-Encoding: {value}")),
            _ => {}
        }
    }
    if !event_stream {
        return Err("no Content-Type: text/event-stream".into());
    }
    Ok(Some(end + 4))
}

/// Bytes read and not yet taken, and the lines in them.
struct Lines {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            buf: vec![0; LINE_BUF],
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next whole line (without its LF, or CRLF), as a range of `buf`.
    fn next_line(&mut self) -> Option<Range<usize>> {
        let lf = self.pending().iter().position(|&b| b == b'\n')?;
        let mut line = self.start..self.start + lf;
        self.start += lf + 1;
        if line.end > line.start && self.buf[line.end - 1] == b'\r' {
            line.end -= 1;
        }
        Some(line)
    }

    /// Read more; 0 at the end of the stream. Keeps a partial line, moved
    /// to the front, and grows the buffer for a line longer than it.
    fn fill(&mut self, stream: &mut impl Read) -> std::io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else if self.buf.len() < MAX_LINE {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(std::io::Error::other("a line longer than 64 KiB"));
            }
        }
        let n = stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// `fill` while opening: an end of stream or an error is why it failed.
    fn fill_from(&mut self, stream: &mut impl Read, when: &str) -> Result<(), String> {
        match self.fill(stream) {
            Ok(0) => Err(format!("closed {when}")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read {when}: {}", e.kind())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_head_is_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nretry: 1000\n\n";
        assert_eq!(head(ok), Ok(Some(ok.len() - 13)));
        assert_eq!(head(&ok[..20]), Ok(None));
        assert!(head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n").is_err());
        assert!(head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 3\r\n\r\n"
        )
        .is_err());
        assert!(head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
    }

    #[test]
    fn lines_split_on_lf_and_crlf_and_wait_for_the_rest() {
        let mut l = Lines::new();
        let mut input: &[u8] = b"id: 1\r\ndata: x\n\npart";
        l.fill(&mut input).unwrap();
        let ranges: Vec<Range<usize>> = std::iter::from_fn(|| l.next_line()).collect();
        let got: Vec<&[u8]> = ranges.into_iter().map(|r| &l.buf[r]).collect();
        assert_eq!(got, [&b"id: 1"[..], b"data: x", b""]);
        assert_eq!(l.pending(), b"part");
    }

    #[test]
    fn a_line_split_across_reads_is_taken_whole_and_marked_events_counted() {
        let marker = Marker::new(1);
        let event = format!("id: 1\ndata: {{\"title\":\"{}\"}}\n\n", marker.text(3));
        let (a, b) = event.as_bytes().split_at(12);
        let mut l = Lines::new();
        l.fill(&mut &a[..]).unwrap();
        assert!(l.next_line().is_some(), "id line");
        assert!(l.next_line().is_none(), "data line not whole yet");
        l.fill(&mut &b[..]).unwrap();
        let data = l.next_line().unwrap();
        assert_eq!(marker.find(&l.buf[data]), Some(3));
    }
}
