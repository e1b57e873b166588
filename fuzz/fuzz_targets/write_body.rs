//! A write's JSON body: parsed and checked against the field rules for each
//! operation; every answer is a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_model::Op;
use todo_server::routes::todos::parse_body;

fuzz_target!(|data: &[u8]| {
    if let Ok(fields) = parse_body(data) {
        for op in [Op::Create, Op::Update, Op::Delete] {
            let _ = fields.validate(op);
        }
    }
});
