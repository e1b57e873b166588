//! The stored form of a [`Snapshot`] (the Redis value `todos:snapshot`):
//! version, row count, row end offsets, row ids, then the JSON body;
//! integers big-endian. The version comes first so that Redis can compare
//! two values' versions as byte strings (see [`crate::publish`]).

use todo_model::{Snapshot, SNAPSHOT_MAX};

/// The bytes stored in Redis for `snapshot`.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let (ends, ids, body) = (snapshot.row_ends(), snapshot.ids(), snapshot.body());
    let mut out = Vec::with_capacity(12 + ends.len() * 12 + body.len());
    out.extend_from_slice(&snapshot.version().to_be_bytes());
    out.extend_from_slice(&(ends.len() as u32).to_be_bytes());
    for e in ends {
        out.extend_from_slice(&e.to_be_bytes());
    }
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The version of an encoded snapshot, without decoding the rest.
pub fn encoded_version(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Decode [`encode`]'s output; `None` for anything malformed (the checks are
/// [`Snapshot::from_parts`]'s), so a corrupt value is refused, never served.
pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
    let version = encoded_version(bytes)?;
    let n = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
    if n > SNAPSHOT_MAX {
        return None;
    }
    let ends_at = 12;
    let ids_at = ends_at + n * 4;
    let body_at = ids_at + n * 8;
    let ends = bytes
        .get(ends_at..ids_at)?
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let ids = bytes
        .get(ids_at..body_at)?
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Snapshot::from_parts(version, bytes.get(body_at..)?.to_vec(), ends, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use todo_model::seed::seed;

    #[test]
    fn encoding_round_trips_and_refuses_corruption() {
        let mut todos = seed(50, 1_800_000_000_000);
        todos.reverse();
        let s = Snapshot::render(42, &todos);
        let bytes = encode(&s);
        assert_eq!(encoded_version(&bytes), Some(42));
        assert_eq!(decode(&bytes), Some(s.clone()));
        let empty = Snapshot::render(1, &[]);
        assert_eq!(decode(&encode(&empty)), Some(empty));
        for cut in [0, 7, 11, 100, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn no_byte_flip_of_the_offsets_reaches_a_panic() {
        let mut todos = seed(4, 1_800_000_000_000);
        todos.reverse();
        let bytes = encode(&Snapshot::render(3, &todos));
        for at in 8..12 + 4 * 12 {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut bad = bytes.clone();
                bad[at] = value;
                if let Some(s) = decode(&bad) {
                    for id in s.ids() {
                        let _ = s.row_by_id(*id);
                    }
                    for n in 0..=s.len() {
                        let _ = s.prefix(n);
                    }
                }
            }
        }
    }

    /// Property: any bytes, and above all any damage to a good value, either
    /// decode to a snapshot whose every slice is in bounds and that encodes
    /// back to the same bytes, or are refused. (fuzz/ runs the same check,
    /// coverage-guided.)
    #[test]
    fn whatever_decodes_is_servable_and_the_rest_is_refused() {
        let mut todos = seed(6, 1_800_000_000_000);
        todos.reverse();
        let good = encode(&Snapshot::render(9, &todos));
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut decoded, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            match decode(&bytes) {
                Some(s) => {
                    decoded += 1;
                    for n in 0..=s.len() + 1 {
                        let _ = s.prefix(n);
                    }
                    for id in s.ids() {
                        let _ = s.row_by_id(*id);
                    }
                    assert_eq!(encode(&s), bytes);
                }
                None => refused += 1,
            }
        }
        assert!(
            refused > 0 && decoded > 0,
            "{decoded} decoded, {refused} refused"
        );
    }
}
