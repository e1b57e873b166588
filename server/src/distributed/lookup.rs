//! The lookup thread: a tokio runtime with a PostgreSQL pool, for the reads
//! that are not in the snapshot and for filling an empty Redis. Cores send
//! requests over a bounded channel and await the reply; nothing here is on
//! the read hot path. The read model's follower ([`super::follow`]) runs on
//! the same runtime.

use std::sync::Arc;
use std::thread;

use todo_model::{Category, Outcome, User};
use todo_store::{pg, Publisher};

use super::{DistributedError, Settings};
use crate::backend::Unavailable;
use crate::read_model::Shared;

/// Connections in the lookup pool.
const POOL_SIZE: usize = 4;
const QUEUE_DEPTH: usize = 4096;

pub enum Request {
    Get(u64, flume::Sender<Result<Option<Vec<u8>>, Unavailable>>),
    Outcome(u64, flume::Sender<Result<Option<Outcome>, Unavailable>>),
    User(String, flume::Sender<Result<Option<User>, Unavailable>>),
    Category(u64, flume::Sender<Result<Option<Category>, Unavailable>>),
    /// Render the committed state and store it in Redis if Redis has nothing
    /// newer. Concurrent fills from all cores collapse into one.
    Fill(flume::Sender<bool>),
}

#[derive(Clone)]
pub struct Lookups {
    tx: flume::Sender<Request>,
    /// Wakes the follower: a newer snapshot version was seen.
    changed: Arc<tokio::sync::Notify>,
}

impl Lookups {
    /// Start the thread; the follower keeps `model` current from PostgreSQL.
    pub fn start(settings: &Settings, model: Shared) -> Result<Lookups, DistributedError> {
        let pool = pg::pool(&settings.database_url, POOL_SIZE)?;
        let cache = Publisher::new(&settings.redis_url)?;
        let (tx, rx) = flume::bounded::<Request>(QUEUE_DEPTH);
        let changed = Arc::new(tokio::sync::Notify::new());
        let wake = changed.clone();
        thread::Builder::new()
            .name("todo-db".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for lookups");
                rt.spawn(super::follow::run(pool.clone(), model, wake));
                rt.block_on(serve(rx, pool, cache));
            })
            .map_err(DistributedError::Thread)?;
        Ok(Lookups { tx, changed })
    }

    /// A core installed a newer snapshot: the read model has changes to
    /// fetch. Cheap and callable from any thread.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    pub async fn user(&self, username: String) -> Result<Option<User>, Unavailable> {
        self.ask(|tx| Request::User(username, tx)).await
    }

    pub async fn category(&self, id: u64) -> Result<Option<Category>, Unavailable> {
        self.ask(|tx| Request::Category(id, tx)).await
    }

    pub async fn get(&self, id: u64) -> Result<Option<Vec<u8>>, Unavailable> {
        self.ask(|tx| Request::Get(id, tx)).await
    }

    pub async fn outcome(&self, id: u64) -> Result<Option<Outcome>, Unavailable> {
        self.ask(|tx| Request::Outcome(id, tx)).await
    }

    /// Send the request `make` builds and await its answer: 503 material
    /// when the thread is gone or the store could not be read.
    async fn ask<T>(
        &self,
        make: impl FnOnce(flume::Sender<Result<T, Unavailable>>) -> Request,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = flume::bounded(1);
        let asked = self.tx.send_async(make(tx)).await;
        asked.map_err(|_| Unavailable)?;
        rx.recv_async().await.map_err(|_| Unavailable)?
    }

    /// Ask for a fill; true once Redis holds a snapshot at least as new as
    /// PostgreSQL's.
    pub async fn fill(&self) -> bool {
        let (tx, rx) = flume::bounded(1);
        if self.tx.send_async(Request::Fill(tx)).await.is_err() {
            return false;
        }
        rx.recv_async().await.unwrap_or(false)
    }
}

async fn serve(rx: flume::Receiver<Request>, pool: deadpool_postgres::Pool, cache: Publisher) {
    while let Ok(first) = rx.recv_async().await {
        // Single flight: every Fill waiting now is answered by one render.
        let mut fills = Vec::new();
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Fill(reply) => fills.push(reply),
                Request::Get(id, reply) => {
                    let row = get(&pool, id).await;
                    let _ = reply.send(row);
                }
                Request::Outcome(id, reply) => {
                    let _ = reply.send(outcome(&pool, id).await);
                }
                Request::User(name, reply) => {
                    let user = async {
                        let client = pool.get().await.map_err(unavailable)?;
                        pg::user_by_name(&client, &name).await.map_err(unavailable)
                    };
                    let _ = reply.send(user.await);
                }
                Request::Category(id, reply) => {
                    let category = async {
                        let client = pool.get().await.map_err(unavailable)?;
                        pg::category(&client, id).await.map_err(unavailable)
                    };
                    let _ = reply.send(category.await);
                }
            }
            next = rx.try_recv().ok();
        }
        if !fills.is_empty() {
            let ok = fill(&pool, &cache).await;
            for reply in fills {
                let _ = reply.send(ok);
            }
        }
    }
}

/// PostgreSQL away or failing: the caller answers 503.
fn unavailable(e: impl std::fmt::Display) -> Unavailable {
    eprintln!("todo-server: PostgreSQL lookup: {e}");
    Unavailable
}

async fn get(pool: &deadpool_postgres::Pool, id: u64) -> Result<Option<Vec<u8>>, Unavailable> {
    let client = pool.get().await.map_err(unavailable)?;
    let Some(todo) = pg::todo(&client, id).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(256);
    todo_model::snapshot::render_todo(&todo, &mut out);
    Ok(Some(out))
}

async fn outcome(pool: &deadpool_postgres::Pool, id: u64) -> Result<Option<Outcome>, Unavailable> {
    let client = pool.get().await.map_err(unavailable)?;
    pg::command_outcome(&client, id).await.map_err(unavailable)
}

async fn fill(pool: &deadpool_postgres::Pool, cache: &Publisher) -> bool {
    let Ok(client) = pool.get().await else {
        return false;
    };
    let Ok(snapshot) = pg::current_snapshot(&client).await else {
        return false;
    };
    cache.publish(&snapshot).await.is_ok()
}
