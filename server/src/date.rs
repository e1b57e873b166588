//! The `Date` header value, cached per core and refreshed once a second by a
//! timer task (RFC 9110 §6.6.1 allows second resolution), so the hot path
//! copies 29 bytes instead of formatting a time.

use std::cell::Cell;
use std::time::SystemTime;

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

#[derive(Debug)]
pub struct DateCache {
    value: Cell<[u8; DATE_LEN]>,
}

impl Default for DateCache {
    fn default() -> Self {
        let cache = DateCache {
            value: Cell::new([b' '; DATE_LEN]),
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

    pub fn refresh(&self) {
        let text = httpdate::fmt_http_date(SystemTime::now());
        let mut value = [b' '; DATE_LEN];
        let n = text.len().min(DATE_LEN);
        value[..n].copy_from_slice(&text.as_bytes()[..n]);
        self.value.set(value);
    }
}
