//! Packed commands: one Kafka record carrying every command a server core
//! had waiting for one partition at the same moment, so the broker takes
//! one record where it took many.
//!
//! ```text
//! record  key: the first command's todo id   header: todo-envelope: 1
//! value   {"commands":[{"command":{TodoCommand},"request_id":"..","traceparent":".."}, ...]}
//! ```
//!
//! A record without the `todo-envelope` header is one bare [`TodoCommand`]
//! (what servers wrote before envelopes, still read). Commands keep their
//! ids, so applying them once each (processed_commands) is unchanged; one
//! todo's commands always go to one partition ([`partition_of`]), so they
//! stay in order.

use serde::{Deserialize, Serialize};

use crate::TodoCommand;

/// The header that marks a record as an [`Envelope`].
pub const ENVELOPE_HEADER: &str = "todo-envelope";

/// Commands of one record, in the order they were accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub commands: Vec<Packed>,
}

/// One command and where its request came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    pub command: TodoCommand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The partition of todo `todo_id`'s commands among `partitions`: what
/// librdkafka's default partitioner (`consistent_random`: CRC-32 of the
/// key) picks for the key the servers give a single command (its todo id
/// in decimal), so envelopes and single records of one todo meet in one
/// partition.
pub fn partition_of(todo_id: u64, partitions: u32) -> i32 {
    let key = itoa::Buffer::new().format(todo_id).as_bytes().to_vec();
    (crc32fast::hash(&key) % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_and_stay_put() {
        let mut seen = [0u32; 6];
        for id in 0..6000u64 {
            let p = partition_of(id * 4_194_304 + 17, 6);
            assert_eq!(p, partition_of(id * 4_194_304 + 17, 6));
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
        assert_eq!(partition_of(42, 0), partition_of(42, 1));
        // The standard CRC-32 (as librdkafka's rd_crc32) of "123456789".
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }
}
