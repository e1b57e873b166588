//! `GET /todos` query strings (filters, sort, limit, cursor): parsed, run
//! against a small read model, and the next page's link parsed again; every
//! answer is a value or a 400, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use todo_model::{Category, Change, Todo};
use todo_server::query::ListQuery;
use todo_server::read_model::ReadModel;

fn model() -> &'static ReadModel {
    static MODEL: OnceLock<ReadModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut m = ReadModel::new(1);
        m.apply(Change::PutCategory(Category {
            id: 7,
            owner: "alice".into(),
            name: "work".into(),
            created_at: 1,
            updated_at: 1,
        }));
        for id in 1..=300u64 {
            m.apply(Change::Insert(Todo {
                id,
                owner: ["alice", "bob", "seed"][(id % 3) as usize].into(),
                title: format!("Todo {} milk {}", id % 17, id),
                description: "ünïcode words".into(),
                completed: id % 2 == 0,
                created_at: 1_800_000_000_000 + id,
                updated_at: 1_800_000_000_000 + id % 40,
                category_id: (id % 5 == 0).then_some(7),
                public: id % 4 != 0,
            }));
        }
        m
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = ListQuery::parse(query, Some("alice"), 20) else {
        return;
    };
    let page = model().page(&q);
    assert!(page.rows.len() <= q.limit);
    // Only alice's own list (mine=true) shows a private todo.
    assert!(page
        .rows
        .iter()
        .all(|t| t.public || (q.mine && t.owner == "alice")));
    if let Some(next) = &page.next {
        let link = q.next_link(next);
        let target = &link[link.find('?').unwrap() + 1..link.find('>').unwrap()];
        let again = ListQuery::parse(target, Some("alice"), 20).expect("a link parses");
        let _ = model().page(&again);
    }
});
