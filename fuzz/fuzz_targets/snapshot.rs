//! The Redis snapshot value: whatever decodes can be served (every slice the
//! read path takes is in bounds) and encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_store::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some(snapshot) = decode(data) else {
        return;
    };
    for n in 0..=snapshot.len() + 1 {
        let _ = snapshot.prefix(n);
    }
    for &id in snapshot.ids() {
        let _ = snapshot.row_by_id(id);
    }
    let _ = snapshot.row_by_id(0);
    assert_eq!(encode(&snapshot), data);
});
