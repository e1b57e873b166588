//! The worker's Redis connection (tokio): one command at a time, encoded and
//! decoded by `todo_model::resp`.

use todo_model::resp::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WorkerError;

pub use todo_model::resp::parse_url;

pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn connect(url: &str) -> Result<Connection, WorkerError> {
        let (addr, db) = parse_url(url).map_err(|e| WorkerError::Config(e.to_string()))?;
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
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Frame, WorkerError> {
        let io = |e: std::io::Error| WorkerError::Redis(e.to_string());
        self.stream
            .write_all(&resp::command(args))
            .await
            .map_err(io)?;
        loop {
            match resp::take_frame(&mut self.buf).map_err(|e| WorkerError::Redis(e.to_string()))? {
                Some(Frame::Error(e)) => return Err(WorkerError::Redis(e)),
                Some(frame) => return Ok(frame),
                None => {}
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
