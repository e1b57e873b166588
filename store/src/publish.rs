//! Publishing the snapshot: `todos:snapshot` holds the encoded snapshot,
//! replaced only by a newer version (checked inside Redis, so several workers
//! can publish concurrently), and `todos:changed` announces the version.

use todo_model::Snapshot;
use tokio::sync::Mutex;

use crate::codec;
use crate::redis::{Connection, RedisError};
use crate::resp::{Frame, RespError};
use crate::{CHANGED_CHANNEL, SNAPSHOT_KEY};

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

/// Stores and announces snapshots (the worker; the server's one fill when
/// Redis is empty).
pub struct Publisher {
    url: String,
    conn: Mutex<Option<Connection>>,
}

impl Publisher {
    pub fn new(url: &str) -> Result<Publisher, RespError> {
        crate::resp::parse_url(url)?;
        Ok(Publisher {
            url: url.to_string(),
            conn: Mutex::new(None),
        })
    }

    /// Store and announce `snapshot` unless Redis holds a newer one. Returns
    /// whether it was stored.
    pub async fn publish(&self, snapshot: &Snapshot) -> Result<bool, RedisError> {
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
                &codec::encode(snapshot),
                version.as_bytes(),
            ])
            .await;
        match result {
            Ok(Frame::Integer(n)) => Ok(n == 1),
            Ok(other) => Err(RedisError::Unexpected(other)),
            Err(e) => {
                // Drop the connection; the next call reconnects.
                *guard = None;
                Err(e)
            }
        }
    }
}
