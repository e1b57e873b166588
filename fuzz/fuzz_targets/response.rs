//! The proxy's response framing (todo-lb) on any bytes: a complete response
//! is no longer than the buffer; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_http::http1::{parse_response, ParsedResponse};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let after_head = flags & 1 == 1;
    let mut at = 0;
    while at < data.len() {
        match parse_response(&data[at..], after_head, 1 << 20) {
            Ok(ParsedResponse::Complete { len, .. }) => {
                assert!(len > 0 && len <= data.len() - at);
                at += len;
            }
            Ok(ParsedResponse::Partial) | Err(_) => break,
        }
    }
});
