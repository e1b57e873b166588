//! Publishing the snapshot: `todos:snapshot` holds the encoded snapshot,
//! replaced only by a newer version (checked inside Redis, so several workers
//! can publish concurrently), and `todos:changed` announces the version.

use std::time::Duration;

use todo_model::{Snapshot, CHANGED_CHANNEL, SNAPSHOT_KEY};
use tokio::sync::Mutex;

use crate::resp::Connection;
use crate::WorkerError;

/// Versions are big-endian in the first 8 bytes, so comparing those bytes as
/// strings compares versions.
const SET_IF_NEWER: &str = "
local cur = redis.call('GET', KEYS[1])
if (not cur) or string.sub(cur, 1, 8) < string.sub(ARGV[1], 1, 8) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  return 1
end
return 0";

pub struct Cache {
    url: String,
    conn: Mutex<Option<Connection>>,
}

impl Cache {
    pub fn new(url: &str) -> Result<Cache, WorkerError> {
        crate::resp::parse_url(url).map_err(|e| WorkerError::Config(e.to_string()))?;
        Ok(Cache {
            url: url.to_string(),
            conn: Mutex::new(None),
        })
    }

    /// Store and announce `snapshot` unless Redis holds a newer one. Returns
    /// whether it was stored.
    pub async fn publish(&self, snapshot: &Snapshot) -> Result<bool, WorkerError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(Connection::connect(&self.url).await?);
        }
        let conn = guard.as_mut().expect("connected above");
        let version = snapshot.version().to_string();
        let result = conn
            .call(&[
                b"EVAL",
                SET_IF_NEWER.as_bytes(),
                b"2",
                SNAPSHOT_KEY.as_bytes(),
                CHANGED_CHANNEL.as_bytes(),
                &snapshot.encode(),
                version.as_bytes(),
            ])
            .await;
        match result {
            Ok(todo_model::resp::Frame::Integer(n)) => Ok(n == 1),
            Ok(other) => Err(WorkerError::Redis(format!("unexpected reply {other:?}"))),
            Err(e) => {
                // Drop the connection; the next call reconnects.
                *guard = None;
                Err(e)
            }
        }
    }

    /// Publish, retrying with backoff (50 ms doubling to 2 s) until Redis
    /// takes it. Data is already committed; this only delays readers.
    pub async fn publish_with_retry(&self, snapshot: &Snapshot) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.publish(snapshot).await {
                Ok(_) => return,
                Err(e) => {
                    eprintln!(
                        "todo-worker: publishing snapshot {}: {e}; retrying in {delay:?}",
                        snapshot.version()
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
