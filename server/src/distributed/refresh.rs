//! Keeping one core's snapshot current from Redis (docs/architecture.md §5).
//!
//! Each core holds its own two connections: a subscriber on `todos:changed`
//! and a command connection for `GET todos:snapshot`. Pub/sub is
//! at-most-once, so every (re)subscribe is followed by a GET before the core
//! trusts its snapshot again; an empty Redis is filled from PostgreSQL through
//! the `todo-db` thread (one fill per process however many cores ask). While
//! Redis is away the core keeps serving what it has, marked stale in
//! `/metrics` and `/readyz`, and reconnects with backoff.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use todo_store::resp::{self, Frame};
use todo_store::{codec, CHANGED_CHANNEL, SNAPSHOT_KEY};

use super::db_thread::DbThread;
use crate::per_core::Core;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Run forever: subscribe, resync, follow; on any failure mark stale, back
/// off, start again.
pub async fn run(core: Rc<Core>, redis_url: String, db_thread: DbThread) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let (synced, err) = session(&core, &redis_url, &db_thread).await;
        core.set_stale(true);
        if synced {
            backoff = BACKOFF_MIN;
        }
        if core.index == 0 {
            eprintln!("todo-server: Redis: {err}; serving the last snapshot (stale), retrying in {backoff:?}");
        }
        monoio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connected stretch. Returns whether it got in sync, and why it ended.
async fn session(core: &Core, url: &str, db_thread: &DbThread) -> (bool, String) {
    let (addr, db) = match resp::parse_url(url) {
        Ok(a) => a,
        Err(e) => return (false, e.to_string()),
    };
    let mut synced = false;
    let result: io::Result<()> = async {
        let mut cmd = Conn::connect(&addr, db).await?;
        let mut sub = Conn::connect(&addr, 0).await?;
        sub.call(&[b"SUBSCRIBE", CHANGED_CHANNEL.as_bytes()])
            .await?;
        resync(core, &mut cmd, db_thread).await?;
        synced = true;
        core.set_stale(false);
        loop {
            // Any message means "a newer snapshot may exist": read it.
            let _announcement = sub.frame().await?;
            resync(core, &mut cmd, db_thread).await?;
        }
    }
    .await;
    (
        synced,
        result.err().map_or_else(String::new, |e| e.to_string()),
    )
}

/// GET the stored snapshot and install it if newer; fill an empty Redis.
async fn resync(core: &Core, cmd: &mut Conn, db_thread: &DbThread) -> io::Result<()> {
    for attempt in 0..2 {
        match cmd.call(&[b"GET", SNAPSHOT_KEY.as_bytes()]).await? {
            Frame::BulkString(bytes) => {
                let snapshot = codec::decode(&bytes).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "todos:snapshot is not a snapshot",
                    )
                })?;
                if core.install_owned(snapshot) {
                    // The read model follows the same versions.
                    db_thread.changed();
                }
                return Ok(());
            }
            Frame::Null if attempt == 0 => {
                if !db_thread.fill().await {
                    return Err(io::Error::other(
                        "Redis is empty and the fill from PostgreSQL failed",
                    ));
                }
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected reply to GET: {other:?}"
                )))
            }
        }
    }
    Err(io::Error::other("Redis still empty after a fill"))
}

/// A RESP connection on the core's runtime.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str, db: u32) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        };
        if db != 0 {
            conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        }
        Ok(conn)
    }

    async fn call(&mut self, args: &[&[u8]]) -> io::Result<Frame> {
        let (res, _) = self.stream.write_all(resp::command(args)).await;
        res?;
        self.frame().await
    }

    async fn frame(&mut self) -> io::Result<Frame> {
        loop {
            match resp::take_frame(&mut self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                Some(Frame::Error(e)) => return Err(io::Error::other(e)),
                Some(frame) => return Ok(frame),
                None => {}
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(self.buf.capacity().max(64 * 1024));
            }
            let len = self.buf.len();
            let buf = std::mem::take(&mut self.buf);
            let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
            self.buf = slice.into_inner();
            if res? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                ));
            }
        }
    }
}
