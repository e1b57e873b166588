//! The little HTTP/1.1 the feed client speaks besides the streams: an
//! `http://HOST:PORT/PATH` URL taken apart, and one whole response read off
//! a glommio stream (framed by todo-testkit's reader, apart from the
//! servers' parser).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;
use futures_lite::{AsyncRead, AsyncReadExt};
use glommio::net::TcpStream;
use todo_testkit::http::Response;

/// Where a URL points.
#[derive(Debug, Clone)]
pub struct Url {
    pub addr: SocketAddr,
    /// `HOST:PORT` as written, for the Host header.
    pub host: String,
    /// The path and query, `/` when none.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: not http://HOST:PORT/PATH"))?;
        let (host, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("{url}: no address"))?
            .next()
            .with_context(|| format!("{url}: no address"))?;
        Ok(Url {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }
}

/// Connect to `addr` with Nagle off (glommio's error is not `Sync`, so it
/// becomes an `io::Error` for `anyhow`).
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The next response on `stream`; `buf` carries bytes read past it to the
/// next call. An end of stream before a whole response is an error.
pub async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> anyhow::Result<Response> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match Response::parse(buf, false) {
            Ok(Some((r, used))) => {
                buf.drain(..used);
                return Ok(r);
            }
            Ok(None) => {}
            Err(e) => anyhow::bail!("not an HTTP/1.1 response: {e:?}"),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("the connection closed before a whole response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
