//! The `todo-db` thread: one tokio runtime, with a PostgreSQL pool, running
//! four tasks for the distributed path ([`DbThread::start`]):
//!
//! - lookups: the reads that are not in the snapshot (`GET /todos/{id}`,
//!   `GET /commands/{id}`, accounts and categories the read model has not
//!   seen yet), `Idempotency-Key` claims, and the single-flight fill of an
//!   empty Redis;
//! - the read model's follower ([`super::follow`]), which also feeds every
//!   core's change feed;
//! - the accepted-mark writer: marks in Redis that a command was accepted;
//! - the key pruner: deletes expired `Idempotency-Key` records.
//!
//! Cores send requests over bounded channels and await the reply; nothing
//! here is on the read hot path.

use std::sync::Arc;
use std::thread;

use crate::feed::Fanout;

use todo_model::{Category, Outcome, Todo, User};
use todo_store::{pg, Publisher};

use super::{DistributedError, Settings};
use crate::errors::Unavailable;
use crate::read_model::Shared;

/// Connections in the todo-db thread's PostgreSQL pool.
const POOL_SIZE: usize = 4;
const QUEUE_DEPTH: usize = 4096;

pub enum Request {
    Get(u64, flume::Sender<Result<Option<Todo>, Unavailable>>),
    Outcome(u64, flume::Sender<Result<Option<Outcome>, Unavailable>>),
    User(String, flume::Sender<Result<Option<User>, Unavailable>>),
    Category(u64, flume::Sender<Result<Option<Category>, Unavailable>>),
    /// Render the committed state and store it in Redis if Redis has nothing
    /// newer. Concurrent fills from all cores collapse into one.
    Fill(flume::Sender<bool>),
    /// Make an `Idempotency-Key` stand for a command, or find what it
    /// stands for.
    Claim(KeyArgs, flume::Sender<Result<pg::KeyClaim, Unavailable>>),
}

/// A keyed command's side of [`pg::claim_key`].
pub struct KeyArgs {
    pub user: String,
    pub key: String,
    pub fingerprint: String,
    pub command_id: u64,
    pub todo_id: u64,
}

/// Requests to the accepted-marks task (Redis).
enum Mark {
    /// Mark a command accepted; answers whether Redis has the mark.
    Set(u64, flume::Sender<bool>),
    /// Whether a command was marked accepted.
    Exists(u64, flume::Sender<Result<bool, Unavailable>>),
}

/// Most marks sent to Redis in one pipelined write.
const MARK_BATCH: usize = 1024;
/// Longest wait for Redis to take a batch of marks.
const MARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often expired Idempotency-Key records are deleted.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The cores' handle on the `todo-db` thread.
#[derive(Clone)]
pub struct DbThread {
    tx: flume::Sender<Request>,
    marks: flume::Sender<Mark>,
    /// Wakes the follower: a newer snapshot version was seen.
    changed: Arc<tokio::sync::Notify>,
}

impl DbThread {
    /// Start the `todo-db` thread and on it: the lookups (answering this
    /// handle's requests), the follower that keeps `model` current from
    /// PostgreSQL, the writer of accepted marks to Redis, and the pruner of
    /// expired `Idempotency-Key` records (every 10 minutes).
    pub fn start(
        settings: &Settings,
        model: Shared,
        feeds: Fanout,
    ) -> Result<DbThread, DistributedError> {
        let pool = pg::pool(&settings.database_url, POOL_SIZE)?;
        let cache = Publisher::new(&settings.redis_url)?;
        let (tx, rx) = flume::bounded::<Request>(QUEUE_DEPTH);
        let (marks, marks_rx) = flume::bounded::<Mark>(QUEUE_DEPTH);
        let redis_url = settings.redis_url.clone();
        let changed = Arc::new(tokio::sync::Notify::new());
        let wake = changed.clone();
        thread::Builder::new()
            .name("todo-db".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the todo-db thread");
                rt.spawn(super::follow::run(pool.clone(), model, wake, feeds));
                rt.spawn(run_marks(marks_rx, redis_url));
                rt.spawn(prune_keys(pool.clone()));
                rt.block_on(serve(rx, pool, cache));
            })
            .map_err(DistributedError::Thread)?;
        Ok(DbThread { tx, marks, changed })
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

    pub async fn get(&self, id: u64) -> Result<Option<Todo>, Unavailable> {
        self.ask(|tx| Request::Get(id, tx)).await
    }

    pub async fn outcome(&self, id: u64) -> Result<Option<Outcome>, Unavailable> {
        self.ask(|tx| Request::Outcome(id, tx)).await
    }

    /// What `Idempotency-Key` (`args.user`, `args.key`) stands for, making
    /// it stand for `args`' command when nothing live does.
    pub async fn claim(&self, args: KeyArgs) -> Result<pg::KeyClaim, Unavailable> {
        self.ask(|tx| Request::Claim(args, tx)).await
    }

    /// Mark `command_id` accepted in Redis, so every server answers
    /// `pending` for it; the receiver says whether Redis took it (false at
    /// once when the queue is full or Redis is away).
    pub fn mark(&self, command_id: u64) -> flume::Receiver<bool> {
        let (tx, rx) = flume::bounded(1);
        let _ = self.marks.try_send(Mark::Set(command_id, tx));
        rx
    }

