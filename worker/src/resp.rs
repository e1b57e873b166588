//! A small Redis client: one connection, one command at a time, RESP2 frames
//! encoded and decoded by redis-protocol.

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WorkerError;

/// `redis://host:port[/db]` -> ("host:port", db).
pub fn parse_url(url: &str) -> Result<(String, u32), WorkerError> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| WorkerError::Config(format!("REDIS_URL must start with redis://, got {url}")))?;
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(WorkerError::Config("REDIS_URL credentials are not supported yet".into()));
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    let db = if db.is_empty() {
        0
    } else {
        db.parse()
            .map_err(|_| WorkerError::Config(format!("REDIS_URL database must be a number: {db}")))?
    };
    Ok((authority, db))
}

/// Encode a command as a RESP2 array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let frame = OwnedFrame::Array(args.iter().map(|a| OwnedFrame::BulkString(a.to_vec())).collect());
    let mut buf = vec![0u8; frame.encode_len(false)];
    let n = encode(&mut buf, &frame, false).expect("buffer sized by encode_len");
    buf.truncate(n);
    buf
}

pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn connect(url: &str) -> Result<Connection, WorkerError> {
        let (addr, db) = parse_url(url)?;
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|e| WorkerError::Redis(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(4096),
        };
        if db != 0 {
            conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        }
        Ok(conn)
    }

    /// Send one command and read its reply; a Redis error reply is an `Err`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<OwnedFrame, WorkerError> {
        let io = |e: std::io::Error| WorkerError::Redis(e.to_string());
        self.stream.write_all(&command(args)).await.map_err(io)?;
        loop {
            match decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return match frame {
                        OwnedFrame::Error(e) => Err(WorkerError::Redis(e)),
                        other => Ok(other),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(WorkerError::Redis(format!("protocol: {e:?}"))),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(WorkerError::Redis("connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("redis://127.0.0.1:7000/").unwrap(), ("127.0.0.1:7000".into(), 0));
        assert_eq!(parse_url("redis://h/3").unwrap(), ("h:6379".into(), 3));
        assert!(parse_url("http://h").is_err());
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
