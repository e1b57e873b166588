//! Appending responses to a connection's output buffer.
//!
//! Every response of a batch is appended to one `Vec<u8>` that the connection
//! loop writes once. Status lines and constant headers are static bytes;
//! only `Date` (copied from the per-core cache) and `Content-Length` (itoa, on
//! the stack) vary.

use crate::date::DateCache;
use crate::error::HttpError;

/// What follows the status line in every response. No `Server` header: it
/// is optional (RFC 9110 §10.2.4), says nothing a client needs, and would be
/// 14 more bytes on every answer of the hot path.
const SERVER: &[u8] = b"\r\nDate: ";
/// The same bytes end the `200` JSON head the Date cache holds.
const JSON: &[u8] = crate::date::OK_JSON_AFTER_DATE;
const TEXT: &[u8] = b"\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: ";

pub fn status_line(status: u16) -> &'static [u8] {
    match status {
        100 => b"HTTP/1.1 100 Continue",
        200 => b"HTTP/1.1 200 OK",
        201 => b"HTTP/1.1 201 Created",
        202 => b"HTTP/1.1 202 Accepted",
        204 => b"HTTP/1.1 204 No Content",
        304 => b"HTTP/1.1 304 Not Modified",
        409 => b"HTTP/1.1 409 Conflict",
        400 => b"HTTP/1.1 400 Bad Request",
        401 => b"HTTP/1.1 401 Unauthorized",
        403 => b"HTTP/1.1 403 Forbidden",
        404 => b"HTTP/1.1 404 Not Found",
        405 => b"HTTP/1.1 405 Method Not Allowed",
        408 => b"HTTP/1.1 408 Request Timeout",
        411 => b"HTTP/1.1 411 Length Required",
        413 => b"HTTP/1.1 413 Content Too Large",
        414 => b"HTTP/1.1 414 URI Too Long",
        415 => b"HTTP/1.1 415 Unsupported Media Type",
        417 => b"HTTP/1.1 417 Expectation Failed",
        422 => b"HTTP/1.1 422 Unprocessable Content",
        429 => b"HTTP/1.1 429 Too Many Requests",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large",
        501 => b"HTTP/1.1 501 Not Implemented",
        502 => b"HTTP/1.1 502 Bad Gateway",
        503 => b"HTTP/1.1 503 Service Unavailable",
        504 => b"HTTP/1.1 504 Gateway Timeout",
        505 => b"HTTP/1.1 505 HTTP Version Not Supported",
        _ => b"HTTP/1.1 500 Internal Server Error",
    }
}

/// How the connection continues after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// HTTP/1.0 client that asked to keep the connection.
    KeepAlive10,
    /// Last response on this connection.
    Close,
}

/// Response framing options.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub status: u16,
    pub date: &'a DateCache,
    pub persist: Persist,
    /// HEAD request: headers as for GET, no body bytes.
    pub head_only: bool,
    pub text: bool,
    pub extra: &'a [u8],
}

/// Append a response whose body is `parts` concatenated. 204 and 304 carry
/// no body and no Content-Length (RFC 9110 §8.6: a 304's would have to be
/// the 200's length, which is not known here).
#[inline]
pub fn append(out: &mut Vec<u8>, head: Head<'_>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if head.status == 204 || head.status == 304 {
        out.extend_from_slice(status_line(head.status));
        out.extend_from_slice(SERVER);
        out.extend_from_slice(&head.date.get());
        persist_and_extra(out, head);
        return;
    }
    if head.status == 200 && !head.text {
        head.date.with_ok_json_head(|h| out.extend_from_slice(h));
    } else {
        out.extend_from_slice(status_line(head.status));
        out.extend_from_slice(SERVER);
        out.extend_from_slice(&head.date.get());
        out.extend_from_slice(if head.text { TEXT } else { JSON });
    }
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(len).as_bytes());
    persist_and_extra(out, head);
    if !head.head_only {
        for p in parts {
            out.extend_from_slice(p);
        }
    }
}

#[inline]
fn persist_and_extra(out: &mut Vec<u8>, head: Head<'_>) {
    match head.persist {
        Persist::KeepAlive => {}
        Persist::KeepAlive10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persist::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(head.extra);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Append an error response.
pub fn append_error(out: &mut Vec<u8>, err: &HttpError, date: &DateCache, persist: Persist) {
    append_error_to(out, err, date, persist, false);
}

/// Append an error response to a request that was `HEAD` when `head_only`:
/// the same head, and no body (RFC 9110 §9.3.2; bytes after it would be
/// read as the next response on the connection).
pub fn append_error_to(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateCache,
    persist: Persist,
    head_only: bool,
) {
    append_error_with(out, err, date, persist, head_only, b"");
}

/// [`append_error_to`] with more header lines: `fields`, each led by
/// `\r\n` (for example `\r\nRateLimit: ...`).
pub fn append_error_with(
    out: &mut Vec<u8>,
    err: &HttpError,
    date: &DateCache,
    persist: Persist,
    head_only: bool,
    fields: &[u8],
) {
    let mut extra = Vec::new();
    if let Some(allow) = err.allow {
        extra.extend_from_slice(b"\r\nAllow: ");
        extra.extend_from_slice(allow.as_bytes());
    }
    if let Some(secs) = err.retry_after {
        extra.extend_from_slice(b"\r\nRetry-After: ");
        extra.extend_from_slice(itoa::Buffer::new().format(secs).as_bytes());
    }
    extra.extend_from_slice(fields);
    let persist = if err.close { Persist::Close } else { persist };
    append(
        out,
        Head {
            status: err.status,
            date,
            persist,
            head_only,
            text: false,
            extra: &extra,
        },
        &[&err.body()],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_exact() {
        let date = DateCache::default();
        let mut out = Vec::new();
        let head = Head {
            status: 200,
            date: &date,
            persist: Persist::KeepAlive,
            head_only: false,
            text: false,
            extra: b"",
        };
        append(&mut out, head, &[b"[1,2", b"]"]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Length: 5\r\n\r\n[1,2]"));
        assert!(text.ends_with("\r\n\r\n[1,2]"));
    }

    #[test]
    fn errors_carry_allow_and_close() {
        let date = DateCache::default();
        let mut out = Vec::new();
        append_error(
            &mut out,
            &HttpError::method_not_allowed("GET, POST"),
            &date,
            Persist::KeepAlive,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 "));
        assert!(text.contains("\r\nAllow: GET, POST\r\n"));
        let mut out = Vec::new();
        append_error(&mut out, &HttpError::MALFORMED, &date, Persist::KeepAlive);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Connection: close"));
    }

    #[test]
    fn an_error_to_head_has_no_body() {
        let date = DateCache::default();
        let mut out = Vec::new();
        append_error_to(
            &mut out,
            &HttpError::NOT_FOUND,
            &date,
            Persist::KeepAlive,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        let length = HttpError::NOT_FOUND.body().len();
        assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
        assert!(text.contains(&format!("\r\nContent-Length: {length}\r\n")));
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
