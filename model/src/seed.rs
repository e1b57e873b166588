//! The todos an empty store starts with (design: 10,000).

use crate::ids::{IdGenerator, MAX_NODE};
use crate::todo::Todo;

/// Default number of seeded todos.
pub const SEED_COUNT: usize = 10_000;
/// Owner of the seeded todos.
pub const SEED_OWNER: &str = "seed";

/// `count` public todos, oldest first, created one second apart ending at `now_ms`.
/// Ids come from the reserved node [`MAX_NODE`], so they never collide with a
/// server's.
pub fn seed(count: usize, now_ms: u64) -> Vec<Todo> {
    let mut ids = IdGenerator::new(MAX_NODE);
    let start = now_ms.saturating_sub(count as u64 * 1000);
    (0..count)
        .map(|i| {
            let at = start + i as u64 * 1000;
            Todo {
                id: ids.next_id(at),
                owner: SEED_OWNER.to_string(),
                title: format!("Todo #{}", i + 1),
                description: format!("Seeded todo number {} of {count}", i + 1),
                completed: i % 3 == 0,
                created_at: at,
                updated_at: at,
                category_id: None,
                // The demo list: what the public hot path serves.
                public: true,
            }
        })
        .collect()
}
