//! The RESP2 frame reader the server's cores and the worker use: frames come
//! off the front of a buffer until it is incomplete or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_store::resp::take_frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    while let Ok(Some(_)) = take_frame(&mut buf) {}
});
