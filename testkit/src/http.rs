//! An HTTP/1.1 response reader (RFC 9112), written by hand and apart from
//! the servers' parser, so that what the servers send is checked by code that
//! shares nothing with what produced it.
//!
//! [`frame`] finds where the response at the front of a buffer ends without
//! allocating (todo-bench calls it for every response it counts);
//! [`Response::parse`] and [`read_response`] give tests whole responses.

use std::io::Read;
use std::time::Duration;

/// Why bytes are not a well-framed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not `HTTP/1.x NNN reason`.
    StatusLine,
    /// A header line without a colon, or a bare CR/LF mix.
    HeaderLine,
    /// Neither Content-Length nor chunked on a response that has a body.
    NoLength,
    /// A Content-Length that is not digits, or two that differ.
    BadLength,
    /// A chunk size line that is not hex, or a chunk not followed by CRLF.
    BadChunk,
    /// A transfer coding other than chunked.
    Coding,
}

/// Where the response at the front of a buffer ends, and what it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    pub status: u16,
    /// Bytes of the status line and headers, blank line included.
    pub head_len: usize,
    /// Bytes of the whole response.
    pub len: usize,
    /// `Connection: close`, or HTTP/1.0 without keep-alive.
    pub close: bool,
    pub chunked: bool,
}

