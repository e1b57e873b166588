//! The request parser on any bytes: every request it takes off the front
//! uses at least one byte and no more than there are; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_http::http1::{parse, Parsed, RequestLimits};

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits::default();
    let mut at = 0;
    while at < data.len() {
        match parse(&data[at..], &limits) {
            Ok(Parsed::Complete(req, used)) => {
                assert!(used > 0 && used <= data.len() - at);
                assert!(req.head_len <= used);
                at += used;
            }
            Ok(Parsed::Partial { .. }) | Err(_) => break,
        }
    }
});