    /// Whether `command_id` was marked accepted (503 when Redis is away).
    pub async fn accepted(&self, command_id: u64) -> Result<bool, Unavailable> {
        let (tx, rx) = flume::bounded(1);
        let asked = self.marks.send_async(Mark::Exists(command_id, tx)).await;
        asked.map_err(|_| Unavailable)?;
        rx.recv_async().await.map_err(|_| Unavailable)?
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
                Request::Claim(args, reply) => {
                    let claim = async {
                        let client = pool.get().await.map_err(unavailable)?;
                        pg::claim_key(
                            &client,
                            &args.user,
                            &args.key,
                            &args.fingerprint,
                            args.command_id,
                            args.todo_id,
                            todo_model::now_ms(),
                            todo_model::IDEMPOTENCY_WINDOW_MS,
                        )
                        .await
                        .map_err(unavailable)
                    };
                    let _ = reply.send(claim.await);
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

async fn get(pool: &deadpool_postgres::Pool, id: u64) -> Result<Option<Todo>, Unavailable> {
    let client = pool.get().await.map_err(unavailable)?;
    pg::todo(&client, id).await.map_err(unavailable)
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

/// The accepted-marks task: takes every mark queued and sends them to
/// Redis in one pipelined write: per hour of the ids marked, one
/// `HSET todos:accepted:hour:<h> <id> 1 <id> 1 ...` and its `EXPIRE`; per
/// lookup, `HEXISTS` and (marks from servers before the hourly hashes)
/// `EXISTS todos:accepted:<id>`. Answers each. Redis away: marks answer
/// false and lookups 503 until it is back; the connection is made again
/// per batch.
async fn run_marks(rx: flume::Receiver<Mark>, url: String) {
    use todo_store::redis::Connection;
    use todo_store::resp::Frame;
    let mut conn: Option<Connection> = None;
    let mut away = false;
    let ttl = todo_store::ACCEPTED_TTL_SECS.to_string();
    while let Ok(first) = rx.recv_async().await {
        let mut batch = vec![first];
        while batch.len() < MARK_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // The hours marked (almost always one), each with its ids; the
        // lookups; and per mark, its hour's or its lookup's index.
        let mut hours: Vec<(u64, Vec<String>)> = Vec::new();
        let mut lookups: Vec<(String, String, String)> = Vec::new();
        let mut places = Vec::with_capacity(batch.len());
        for mark in &batch {
            match mark {
                Mark::Set(id, _) => {
                    let hour = todo_store::accepted_hour(*id);
                    let at = match hours.iter().position(|(h, _)| *h == hour) {
                        Some(at) => at,
                        None => {
                            hours.push((hour, Vec::new()));
                            hours.len() - 1
                        }
                    };
                    hours[at].1.push(id.to_string());
                    places.push(at);
                }
                Mark::Exists(id, _) => {
                    places.push(lookups.len());
                    lookups.push((
                        todo_store::accepted_key(todo_store::accepted_hour(*id)),
                        id.to_string(),
                        format!("{}{id}", todo_store::ACCEPTED_PREFIX),
                    ));
                }
            }
        }
        let hour_keys: Vec<String> = hours
            .iter()
            .map(|(hour, _)| todo_store::accepted_key(*hour))
            .collect();
        let mut commands: Vec<Vec<&[u8]>> = Vec::with_capacity(hours.len() * 2 + lookups.len() * 2);
        for (key, (_, ids)) in hour_keys.iter().zip(&hours) {
            let mut hset = Vec::with_capacity(2 + ids.len() * 2);
            hset.extend([b"HSET".as_slice(), key.as_bytes()]);
            for id in ids {
                hset.extend([id.as_bytes(), b"1"]);
            }
            commands.push(hset);
            commands.push(vec![b"EXPIRE", key.as_bytes(), ttl.as_bytes()]);
        }
        for (key, id, old) in &lookups {
            commands.push(vec![b"HEXISTS", key.as_bytes(), id.as_bytes()]);
            commands.push(vec![b"EXISTS", old.as_bytes()]);
        }
        let replies = async {
            if conn.is_none() {
                conn = Some(Connection::connect(&url).await?);
            }
            conn.as_mut()
                .expect("connected above")
                .pipeline(&commands)
                .await
        };
        let replies = match tokio::time::timeout(MARK_TIMEOUT, replies).await {
            Ok(Ok(replies)) => {
                if away {
                    eprintln!("todo-server: Redis takes accepted marks again");
                    away = false;
                }
                Some(replies)
            }
            Ok(Err(e)) => {
                if !away {
                    eprintln!("todo-server: accepted marks: Redis: {e}; GET /commands answers 503 for unknown ids meanwhile");
                }
                away = true;
                conn = None;
                None
            }
            Err(_) => {
                away = true;
                conn = None;
                None
            }
        };
        // Replies: each hour's HSET and EXPIRE, then each lookup's HEXISTS
        // and EXISTS.
        for (mark, place) in batch.into_iter().zip(places) {
            match mark {
                Mark::Set(_, tx) => {
                    let reply = replies.as_ref().map(|r| &r[place * 2]);
                    let _ = tx.send(matches!(reply, Some(Frame::Integer(_))));
                }
                Mark::Exists(_, tx) => {
                    let at = hours.len() * 2 + place * 2;
                    let _ = tx.send(match replies.as_ref().map(|r| (&r[at], &r[at + 1])) {
                        Some((Frame::Integer(new), Frame::Integer(old))) => {
                            Ok(*new > 0 || *old > 0)
                        }
                        _ => Err(Unavailable),
                    });
                }
            }
        }
    }
}

/// Delete expired Idempotency-Key records now and then (every server
/// does; the delete is idempotent and served by an index).
async fn prune_keys(pool: deadpool_postgres::Pool) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        if let Ok(client) = pool.get().await {
            let now = todo_model::now_ms();
            if let Err(e) = pg::prune_keys(&client, now, todo_model::IDEMPOTENCY_WINDOW_MS).await {
                eprintln!("todo-server: pruning idempotency keys: {e}");
            }
        }
    }
}
