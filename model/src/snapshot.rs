//! The ONE renderer of the served JSON bytes.
//!
//! A [`Snapshot`] is the newest [`SNAPSHOT_MAX`] public todos (whoever
//! renders one passes only those: the hot path serves it to anyone and
//! checks no viewer, docs/architecture.md §13), rendered once into
//! `[row,row,...,row]` plus the end offset of every row. The body for
//! `limit=N` is then `body[..ends[N-1]]` followed by `]`: no rendering, no
//! allocation per request. Every process that serves or stores the snapshot
//! (server cores, the embedded store, the worker) renders it here and nowhere
//! else, so the bytes a client sees do not depend on which path wrote them.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::todo::Todo;

/// Most todos a snapshot holds, and so the largest `limit` served.
pub const SNAPSHOT_MAX: usize = 1000;

/// The served form of one todo: timestamps as RFC 3339 strings (UTC, ms).
#[derive(Serialize)]
struct TodoJson<'a> {
    id: u64,
    title: &'a str,
    description: &'a str,
    completed: bool,
    owner: &'a str,
    #[serde(serialize_with = "rfc3339")]
    created_at: u64,
    #[serde(serialize_with = "rfc3339")]
    updated_at: u64,
    category_id: Option<u64>,
    public: bool,
}

pub(crate) fn rfc3339<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(*ms),
    ))
}

/// Append the JSON object of one todo to `out`.
pub fn render_todo(todo: &Todo, out: &mut Vec<u8>) {
    let json = TodoJson {
        id: todo.id,
        title: &todo.title,
        description: &todo.description,
        completed: todo.completed,
        owner: &todo.owner,
        created_at: todo.created_at,
        updated_at: todo.updated_at,
        category_id: todo.category_id,
        public: todo.public,
    };
    // Writing a derived Serialize of strings, numbers and bools into a Vec
    // cannot fail.
    sonic_rs::to_writer(&mut *out, &json).expect("rendering a todo into memory cannot fail");
}

/// The newest todos rendered once, with a version that only goes forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    version: u64,
    /// `[row,row,...]` — a complete JSON array.
    body: Vec<u8>,
    /// `ends[i]`: offset just past row `i` (before its `,` or the final `]`).
    ends: Vec<u32>,
    /// `ids[i]`: the id of row `i`, for `GET /todos/{id}` without parsing.
    ids: Vec<u64>,
}

