//! Request ids and W3C trace context: how one request is followed through
//! the access log, the Kafka record and the worker's log.
//!
//! - `X-Request-Id`: taken from the request when it is 1-128 characters of
//!   `[A-Za-z0-9._:/+=-]` (todo-lb sends one), otherwise made here:
//!   24 hex digits, a random per-process prefix, the core and a counter.
//! - `traceparent` (W3C Trace Context §3.2): a valid one keeps its trace id
//!   and gets this server's span id as the new parent id; an absent or
//!   invalid one starts a new trace (sampled).
//!
//! Both are echoed in the response. They are made only where they are used
//! (every write, every logged request), so the read hot path pays nothing
//! when the client sends neither and the access log is off.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// Longest `X-Request-Id` kept as sent, bytes.
pub const MAX_REQUEST_ID: usize = 128;

/// One request's ids, as the header lines that carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The request id (as sent, or made).
    pub request_id: String,
    /// This server's `traceparent`, when the request has one (writes).
    pub traceparent: Option<String>,
}

/// A core's maker of ids: no shared state, no syscall.
pub struct Ids {
    /// Random per process, so ids of different processes differ.
    prefix: u64,
    core: u8,
    counter: Cell<u64>,
}

impl Ids {
    pub fn new(core: usize) -> Self {
        Ids {
            prefix: random_u64(),
            core: core as u8,
            counter: Cell::new(0),
        }
    }

    fn next(&self) -> u64 {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        n
    }

    /// The request id to use: the client's when valid, else a new one.
    pub fn request_id(&self, sent: Option<&[u8]>) -> String {
        match sent {
            Some(id) if valid_request_id(id) => {
                // Checked above: ASCII only.
                String::from_utf8_lossy(id).into_owned()
            }
            _ => format!(
                "{:08x}{:02x}{:014x}",
                self.prefix as u32,
                self.core,
                self.next() & 0x00ff_ffff_ffff_ffff
            ),
        }
    }

    /// This server's `traceparent`: the sender's trace with a new span, or
    /// a new trace.
    pub fn traceparent(&self, sent: Option<&[u8]>) -> String {
        let span = self.span_id();
        match sent.and_then(parse_traceparent) {
            Some((trace_id, flags)) => format!("00-{trace_id}-{span:016x}-{flags}"),
            None => format!(
                "00-{:016x}{:02x}{:014x}-{span:016x}-01",
                self.prefix,
                self.core,
                self.next() & 0x00ff_ffff_ffff_ffff
            ),
        }
    }

    fn span_id(&self) -> u64 {
        // Never all zeros (invalid, §3.2.2.4).
        (self.prefix.rotate_left(17) ^ (self.next() << 8) ^ u64::from(self.core)) | 1
    }

    /// Both, for a request that needs them.
    pub fn trace(&self, request_id: Option<&[u8]>, traceparent: Option<&[u8]>) -> Trace {
        Trace {
            request_id: self.request_id(request_id),
            traceparent: Some(self.traceparent(traceparent)),
        }
    }
}

/// 1-128 characters of `[A-Za-z0-9._:/+=-]`: safe to echo in a header and
/// to write in a JSON log line without escaping.
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(&b))
}

/// The trace id and flags of a version-00 `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zeros), or
/// `None` when it is not one (W3C Trace Context §3.2.2).
pub fn parse_traceparent(value: &[u8]) -> Option<(&str, &str)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |p: &str| p.bytes().all(|b| b == b'0');
    if parts.next().is_some()
        || version != "00"
        || !hex(trace_id, 32)
        || !hex(parent_id, 16)
        || !hex(flags, 2)
        || zero(trace_id)
        || zero(parent_id)
    {
        return None;
    }
    Some((trace_id, flags))
}

/// A random u64 from the standard library's randomly keyed hasher (seeded
/// from the OS once per process); ids need uniqueness, not secrecy.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Insert the trace's header lines after the status line of the response
/// that starts at `out[start..]`.
pub fn stamp(out: &mut Vec<u8>, start: usize, trace: &Trace) {
    if start >= out.len() {
        return;
    }
    let Some(i) = memchr::memchr(b'\n', &out[start..]) else {
        return;
    };
    let at = start + i + 1;
    // Header lines are short (an id of at most 128 bytes, a 55-byte
    // traceparent): built on the stack, moved in with one splice.
    let mut lines = [0u8; 256];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        lines[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(b"X-Request-Id: ");
    put(trace.request_id.as_bytes());
    put(b"\r\n");
    if let Some(tp) = &trace.traceparent {
        put(b"traceparent: ");
        put(tp.as_bytes());
        put(b"\r\n");
    }
    out.splice(at..at, lines[..len].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_valid_and_made_otherwise() {
        let ids = Ids::new(3);
        assert_eq!(ids.request_id(Some(b"abc-123")), "abc-123");
        let made = ids.request_id(None);
        assert_eq!(made.len(), 24);
        assert_ne!(made, ids.request_id(None));
        for bad in [&b""[..], b"a b", b"a\"b", &[b'x'; 129]] {
            let id = ids.request_id(Some(bad));
            assert_eq!(id.len(), 24, "{bad:?} replaced");
        }
    }

    #[test]
    fn traceparent_keeps_the_trace_and_replaces_the_parent() {
        let ids = Ids::new(0);
        let sent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = ids.traceparent(Some(sent));
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert!(!tp.contains("00f067aa0ba902b7"));
        assert!(parse_traceparent(tp.as_bytes()).is_some());
        for bad in [
            &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
            let made = ids.traceparent(Some(bad));
            assert!(parse_traceparent(made.as_bytes()).is_some(), "{made}");
        }
    }

    #[test]
    fn stamp_goes_after_the_status_line() {
        let mut out = b"junkHTTP/1.1 200 OK\r\nA: b\r\n\r\nbody".to_vec();
        let trace = Trace {
            request_id: "1".into(),
            traceparent: None,
        };
        stamp(&mut out, 4, &trace);
        assert_eq!(
            out,
            b"junkHTTP/1.1 200 OK\r\nX-Request-Id: 1\r\nA: b\r\n\r\nbody".to_vec()
        );
        let longest = Trace {
            request_id: "r".repeat(MAX_REQUEST_ID),
            traceparent: Some(Ids::new(0).traceparent(None)),
        };
        stamp(&mut out, 4, &longest);
        assert!(String::from_utf8_lossy(&out).contains(&longest.request_id));
    }
}
