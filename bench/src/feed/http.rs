//! The little HTTP/1.1 the feed client speaks besides the streams: a
//! connection, and one whole response read off a glommio stream (framed by
//! todo-testkit's reader, apart from the servers' parser).

use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncReadExt};
use glommio::net::TcpStream;
use todo_testkit::http::Response;

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
