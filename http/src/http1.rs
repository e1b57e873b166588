//! HTTP/1.1 request parsing and validation (RFC 9112), on top of httparse.
//!
//! [`parse`] looks at the front of a connection's read buffer and returns one
//! of: a complete [`Request`] (with how many bytes it used), [`Parsed::Partial`]
//! ("need more bytes": the connection loop reads again), or an [`HttpError`]
//! that the loop answers and, for framing errors, closes the connection on.
//! Incomplete input is a value, not an error.
//!
//! Framing rules enforced here, each answered 400 with the connection closed
//! because the message boundary can no longer be trusted:
//! - Content-Length together with Transfer-Encoding (RFC 9112 §6.3 ¶3: a
//!   request smuggling vector; we refuse rather than guess).
//! - Several Content-Length values that differ, or one that is not 1*DIGIT
//!   (§6.3 ¶5).
//! - A chunk size that is not hex or overflows (§7.1).
//! - obs-fold and a bare CR in the head (§5.2, §2.2): httparse rejects both.
//! - HTTP/1.1 without exactly one Host header (§3.2).
//!
//! A transfer coding other than `chunked` is 501 (§6.1); limits give 413, 414
//! and 431.

use std::mem::MaybeUninit;

use crate::error::HttpError;

/// Size limits on one request. Defaults suit a JSON API; all are bytes except
/// `max_headers` (a count).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest request line (method, target, version). Default 8 KiB -> 414.
    pub max_request_line: usize,
    /// Largest head (request line and headers). Default 16 KiB -> 431.
    pub max_head: usize,
    /// Most header fields. Default 64 -> 431.
    pub max_headers: usize,
    /// Largest body, after de-chunking. Default 64 KiB -> 413.
    pub max_body: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
        }
    }
}

/// Largest header array httparse is given; `RequestLimits::max_headers` may only
/// lower it. Kept on the stack.
pub const HEADER_SLOTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

impl Method {
    /// The method's token; `OTHER` for any method this server does not serve.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// The request body: absent, a slice of the read buffer, or de-chunked.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'b> {
    None,
    Slice(&'b [u8]),
    Chunked(Vec<u8>),
}

impl Body<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::None => &[],
            Body::Slice(b) => b,
            Body::Chunked(v) => v,
        }
    }

    pub fn is_present(&self) -> bool {
        !matches!(self, Body::None)
    }
}

/// One parsed request, borrowing the read buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: Method,
    pub path: &'b str,
    /// Everything after `?`, or empty.
    pub query: &'b str,
    /// False for HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`.
    pub keep_alive: bool,
    /// HTTP/1.0: a kept-alive response must say `Connection: keep-alive`.
    pub http10: bool,
    pub authorization: Option<&'b [u8]>,
    pub content_type: Option<&'b [u8]>,
    /// `X-Request-Id`, when the client sent one (todo-lb keeps it).
    pub request_id: Option<&'b [u8]>,
    /// `If-None-Match` (RFC 9110 §13.1.2), for lists' `ETag`s.
    pub if_none_match: Option<&'b [u8]>,
    /// W3C Trace Context `traceparent`, when sent.
    pub traceparent: Option<&'b [u8]>,
    /// `Idempotency-Key` on a write, when sent.
    pub idempotency_key: Option<&'b [u8]>,
    /// `Last-Event-ID`: where an event stream resumes (an EventSource
    /// reconnecting sends it).
    pub last_event_id: Option<&'b [u8]>,
    /// Bytes of the head, request line to the blank line included.
    pub head_len: usize,
    pub body: Body<'b>,
}

#[derive(Debug)]
pub enum Parsed<'b> {
    /// A whole request, and the number of buffer bytes it used.
    Complete(Request<'b>, usize),
    /// The buffer ends inside a request. `expect_continue` is true when the
    /// head is complete, asked for `100-continue`, and the body is missing.
    Partial { expect_continue: bool },
}

