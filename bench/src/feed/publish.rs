//! The publisher: one keep-alive connection, one write per call, answers
//! read in order by a task of their own (so an open-loop schedule is never
//! held up by a slow answer: requests pipeline on the connection).
//!
//! - todo-server: `POST /todos` `{"title":MARKER,"public":true}` with the
//!   bearer token; the server answers 202 once the write is durable, and
//!   anonymous subscribers get the public todo's `created` event.
//! - nchan: `POST` to the publisher location of a body that is the event
//!   todo-server would send for that write (`{"op":"created","todo":{...}}`,
//!   the same fields, the marker as the title), padded in its description
//!   to `--body-bytes` so both peers carry the same `data:` size; nchan
//!   answers 201 (202 with no subscriber).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_lite::io::{split, WriteHalf};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::http::{connect, read_response};
use crate::ledger::{lock, Ledger, Phase};
use crate::marker::Marker;
use crate::target::Target;

/// What the writes go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// todo-server: `POST /todos` of a public todo.
    Todo,
    /// nginx + nchan: a POST to its publisher location.
    Nchan,
}

/// The body nchan publishes for write `marker`: todo-server's event for a
/// created todo, its description `pad` bytes of `x`.
pub fn nchan_event(marker: &str, pad: usize) -> String {
    format!(
        r#"{{"op":"created","todo":{{"id":255567674271072256,"title":"{marker}","description":"{}","completed":false,"owner":"feed","created_at":"2026-12-07T05:34:41.764Z","updated_at":"2026-12-07T05:34:41.764Z","category_id":null,"public":true}}}}"#,
        "x".repeat(pad)
    )
}

pub struct Publisher {
    out: WriteHalf<TcpStream>,
    peer: Peer,
    url: Target,
    token: String,
    marker: Marker,
    /// nchan: bytes of description padding.
    pad: usize,
    ledger: Arc<Mutex<Ledger>>,
    /// Writes sent and not answered yet, oldest first.
    pending: Rc<RefCell<VecDeque<usize>>>,
    /// Why the answers stopped, when they did.
    pub broken: Rc<RefCell<Option<String>>>,
}

impl Publisher {
    /// Connect to `url` and start reading answers. `body_bytes`: nchan's
    /// body size (default: the event with an empty description).
    pub async fn connect(
        peer: Peer,
        url: Target,
        token: Option<String>,
        body_bytes: Option<usize>,
        marker: Marker,
        ledger: Arc<Mutex<Ledger>>,
    ) -> anyhow::Result<Publisher> {
        let token = match (peer, token) {
            (Peer::Todo, None) => anyhow::bail!("writes to todo-server need --token"),
            (_, token) => token.unwrap_or_default(),
        };
        let bare = nchan_event(&marker.text(0), 0).len();
        let pad = match body_bytes {
            Some(n) if n < bare => anyhow::bail!("--body-bytes {n}: the event alone is {bare}"),
            Some(n) => n - bare,
            None => 0,
        };
        let stream = connect(url.addr).await?;
        let (mut input, out) = split(stream);
        let pending: Rc<RefCell<VecDeque<usize>>> = Rc::default();
        let broken: Rc<RefCell<Option<String>>> = Rc::default();
        let (queue, why, book) = (pending.clone(), broken.clone(), ledger.clone());
        glommio::spawn_local(async move {
            let mut buf = Vec::new();
            let error = loop {
                match read_response(&mut input, &mut buf).await {
                    Ok(r) => match queue.borrow_mut().pop_front() {
                        Some(index) => lock(&book).answered(index, Instant::now(), r.status),
                        None => break "an answer to no write".to_string(),
                    },
                    Err(e) => break e.to_string(),
                }
            };
            *why.borrow_mut() = Some(error);
        })
        .detach();
        Ok(Publisher {
            out,
            peer,
            url,
            token,
            marker,
            pad,
            ledger,
            pending,
            broken,
        })
    }

    /// The `data:` bytes nchan's events carry.
    pub fn nchan_body_bytes(&self) -> usize {
        nchan_event(&self.marker.text(0), self.pad).len()
    }

    fn request(&self, index: usize) -> Vec<u8> {
        let marker = self.marker.text(index);
        let (body, auth) = match self.peer {
            Peer::Todo => (
                format!(r#"{{"title":"{marker}","public":true}}"#),
                format!("Authorization: Bearer {}\r\n", self.token),
            ),
            Peer::Nchan => (nchan_event(&marker, self.pad), String::new()),
        };
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.url.path,
            self.url.host,
            body.len()
        )
        .into_bytes()
    }

    /// Send the next write, booked as sent at `sent` (open loop: when it was
    /// due) and owed to every subscriber by `deadline`; its index.
    pub async fn publish(
        &mut self,
        phase: Phase,
        sent: Instant,
        deadline: Instant,
    ) -> std::io::Result<usize> {
        let index = lock(&self.ledger).writes.len();
        let request = self.request(index);
        lock(&self.ledger).open(phase, sent, deadline);
        self.pending.borrow_mut().push_back(index);
        self.out.write_all(&request).await?;
        Ok(index)
    }
}