impl Snapshot {
    /// Render `newest_first` (at most [`SNAPSHOT_MAX`] are taken).
    pub fn render<'a>(version: u64, newest_first: impl IntoIterator<Item = &'a Todo>) -> Self {
        let mut body = Vec::with_capacity(64 * 1024);
        let mut ends = Vec::new();
        let mut ids = Vec::new();
        body.push(b'[');
        for todo in newest_first.into_iter().take(SNAPSHOT_MAX) {
            if !ends.is_empty() {
                body.push(b',');
            }
            render_todo(todo, &mut body);
            ends.push(body.len() as u32);
            ids.push(todo.id);
        }
        body.push(b']');
        Snapshot {
            version,
            body,
            ends,
            ids,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of todos held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The whole array, a valid JSON document.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body of `limit=n` is `prefix(n)` followed by one `]` byte; its
    /// length is `prefix(n).len() + 1`. `n` is clamped to what is held.
    #[inline]
    pub fn prefix(&self, n: usize) -> &[u8] {
        let n = n.min(self.ends.len());
        if n == 0 {
            &self.body[..1]
        } else {
            &self.body[..self.ends[n - 1] as usize]
        }
    }

    /// Offsets just past each row (before its `,` or the final `]`).
    pub fn row_ends(&self) -> &[u32] {
        &self.ends
    }

    /// The id of each row, newest first.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// A snapshot from its parts (a stored form read back), or `None` unless
    /// they agree: `body` is `[` rows `]`, one id and one end per row, each
    /// row at least `{}` long and ends strictly increasing inside the body, so
    /// every slice [`Snapshot::prefix`] and [`Snapshot::row_by_id`] take is in
    /// bounds. A corrupt value is refused, never served.
    pub fn from_parts(version: u64, body: Vec<u8>, ends: Vec<u32>, ids: Vec<u64>) -> Option<Self> {
        let mut start = 1; // just past `[`
        for &end in &ends {
            let end = end as usize;
            if end < start + 2 {
                return None;
            }
            start = end + 1; // past the `,`
        }
        let well_formed = ends.len() <= SNAPSHOT_MAX
            && ids.len() == ends.len()
            && body.first() == Some(&b'[')
            && body.last() == Some(&b']')
            && ends.last().is_none_or(|&e| (e as usize) < body.len())
            && (!ends.is_empty() || body.len() == 2);
        well_formed.then_some(Snapshot {
            version,
            body,
            ends,
            ids,
        })
    }

    /// The JSON object of the todo `id`, if it is among those held.
    pub fn row_by_id(&self, id: u64) -> Option<&[u8]> {
        // Rows are newest first and ids are time-ordered, so ids descend.
        let i = self.ids.binary_search_by(|probe| id.cmp(probe)).ok()?;
        let start = if i == 0 {
            1
        } else {
            self.ends[i - 1] as usize + 1
        };
        Some(&self.body[start..self.ends[i] as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::seed;

    fn body_for(s: &Snapshot, n: usize) -> Vec<u8> {
        let mut b = s.prefix(n).to_vec();
        b.push(b']');
        b
    }

    #[test]
    fn every_limit_is_a_valid_array_of_that_many() {
        let mut todos = seed(1200, 1_800_000_000_000);
        todos.reverse();
        let s = Snapshot::render(1, &todos);
        assert_eq!(s.len(), SNAPSHOT_MAX);
        for n in [1, 2, 10, 999, 1000, 5000] {
            let v: Vec<sonic_rs::Value> = sonic_rs::from_slice(&body_for(&s, n)).unwrap();
            assert_eq!(v.len(), n.min(SNAPSHOT_MAX));
        }
        assert_eq!(body_for(&s, 1000), s.body());
    }

    #[test]
    fn rows_are_found_by_id_and_render_timestamps() {
        let mut todos = seed(5, 1_800_000_000_000);
        todos.reverse();
        let s = Snapshot::render(9, &todos);
        for t in &todos {
            let row = s.row_by_id(t.id).unwrap();
            let v: sonic_rs::Value = sonic_rs::from_slice(row).unwrap();
            use sonic_rs::JsonValueTrait;
            assert_eq!(v["id"].as_u64(), Some(t.id));
            assert_eq!(v["title"].as_str(), Some(t.title.as_str()));
            assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        }
        assert!(s.row_by_id(12345).is_none());
    }

    #[test]
    fn parts_that_disagree_are_refused() {
        let mut todos = seed(3, 1_800_000_000_000);
        todos.reverse();
        let s = Snapshot::render(7, &todos);
        let parts =
            |ends: Vec<u32>| Snapshot::from_parts(7, s.body().to_vec(), ends, s.ids().to_vec());
        assert_eq!(parts(s.row_ends().to_vec()), Some(s.clone()));
        // A first row ending at 0 once reached `body[1..0]`.
        assert_eq!(parts(vec![0, s.row_ends()[1], s.row_ends()[2]]), None);
        assert_eq!(
            parts(vec![s.row_ends()[1], s.row_ends()[0], s.row_ends()[2]]),
            None
        );
        assert_eq!(
            parts(vec![
                s.row_ends()[0],
                s.row_ends()[1],
                s.body().len() as u32
            ]),
            None
        );
        assert_eq!(
            parts(s.row_ends()[..2].to_vec()),
            None,
            "ids and ends differ in count"
        );
        assert_eq!(
            Snapshot::from_parts(1, b"[]".to_vec(), vec![], vec![]),
            Some(Snapshot::render(1, &[]))
        );
        assert_eq!(
            Snapshot::from_parts(1, b"[x]".to_vec(), vec![], vec![]),
            None
        );
    }

    #[test]
    fn empty_snapshot_serves_an_empty_array() {
        let s = Snapshot::render(0, &[]);
        assert_eq!(body_for(&s, 1), b"[]");
        assert!(s.row_by_id(1).is_none());
    }

    #[test]
    fn text_is_escaped() {
        let mut t = seed(1, 1_800_000_000_000);
        t[0].title = "quote \" backslash \\ newline \n".into();
        let s = Snapshot::render(1, &t);
        let v: Vec<sonic_rs::Value> = sonic_rs::from_slice(s.body()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v[0]["title"].as_str(), Some(t[0].title.as_str()));
    }
}
