//! A client connection as the proxy loop sees it, plain or TLS: read what the
//! client sent next onto the input, write a batch of answers in one go,
//! close. [`TcpStream`] is one; [`crate::tls::TlsStream`] the other.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use todo_runtime::lifecycle;

/// The client side of a proxied connection.
#[allow(async_fn_in_trait)] // used by this crate's own tasks only (`!Send` by design)
pub trait ClientIo {
    /// Append what the client sent next to `input` (within its spare
    /// capacity for plain; TLS may grow it by a record); `Ok(0)` at its end.
    /// Cancelled (a time-out), the connection is to be closed.
    async fn read_to(&mut self, input: &mut Vec<u8>) -> io::Result<usize>;
    /// Write all of `out` (one write of the batch), then clear it.
    async fn write_from(&mut self, out: &mut Vec<u8>) -> io::Result<()>;
    /// Wait until the client's socket has something to read: bytes, its
    /// end, or a reset. Nothing is consumed, so it may be cancelled. A
    /// relayed event stream (`proxy/stream.rs`) waits on it beside the
    /// upstream, to notice a client that left before its next write.
    async fn wait_readable(&self) -> io::Result<()>;
    /// End the connection: say so (TLS: close_notify), then drain what the
    /// client still sends for a moment ([`lifecycle::linger`]).
    async fn close(&mut self);
}

impl ClientIo for TcpStream {
    async fn read_to(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
        let len = input.len();
        let (res, slice) = self.read(std::mem::take(input).slice_mut(len..)).await;
        *input = slice.into_inner();
        res
    }

    async fn write_from(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        lifecycle::flush(self, out).await
    }

    async fn wait_readable(&self) -> io::Result<()> {
        // Not relaxed: the epoll driver asks the socket, so a readiness left
        // over from an earlier read does not wake it.
        self.readable(false).await
    }

    async fn close(&mut self) {
        lifecycle::linger(self).await;
    }
}
