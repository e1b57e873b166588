//! The answer of an admin address (todo-lb's `--admin`, todo-worker's
//! metrics address): `GET /metrics` (Prometheus text, rendered by the
//! caller) and `GET /livez`, one answer per connection, then close. No
//! I/O here: the caller reads, asks [`answer`], and writes what it appended.

use crate::http1::{self, Method, Parsed, RequestLimits};
use crate::response::{self, Head, Persist};
use crate::DateCache;

/// Answer the request in `buf` into `out`: true once an answer was
/// appended (the request was complete, or broke a rule of
/// [`RequestLimits::default`]), false while more bytes are needed.
/// `metrics` renders the Prometheus text, only when it is asked for.
pub fn answer(
    buf: &[u8],
    date: &DateCache,
    out: &mut Vec<u8>,
    metrics: impl FnOnce() -> String,
) -> bool {
    match http1::parse(buf, &RequestLimits::default()) {
        Ok(Parsed::Complete(req, _)) => {
            let (status, body) = match (req.method, req.path) {
                (Method::Get, "/metrics") => (200, metrics()),
                (Method::Get, "/livez") => (200, "ok\n".to_string()),
                _ => (404, "not found: GET /metrics or /livez\n".to_string()),
            };
            let head = Head {
                status,
                date,
                persist: Persist::Close,
                head_only: false,
                text: true,
                extra: b"",
            };
            response::append(out, head, &[body.as_bytes()]);
            true
        }
        Ok(Parsed::Partial { .. }) => false,
        Err(e) => {
            response::append_error(out, &e, date, Persist::Close);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    #[test]
    fn metrics_livez_and_the_rest() {
        let date = DateCache::default();
        let mut out = Vec::new();
        let req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(!answer(&req[..10], &date, &mut out, || unreachable!()));
        assert!(out.is_empty());
        assert!(answer(req, &date, &mut out, || "m 1\n".into()));
        assert!(text(&out).starts_with("HTTP/1.1 200"));
        assert!(text(&out).ends_with("m 1\n"));
        out.clear();
        assert!(answer(
            b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n",
            &date,
            &mut out,
            String::new
        ));
        assert!(text(&out).ends_with("ok\n"));
        out.clear();
        assert!(answer(
            b"POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            &date,
            &mut out,
            String::new
        ));
        assert!(text(&out).starts_with("HTTP/1.1 404"));
        out.clear();
        assert!(answer(
            b"GET / HTTP/1.1\r\n\r\n",
            &date,
            &mut out,
            String::new
        ));
        assert!(
            text(&out).starts_with("HTTP/1.1 400"),
            "no Host: {}",
            text(&out)
        );
    }
}
