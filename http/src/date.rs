//! The `Date` header value, cached per core and refreshed once a second by a
//! timer task (RFC 9110 §6.6.1 allows second resolution), so the hot path
//! copies bytes instead of formatting a time. The whole head of a `200` JSON
//! response up to its Content-Length value is cached with it: one copy per
//! response instead of five.

use std::cell::{Cell, RefCell};
use std::time::SystemTime;

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

/// The cached head of a `200` JSON response is these around the date
/// ([`crate::response::append`] copies it whole).
const OK_JSON_BEFORE_DATE: &[u8] = b"HTTP/1.1 200 OK\r\nDate: ";
pub(crate) const OK_JSON_AFTER_DATE: &[u8] =
    b"\r\nContent-Type: application/json\r\nContent-Length: ";

#[derive(Debug)]
pub struct DateCache {
    value: Cell<[u8; DATE_LEN]>,
    ok_json: RefCell<Vec<u8>>,
    /// Moves on at every refresh: heads built around a date compare it to
    /// know they are current.
    generation: Cell<u64>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Cell::new([b' '; DATE_LEN]),
            ok_json: RefCell::new(Vec::with_capacity(128)),
            generation: Cell::new(0),
        };
        cache.refresh();
        cache
    }
}

impl DateCache {
    #[inline]
    pub fn get(&self) -> [u8; DATE_LEN] {
        self.value.get()
    }

    /// `HTTP/1.1 200 OK ... Date: ... Content-Length: ` for JSON bodies.
    #[inline]
    pub fn with_ok_json_head<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.ok_json.borrow())
    }

    /// How many refreshes there were.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    pub fn refresh(&self) {
        self.generation.set(self.generation.get() + 1);
        let text = httpdate::fmt_http_date(SystemTime::now());
        let mut value = [b' '; DATE_LEN];
        let n = text.len().min(DATE_LEN);
        value[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.value.set(value);
        let mut head = self.ok_json.borrow_mut();
        head.clear();
        head.extend_from_slice(OK_JSON_BEFORE_DATE);
        head.extend_from_slice(&value);
        head.extend_from_slice(OK_JSON_AFTER_DATE);
    }
}
