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

/// The commands of `items` (each giving its [`Packed`] through `packed`)
/// written as an [`Envelope`] of them, byte for byte, without moving them
/// out of where they are held (a sender's list of waiting commands).
pub struct EnvelopeOf<'a, T> {
    pub items: &'a [T],
    pub packed: fn(&T) -> &Packed,
}

impl<T> Serialize for EnvelopeOf<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Commands<'b, T>(&'b EnvelopeOf<'b, T>);
        impl<T> Serialize for Commands<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.items.iter().map(self.0.packed))
            }
        }
        let mut envelope = s.serialize_struct("Envelope", 1)?;
        envelope.serialize_field("commands", &Commands(self))?;
        envelope.end()
    }
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
    fn an_envelope_of_held_commands_is_the_envelope_of_them() {
        let packed: Vec<Packed> = (0..3u64)
            .map(|i| Packed {
                command: TodoCommand {
                    command_id: 10 + i,
                    op: crate::Op::Create,
                    todo_id: 20 + i,
                    user: format!("user{i}"),
                    fields: crate::Fields {
                        title: Some(format!("t\"{i}")),
                        ..crate::Fields::default()
                    },
                    issued_at: 1_700_000_000_000 + i,
                    name: None,
                    password_hash: None,
                    idempotency: None,
                },
                request_id: (i != 1).then(|| format!("req-{i}")),
                traceparent: (i == 2)
                    .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            })
            .collect();
        // Held beside something else, as a sender holds them.
        let held: Vec<(Packed, u8)> = packed.iter().map(|p| (p.clone(), 0)).collect();
        let ours = sonic_rs::to_vec(&EnvelopeOf {
            items: &held,
            packed: |h| &h.0,
        })
        .unwrap();
        let envelope = Envelope { commands: packed };
        assert_eq!(ours, sonic_rs::to_vec(&envelope).unwrap());
        assert_eq!(sonic_rs::from_slice::<Envelope>(&ours).unwrap(), envelope);
    }

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