/// Frame the response at the start of `buf`: `Ok(None)` when more bytes are
/// needed. `after_head`: it answers a HEAD request (no body whatever the
/// headers say).
pub fn frame(buf: &[u8], after_head: bool) -> Result<Option<Framed>, FrameError> {
    let Some(line_end) = find_crlf(buf, 0)? else {
        return Ok(None);
    };
    let line = &buf[..line_end];
    if line.len() < 12 || !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return Err(FrameError::StatusLine);
    }
    let http10 = line[7] == b'0';
    let digits = &line[9..12];
    if !digits.iter().all(u8::is_ascii_digit) || line.get(12).is_some_and(|&b| b != b' ') {
        return Err(FrameError::StatusLine);
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let mut close = http10;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut at = line_end + 2;
    let head_len = loop {
        let Some(end) = find_crlf(buf, at)? else {
            return Ok(None);
        };
        if end == at {
            break end + 2;
        }
        let line = &buf[at..end];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(FrameError::HeaderLine)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(FrameError::BadLength)?;
            if length.is_some_and(|old| old != n) {
                return Err(FrameError::BadLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(FrameError::Coding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        at = end + 2;
    };
    let bodiless = after_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body_len = if bodiless {
        0
    } else if chunked {
        match walk_chunks(&buf[head_len..], None)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        let n = length.ok_or(FrameError::NoLength)?;
        if buf.len() - head_len < n {
            return Ok(None);
        }
        n
    };
    Ok(Some(Framed {
        status,
        head_len,
        len: head_len + body_len,
        close,
        chunked,
    }))
}

/// Where the line starting at `from` ends (its CR); `None` when its LF has
/// not arrived. A bare LF is refused: servers here always send CRLF.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, FrameError> {
    let Some(lf) = buf
        .get(from..)
        .and_then(|b| b.iter().position(|&b| b == b'\n'))
    else {
        return Ok(None);
    };
    let lf = lf + from;
    if lf > from && buf[lf - 1] == b'\r' {
        Ok(Some(lf - 1))
    } else {
        Err(FrameError::HeaderLine)
    }
}

fn parse_decimal(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Walk a chunked body at the start of `buf`: its length through the last
/// chunk's CRLF (trailers are not expected and refused), or `None` if
/// incomplete. De-chunked data goes to `sink` when given.
fn walk_chunks(buf: &[u8], mut sink: Option<&mut Vec<u8>>) -> Result<Option<usize>, FrameError> {
    let mut at = 0;
    loop {
        let Some(end) = find_crlf(buf, at)? else {
            return Ok(None);
        };
        let size_text = &buf[at..end];
        let size_text = size_text
            .iter()
            .position(|&b| b == b';')
            .map_or(size_text, |i| &size_text[..i]);
        if size_text.is_empty() || size_text.len() > 8 {
            return Err(FrameError::BadChunk);
        }
        let size = size_text.iter().try_fold(0usize, |n, &b| {
            let d = (b as char).to_digit(16)?;
            Some(n * 16 + d as usize)
        });
        let size = size.ok_or(FrameError::BadChunk)?;
        let data = end + 2;
        if size == 0 {
            return match buf.get(data..data + 2) {
                None | Some([b'\r']) => Ok(None),
                Some(b"\r\n") => Ok(Some(data + 2)),
                Some(_) => Err(FrameError::BadChunk),
            };
        }
        match buf.get(data + size..data + size + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some([b'\r']) => return Ok(None),
            Some(_) => return Err(FrameError::BadChunk),
        }
        if let Some(out) = sink.as_deref_mut() {
            out.extend_from_slice(&buf[data..data + size]);
        }
        at = data + size + 2;
    }
}

/// One whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// De-chunked when it came chunked.
    pub body: Vec<u8>,
    pub close: bool,
}

impl Response {
    /// The response at the start of `buf` and how many bytes it used;
    /// `Ok(None)` when more bytes are needed.
    pub fn parse(buf: &[u8], after_head: bool) -> Result<Option<(Response, usize)>, FrameError> {
        let Some(f) = frame(buf, after_head)? else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&buf[..f.head_len]);
        let headers = head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        let body = if f.chunked {
            let mut body = Vec::new();
            walk_chunks(&buf[f.head_len..f.len], Some(&mut body))?;
            body
        } else {
            buf[f.head_len..f.len].to_vec()
        };
        let response = Response {
            status: f.status,
            headers,
            body,
            close: f.close,
        };
        Ok(Some((response, f.len)))
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Read the next final response from `s` (interim 1xx ones are skipped);
/// `buf` carries bytes read past it to the next call. `None` on end of
/// stream, a read error or time-out, or bytes that are not a response.
pub fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<Response> {
    read_answer(s, buf, false)
}

/// `n` copies of `request` written at once on one new connection to `at`;
/// their answers, in order (panics if the connection ends before the last).
pub fn pipelined(at: std::net::SocketAddr, request: &str, n: usize) -> Vec<Response> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.repeat(n).as_bytes()).unwrap();
    let mut buf = Vec::new();
    (0..n)
        .map(|i| read_response(&mut s, &mut buf).unwrap_or_else(|| panic!("closed after {i}")))
        .collect()
}

/// The status of each answer.
pub fn statuses(answers: &[Response]) -> Vec<u16> {
    answers.iter().map(|r| r.status).collect()
}

/// [`read_response`] for the answer to a HEAD request when `after_head`: its
/// head may announce a Content-Length, but no body follows.
pub fn read_answer(s: &mut impl Read, buf: &mut Vec<u8>, after_head: bool) -> Option<Response> {
    loop {
        match Response::parse(buf, after_head) {
            Ok(Some((r, used))) => {
                buf.drain(..used);
                if (100..200).contains(&r.status) {
                    continue;
                }
                return Some(r);
            }
            Ok(None) => {}
            Err(e) => panic!(
                "not an HTTP/1.1 response ({e:?}): {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)])
            ),
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// True when the peer closes `s` within 3 s (end of stream or reset), after
/// whatever it still sends.
pub fn closed(s: &mut std::net::TcpStream) -> bool {
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

/// `GET /metrics` from `addr` and the value of the line named exactly
/// `series` (a metric name with its labels, e.g.
/// `todo_worker_dependency_up{dependency="kafka"}`); `None` when the
/// process does not answer or has no such line.
/// Every series of a Prometheus text: `name{labels}` -> value (panics on a
/// line that is not `series value`).
pub fn series(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `name` in [`series`]' map, which must be there.
pub fn value(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("{name} not in {m:#?}"))
}

pub fn scrape(addr: std::net::SocketAddr, series: &str) -> Option<u64> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        .ok()?;
    let r = read_response(&mut s, &mut Vec::new())?;
    let text = String::from_utf8(r.body).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\n[1,2]";

    #[test]
    fn every_split_is_incomplete_then_whole() {
        for cut in 0..OK.len() {
            assert_eq!(frame(&OK[..cut], false), Ok(None), "cut at {cut}");
        }
        let f = frame(OK, false).unwrap().unwrap();
        assert_eq!((f.status, f.len, f.close), (200, OK.len(), false));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT";
        let (r, used) = Response::parse(raw, false).unwrap().unwrap();
        assert_eq!(
            (r.body.as_slice(), used, r.close),
            (&b"abcde"[..], raw.len() - 4, true)
        );
        for cut in 0..raw.len() - 4 {
            assert!(frame(&raw[..cut], false).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn bodiless_and_broken_responses() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(frame(head, true).unwrap().unwrap().len, head.len());
        let r304 = b"HTTP/1.0 304 Not Modified\r\n\r\n";
        let f = frame(r304, false).unwrap().unwrap();
        assert!(f.close && f.len == r304.len());
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                frame(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        raw.extend_from_slice(OK);
        let r = read_response(&mut &raw[..], &mut Vec::new()).unwrap();
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("application/json"))
        );
    }
}
