//! The embedded command log's reader: records come in order, inside the
//! bytes, and the good part ends where the records do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_server::embedded::command_log::{scan, Tail};

fuzz_target!(|data: &[u8]| {
    let s = scan(data);
    assert!(s.good_len as usize <= data.len());
    assert!(s.records.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(s.records.iter().all(|(offset, _)| *offset < s.good_len.max(1)));
    match s.tail {
        Tail::Clean => assert_eq!(s.good_len as usize, data.len()),
        Tail::Torn { offset, .. } | Tail::Damaged { offset, .. } => {
            assert_eq!(offset, s.good_len, "the bad part starts where the good ends")
        }
    }
});