/// Parse the request at the start of `buf`.
pub fn parse<'b>(buf: &'b [u8], limits: &RequestLimits) -> Result<Parsed<'b>, HttpError> {
    // Uninitialised slots: zeroing 64 headers (2 KiB) per request would cost
    // more than parsing a typical one.
    let mut slots = [const { MaybeUninit::<httparse::Header<'b>>::uninit() }; HEADER_SLOTS];
    let max_headers = limits.max_headers.min(HEADER_SLOTS);
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots[..max_headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            check_partial_head(buf, limits)?;
            return Ok(Parsed::Partial {
                expect_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HEADERS_TOO_LARGE),
        Err(httparse::Error::Version) => return Err(HttpError::VERSION),
        Err(_) => return Err(HttpError::MALFORMED),
    };
    if head_len > limits.max_head {
        return Err(HttpError::HEADERS_TOO_LARGE);
    }
    let target = req.path.unwrap_or("/");
    if target.len() > limits.max_request_line {
        return Err(HttpError::URI_TOO_LONG);
    }
    let http10 = req.version == Some(0);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0usize;
    let mut keep_alive = !http10;
    let mut expect_continue = false;
    let mut authorization = None;
    let mut content_type = None;
    let mut request_id = None;
    let mut if_none_match = None;
    let mut traceparent = None;
    let mut idempotency_key = None;
    let mut last_event_id = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HttpError::framing("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Only `chunked`, alone, is accepted (RFC 9112 §6.1: the final
            // coding must be chunked, and we implement no other coding).
            if trim(value).eq_ignore_ascii_case(b"chunked") && !chunked {
                chunked = true;
            } else {
                return Err(HttpError::NOT_IMPLEMENTED_CODING);
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            content_type = Some(value);
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            request_id = Some(value);
        } else if name.eq_ignore_ascii_case(b"if-none-match") {
            if_none_match = Some(value);
        } else if name.eq_ignore_ascii_case(b"traceparent") {
            traceparent = Some(value);
        } else if name.eq_ignore_ascii_case(b"idempotency-key") {
            idempotency_key = Some(value);
        } else if name.eq_ignore_ascii_case(b"last-event-id") {
            last_event_id = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            if trim(value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = !http10;
            } else {
                return Err(HttpError::EXPECTATION_FAILED);
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(HttpError::framing(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    if !http10 && hosts != 1 {
        return Err(HttpError::framing(
            "HTTP/1.1 requires exactly one Host header",
        ));
    }
    // A byte loop: for targets this short it beats the generic str searcher.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, ""),
    };

    let rest = &buf[head_len..];
    let (body, body_len) = if chunked {
        match dechunk(rest, limits.max_body)? {
            Some((decoded, used)) => (Body::Chunked(decoded), used),
            None => return Ok(Parsed::Partial { expect_continue }),
        }
    } else if let Some(n) = content_length {
        if n > limits.max_body {
            return Err(HttpError::PAYLOAD_TOO_LARGE);
        }
        if rest.len() < n {
            return Ok(Parsed::Partial { expect_continue });
        }
        (Body::Slice(&rest[..n]), n)
    } else {
        (Body::None, 0)
    };

    Ok(Parsed::Complete(
        Request {
            method,
            path,
            query,
            keep_alive,
            http10,
            authorization,
            content_type,
            request_id,
            if_none_match,
            traceparent,
            idempotency_key,
            last_event_id,
            head_len,
            body,
        },
        head_len + body_len,
    ))
}

/// The head is not complete yet: is it already over a limit?
fn check_partial_head(buf: &[u8], limits: &RequestLimits) -> Result<(), HttpError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    match line_end {
        None if buf.len() > limits.max_request_line => Err(HttpError::URI_TOO_LONG),
        Some(n) if n > limits.max_request_line => Err(HttpError::URI_TOO_LONG),
        _ if buf.len() > limits.max_head => Err(HttpError::HEADERS_TOO_LARGE),
        _ => Ok(()),
    }
}

/// Content-Length = 1*DIGIT (RFC 9110 §8.6); no sign, no list, no spaces inside.
fn parse_content_length(value: &[u8]) -> Result<usize, HttpError> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::framing("invalid Content-Length"));
    }
    Ok(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Decode a chunked body at the start of `buf`. `Ok(None)` means more bytes
/// are needed; on success returns the data and the bytes used, trailers
/// included.
fn dechunk(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut out = Vec::new();
    Ok(walk_chunks(buf, max_body, Some(&mut out))?.map(|used| (out, used)))
}

/// Walk a chunked body at the start of `buf` (RFC 9112 §7.1), copying the
/// data into `sink` when given. `Ok(None)`: more bytes needed; otherwise the
/// bytes the body used, trailers included.
fn walk_chunks(
    buf: &[u8],
    max_body: usize,
    mut sink: Option<&mut Vec<u8>>,
) -> Result<Option<usize>, HttpError> {
    let mut pos = 0;
    let mut total = 0usize;
    loop {
        let (data_start, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((n, size))) => (pos + n, size),
            Ok(httparse::Status::Partial) => {
                // A chunk-size line never needs more than a few hundred bytes
                // (hex digits plus extensions); refuse endless ones.
                if buf.len() - pos > 1024 {
                    return Err(HttpError::framing("chunk size line too long"));
                }
                return Ok(None);
            }
            Err(_) => return Err(HttpError::framing("invalid chunk size")),
        };
        if size == 0 {
            // last-chunk, then trailer fields, then CRLF (RFC 9112 §7.1.2).
            let mut slots = [httparse::EMPTY_HEADER; 16];
            return match httparse::parse_headers(&buf[data_start..], &mut slots) {
                Ok(httparse::Status::Complete((n, _))) => Ok(Some(data_start + n)),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(_) => Err(HttpError::framing("invalid chunked trailer")),
            };
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > max_body || total + size > max_body {
            return Err(HttpError::PAYLOAD_TOO_LARGE);
        }
        total += size;
        let data_end = data_start + size;
        if buf.len() < data_end + 2 {
            return Ok(None);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(HttpError::framing("chunk data not followed by CRLF"));
        }
        if let Some(out) = sink.as_deref_mut() {
            out.extend_from_slice(&buf[data_start..data_end]);
        }
        pos = data_end + 2;
    }
}

/// Append `response` to `out` without its `Connection` header fields: they
/// are hop-by-hop (RFC 9110 §7.6.1), so an upstream closing its connection
/// to the balancer says nothing about the client's connection.
pub fn append_without_connection(out: &mut Vec<u8>, response: &[u8]) {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 2);
    let mut line_start = 0;
    while line_start < head_end {
        let line_end = response[line_start..head_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head_end, |i| line_start + i + 1);
        let line = &response[line_start..line_end];
        let is_connection = line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"connection:");
        if !is_connection {
            out.extend_from_slice(line);
        }
        line_start = line_end;
    }
    out.extend_from_slice(&response[head_end..]);
}

/// One response at the front of an upstream connection's buffer (todo-lb).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedResponse {
    /// A whole response: its status, its length in bytes, and whether the
    /// upstream closes the connection after it.
    Complete {
        status: u16,
        len: usize,
        close: bool,
    },
    /// The buffer ends inside a response.
    Partial,
}

/// Frame the response at the start of `buf` (RFC 9112 §6.3): no body after
/// HEAD or for 1xx, 204 and 304; else a chunked body or Content-Length bytes.
/// A response framed by the end of the connection is refused (it could not
/// be pipelined), as are the framing errors refused in requests.
pub fn parse_response(
    buf: &[u8],
    after_head_request: bool,
    max_body: usize,
) -> Result<ParsedResponse, HttpError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(_) => return Err(HttpError::framing("unparsable upstream response")),
    };
    let status = resp.code.unwrap_or(0);
    let mut close = resp.version == Some(0);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HttpError::framing("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(HttpError::framing("unsupported transfer coding"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let bodiless =
        after_head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let body_len = if bodiless {
        0
    } else if chunked {
        match walk_chunks(&buf[head_len..], max_body, None)? {
            Some(n) => n,
            None => return Ok(ParsedResponse::Partial),
        }
    } else if let Some(n) = content_length {
        if n > max_body {
            return Err(HttpError::PAYLOAD_TOO_LARGE);
        }
        if buf.len() - head_len < n {
            return Ok(ParsedResponse::Partial);
        }
        n
    } else {
        return Err(HttpError::framing("upstream response without a length"));
    };
    Ok(ParsedResponse::Complete {
        status,
        len: head_len + body_len,
        close,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits::default()
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, &limits()) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf, &limits()) {
            Err(e) => e.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    const GET: &[u8] = b"GET /todos?limit=3 HTTP/1.1\r\nHost: x\r\n\r\n";
    const POST: &[u8] =
        b"POST /todos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"title\":\"a\"}";
    const CHUNKED: &[u8] =
        b"POST /todos HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"tit\r\n8\r\nle\":\"a\"}\r\n0\r\nX-Trailer: y\r\n\r\n";

    #[test]
    fn get_with_query() {
        let (r, n) = complete(GET);
        assert_eq!(n, GET.len());
        assert_eq!(
            (r.method, r.path, r.query),
            (Method::Get, "/todos", "limit=3")
        );
        assert!(r.keep_alive && !r.http10);
    }

    #[test]
    fn every_split_point_is_partial_then_complete() {
        for whole in [GET, POST, CHUNKED] {
            for cut in 0..whole.len() {
                match parse(&whole[..cut], &limits()) {
                    Ok(Parsed::Partial { .. }) => {}
                    other => panic!(
                        "cut {cut} of {:?}: {other:?}",
                        String::from_utf8_lossy(whole)
                    ),
                }
            }
            let (r, n) = complete(whole);
            assert_eq!(n, whole.len());
            if r.method == Method::Post {
                assert_eq!(r.body.bytes(), b"{\"title\":\"a\"}");
            }
        }
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let mut buf = Vec::new();
        for _ in 0..80 {
            buf.extend_from_slice(GET);
        }
        buf.extend_from_slice(POST);
        let mut at = 0;
        let mut count = 0;
        while at < buf.len() {
            let (_, n) = complete(&buf[at..]);
            at += n;
            count += 1;
        }
        assert_eq!(count, 81);
    }

    #[test]
    fn connection_semantics() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive && r.http10);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn hostile_inputs() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\na", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: fancy\r\n\r\n", 417),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413),
        ];
        for (input, want) in cases {
            assert_eq!(status(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn limits_apply_before_the_head_is_complete() {
        let long_line = [b"GET /".as_slice(), &vec![b'a'; 9000]].concat();
        assert_eq!(status(&long_line), 414);
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..70 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        big.extend_from_slice(format!("X: {}\r\n", "y".repeat(20_000)).as_bytes());
        assert_eq!(status(&big), 431);
        let chunks = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n";
        assert_eq!(status(chunks), 413);
    }

    #[test]
    fn expect_continue_is_reported_while_the_body_is_missing() {
        let head =
            b"POST /todos HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(
            parse(head, &limits()),
            Ok(Parsed::Partial {
                expect_continue: true
            })
        ));
    }

    /// Mutated requests (deterministic xorshift): the parser never panics, a
    /// complete request never claims more bytes than it was given, and bytes
    /// after a complete request never change how it was read.
    #[test]
    fn mutations_never_panic_and_framing_is_stable() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [GET, POST, CHUNKED];
        let interesting = b"\r\n:; \t0123456789abcdefxX-\0\x7f\xff";
        for i in 0..30_000 {
            let mut buf = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (buf.len() + 1);
                match next() % 3 {
                    0 if at < buf.len() => {
                        buf[at] = interesting[(next() as usize) % interesting.len()]
                    }
                    1 => buf.insert(at, interesting[(next() as usize) % interesting.len()]),
                    _ if at < buf.len() => {
                        buf.remove(at);
                    }
                    _ => {}
                }
            }
            if let Ok(Parsed::Complete(req, used)) = parse(&buf, &limits()) {
                assert!(used <= buf.len());
                let (method, path, body) =
                    (req.method, req.path.to_string(), req.body.bytes().to_vec());
                let mut longer = buf.clone();
                longer.extend_from_slice(b"GET / HTTP/1.1\r\nHost: y\r\n\r\n");
                match parse(&longer, &limits()) {
                    Ok(Parsed::Complete(again, used_again)) => {
                        assert_eq!(used_again, used, "{:?}", String::from_utf8_lossy(&buf));
                        assert_eq!(
                            (again.method, again.path, again.body.bytes()),
                            (method, path.as_str(), body.as_slice())
                        );
                    }
                    other => panic!("{:?} became {other:?}", String::from_utf8_lossy(&buf)),
                }
            }
        }
    }

    fn framed(buf: &[u8], head: bool) -> ParsedResponse {
        parse_response(buf, head, 1 << 20).unwrap()
    }

    #[test]
    fn responses_are_framed_at_every_split() {
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let two =
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut both = one.to_vec();
        both.extend_from_slice(two);
        for cut in 0..one.len() {
            assert_eq!(
                framed(&both[..cut], false),
                ParsedResponse::Partial,
                "cut {cut}"
            );
        }
        assert_eq!(
            framed(&both, false),
            ParsedResponse::Complete {
                status: 200,
                len: one.len(),
                close: false
            }
        );
        let rest = &both[one.len()..];
        for cut in 0..rest.len() {
            assert_eq!(
                framed(&rest[..cut], false),
                ParsedResponse::Partial,
                "cut {cut}"
            );
        }
        assert_eq!(
            framed(rest, false),
            ParsedResponse::Complete {
                status: 202,
                len: two.len(),
                close: false
            }
        );
    }

    #[test]
    fn bodiless_responses_and_close() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n";
        assert_eq!(
            framed(head, true),
            ParsedResponse::Complete {
                status: 200,
                len: head.len(),
                close: true
            }
        );
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(matches!(
            framed(no_content, false),
            ParsedResponse::Complete { status: 204, .. }
        ));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            framed(old, false),
            ParsedResponse::Complete { close: true, .. }
        ));
    }

    #[test]
    fn connection_fields_are_not_passed_on() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\nX: y\r\n\r\n[]";
        let mut out = Vec::new();
        append_without_connection(&mut out, resp);
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n[]"[..]
        );
        assert!(matches!(
            parse_response(&out, false, 100).unwrap(),
            ParsedResponse::Complete { close: false, len, .. } if len == out.len()
        ));
    }

    #[test]
    fn unframable_responses_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, false, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_length_and_request_id_are_reported() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n\r\nnext";
        let (req, used) = complete(buf);
        assert_eq!(req.head_len, used);
        assert_eq!(req.head_len, buf.len() - 4);
        assert_eq!(req.request_id, Some(&b"r1"[..]));
    }
}
