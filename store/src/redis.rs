//! A Redis connection on tokio (the worker, the server's todo-db thread): one
//! command at a time, encoded and decoded by [`crate::resp`].

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resp::{self, parse_url, Frame, RespError};

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(transparent)]
    Url(RespError),
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(RespError),
    #[error("connection closed")]
    Closed,
    #[error("error reply: {0}")]
    Reply(String),
    #[error("unexpected reply {0:?}")]
    Unexpected(Frame),
}

pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn connect(url: &str) -> Result<Connection, RedisError> {
        let (addr, db) = parse_url(url).map_err(RedisError::Url)?;
        let stream = match TcpStream::connect(&addr).await {
            Ok(s) => s,
            Err(source) => return Err(RedisError::Connect { addr, source }),
        };
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
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Frame, RedisError> {
        self.stream.write_all(&resp::command(args)).await?;
        match self.reply().await? {
            Frame::Error(e) => Err(RedisError::Reply(e)),
            frame => Ok(frame),
        }
    }

    /// Send several commands in one write and read their replies, in
    /// order (a Redis error reply is returned as its frame).
    pub async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Frame>, RedisError> {
        let mut bytes = Vec::new();
        for args in commands {
            bytes.extend_from_slice(&resp::command(args));
        }
        self.stream.write_all(&bytes).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.reply().await?);
        }
        Ok(replies)
    }

    async fn reply(&mut self) -> Result<Frame, RedisError> {
        loop {
            if let Some(frame) = resp::take_frame(&mut self.buf).map_err(RedisError::Protocol)? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(RedisError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
