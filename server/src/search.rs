//! Pages of the read model, rendered; and the search thread.
//!
//! [`render_page`] is how every `GET /todos?...` page is made, on a core
//! (filters, sorts, cursors: an index walk of about `limit` rows) or on the
//! `todo-search` thread. A `q=` search may read every todo (every word must
//! be found in the text), tens of milliseconds over a million todos, which
//! must not hold up the other connections of a core: cores hand searches
//! to these threads (`todo-search-N`, one per core) and await the page.

use std::thread;

use crate::query::ListQuery;
use crate::read_model::{ReadModel, Shared};

/// A rendered page: the JSON array, the `Link` value when more rows match,
/// and the model version it was read at.
pub struct Rendered {
    pub version: u64,
    pub body: Vec<u8>,
    pub link: Option<String>,
}

/// Render one page of `query`.
pub fn render_page(model: &ReadModel, query: &ListQuery) -> Rendered {
    let page = model.page(query);
    let mut body = Vec::with_capacity(64 + page.rows.len() * 256);
    body.push(b'[');
    for (i, todo) in page.rows.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        todo_model::snapshot::render_todo(todo, &mut body);
    }
    body.push(b']');
    Rendered {
        version: model.version(),
        body,
        link: page.next.as_ref().map(|c| query.next_link(c)),
    }
}

/// Most searches waiting for the thread; more wait in their cores.
const QUEUE_DEPTH: usize = 1024;

type Job = (ListQuery, flume::Sender<Rendered>);

/// The cores' handle on the search thread.
#[derive(Clone)]
pub struct Search {
    tx: flume::Sender<Job>,
}

impl Search {
    /// Start `threads` search threads reading one queue.
    pub fn start(model: Shared, threads: usize) -> std::io::Result<Search> {
        let (tx, rx) = flume::bounded::<Job>(QUEUE_DEPTH);
        for i in 0..threads.max(1) {
            let (rx, model) = (rx.clone(), model.clone());
            thread::Builder::new()
                .name(format!("todo-search-{i}"))
                .spawn(move || {
                    while let Ok((query, reply)) = rx.recv() {
                        let page = render_page(&model.read(), &query);
                        let _ = reply.send(page);
                    }
                })?;
        }
        Ok(Search { tx })
    }

    /// The page of a search; `None` if the thread is gone.
    pub async fn page(&self, query: ListQuery) -> Option<Rendered> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send_async((query, tx)).await.ok()?;
        rx.recv_async().await.ok()
    }
}
