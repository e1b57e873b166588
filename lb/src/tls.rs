//! TLS on `--listen-tls`: the certificate, its reload, the handshake.
//!
//! ```text
//! accept (tls listener) -> first byte: 0x16 (a TLS handshake record)?
//!                            no  -> 400 in plain text, close (a plain-HTTP
//!                                   client on the TLS port learns why)
//!                            yes -> rustls handshake (within --header-timeout)
//!                                   -> proxy/conn.rs, the same loop as plain
//! ```
//!
//! - rustls with the ring provider; TLS 1.3 and 1.2; ALPN `http/1.1` only
//!   (a client offering only `h2` is refused with the
//!   `no_application_protocol` alert, RFC 7301 §3.2).
//! - Session resumption: stateless tickets (one ticket key rotation kept
//!   across certificate reloads, so resumption survives a reload) and a
//!   session-id cache for TLS 1.2 clients without tickets.
//! - [`TlsCerts`] is the one value shared by the cores: the current
//!   configuration ([`Reloadable`]). A reloader thread looks at the
//!   files' modification time and size every second; a changed pair that
//!   loads replaces the configuration for NEW connections, while open ones
//!   keep the configuration they were made with. A pair that fails to load
//!   is reported and the old one stays.
//! - [`TlsStream`]: rustls's unbuffered API. A batch of answers is encrypted
//!   into a ciphertext buffer, as many records as it takes, and sent in ONE
//!   write, as on plain HTTP. That buffer is the core's, not the
//!   connection's ([`Spare`]), held only while it encrypts and sends.
//!   Requests are decrypted in place and copied once, onto the proxy's input.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use todo_runtime::lifecycle;

use crate::client_io::ClientIo;
use crate::reloadable::{stamp, CoreCopy, FileStamp, Reloadable};
use crate::spare::Spare;

/// Where the certificate chain and its key are (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("{0}: holds no certificate (expected PEM `CERTIFICATE` blocks)")]
    NoCertificate(PathBuf),
    #[error("certificate and key do not go together: {0}")]
    Config(rustls::Error),
    #[error("--listen-tls needs both --tls-cert and --tls-key")]
    Incomplete,
}

/// TLS 1.2 session ids remembered per process (tickets need no memory).
const SESSION_CACHE: usize = 64 * 1024;
/// How often the reloader looks at the files.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The configuration new connections get, shared by every core.
pub struct TlsCerts {
    files: TlsFiles,
    config: Arc<Reloadable<ServerConfig>>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<ServerSessionMemoryCache>,
}

impl TlsCerts {
    /// Load the files; an error here stops start-up.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
        let sessions = ServerSessionMemoryCache::new(SESSION_CACHE);
        let config = build(&files, &ticketer, &sessions)?;
        Ok(Arc::new(TlsCerts {
            files,
            config: Arc::new(Reloadable::new(config)),
            ticketer,
            sessions,
        }))
    }

    /// The files, for the start-up line.
    pub fn describe(&self) -> String {
        format!(
            "{} (key {})",
            self.files.cert.display(),
            self.files.key.display()
        )
    }

    /// Load the files again and, when they load, serve them to new
    /// connections.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config
            .replace(build(&self.files, &self.ticketer, &self.sessions)?);
        Ok(())
    }

    /// A thread that reloads when either file's modification time or size
    /// changes (both are looked at, so a copy within one second is seen).
    pub fn spawn_reloader(self: &Arc<Self>) -> io::Result<()> {
        let certs = self.clone();
        std::thread::Builder::new()
            .name("todo-lb-tls".into())
            .spawn(move || {
                let mut seen = certs.stamp();
                loop {
                    std::thread::sleep(RELOAD_EVERY);
                    let now = certs.stamp();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match certs.reload() {
                        Ok(()) => eprintln!(
                            "todo-lb: tls: reloaded {} and {} for new connections",
                            certs.files.cert.display(),
                            certs.files.key.display()
                        ),
                        Err(e) => eprintln!(
                            "todo-lb: tls: reload failed, keeping the old certificate: {e}"
                        ),
                    }
                }
            })
            .map(|_| ())
    }

    fn stamp(&self) -> [Option<FileStamp>; 2] {
        [stamp(&self.files.cert), stamp(&self.files.key)]
    }
}

fn build(
    files: &TlsFiles,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<ServerSessionMemoryCache>,
) -> Result<ServerConfig, TlsError> {
    let file_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::File {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&files.cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(config)
}

/// A core's TLS state: its copy of the configuration ([`CoreCopy`]: one
/// atomic load per accepted connection, a new copy after a reload) and its
/// spare ciphertext buffers.
pub struct CoreTls {
    config: CoreCopy<ServerConfig>,
    spare: Rc<Spare>,
}

impl CoreTls {
    pub fn new(certs: &TlsCerts) -> Self {
        CoreTls {
            config: CoreCopy::new(certs.config.clone()),
            spare: Rc::default(),
        }
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.now())
    }

    pub fn spare(&self) -> Rc<Spare> {
        self.spare.clone()
    }
}

/// TLS bytes read from the socket at a time, at least (a full record is
/// 16 KiB of data plus its header and tag).
const READ_TLS: usize = 17 * 1024;

/// A TLS connection on rustls's unbuffered API: records are decrypted in
/// place in our input buffer and encrypted into a ciphertext buffer of the
/// core's, so one batch of answers is one socket write however many records
/// it takes.
pub struct TlsStream {
    sock: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed.
    incoming: Vec<u8>,
    /// TLS bytes to send: `outgoing[..pending]` (the rest is room). Taken
    /// from `spare` when there is something to send, given back once sent.
    outgoing: Vec<u8>,
    pending: usize,
    spare: Rc<Spare>,
    /// Plaintext decrypted while writing, not yet handed to the reader.
    plain: Vec<u8>,
    /// The client sent close_notify: what it sent before is read, then the end.
    peer_closed: bool,
}

/// What one turn of the TLS state machine left.
enum Turn {
    /// Plaintext was decrypted into `plain`.
    Plain,
    /// Records were encoded or sent; turn again.
    Again,
    /// More TLS bytes from the client are needed.
    NeedRead,
    /// Application data may be written now.
    Writable,
    /// The connection is over.
    Closed,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// The server side of a TLS handshake on `sock`.
    pub async fn accept(
        sock: TcpStream,
        config: Arc<ServerConfig>,
        spare: Rc<Spare>,
    ) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = TlsStream {
            sock,
            conn,
            incoming: Vec::with_capacity(READ_TLS),
            outgoing: Vec::new(),
            pending: 0,
            spare,
            plain: Vec::new(),
            peer_closed: false,
        };
        loop {
            match s.turn().await? {
                Turn::Plain | Turn::Writable => return Ok(s),
                Turn::Again => {}
                Turn::NeedRead => {
                    if s.recv().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Turn::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// Read more TLS bytes from the socket onto `incoming`.
    async fn recv(&mut self) -> io::Result<usize> {
        if self.incoming.capacity() - self.incoming.len() < READ_TLS {
            self.incoming.reserve(READ_TLS);
        }
        let len = self.incoming.len();
        let buf = std::mem::take(&mut self.incoming);
        let (res, slice) = self.sock.read(buf.slice_mut(len..)).await;
        self.incoming = slice.into_inner();
        res
    }

    /// Send `outgoing[..pending]` in one write, then give the buffer back to
    /// the core.
    async fn send(
        sock: &mut TcpStream,
        outgoing: &mut Vec<u8>,
        pending: &mut usize,
        spare: &Spare,
    ) -> io::Result<()> {
        if *pending == 0 {
            return Ok(());
        }
        if *pending > outgoing.len() {
            // A cancelled send took the buffer: the connection is closing.
            *pending = 0;
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let buf = std::mem::take(outgoing);
        let (res, slice) = sock.write_all(buf.slice(0..*pending)).await;
        *pending = 0;
        spare.give(slice.into_inner());
        res.map(|_| ())
    }

    /// Make `outgoing` hold at least `room` bytes after what is pending,
    /// taking the core's spare buffer when it holds none.
    fn room(outgoing: &mut Vec<u8>, pending: usize, room: usize, spare: &Spare) {
        if outgoing.is_empty() {
            *outgoing = spare.take();
        }
        if outgoing.len() < pending + room {
            outgoing.resize(pending + room, 0);
        }
    }

    /// One turn of the state machine over what has been received: plaintext
    /// is appended to `read` (or kept in `plain`); with `write`, the
    /// plaintext to encrypt when the connection is writable.
    async fn turn_with(
        &mut self,
        read: Option<&mut Vec<u8>>,
        mut write: Option<&[u8]>,
    ) -> io::Result<Turn> {
        let TlsStream {
            sock,
            conn,
            incoming,
            outgoing,
            pending,
            spare,
            plain,
            peer_closed,
        } = self;
        let read = read.unwrap_or(plain);
        if *pending > outgoing.len() {
            // A cancelled send took the buffer with it.
            *pending = 0;
        }
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(incoming);
        let turn = match state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    read.extend_from_slice(record.payload);
                }
                Turn::Plain
            }
            ConnectionState::EncodeTlsData(mut data) => {
                loop {
                    match data.encode(outgoing.get_mut(*pending..).unwrap_or_default()) {
                        Ok(n) => {
                            *pending += n;
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Self::room(outgoing, *pending, required_size, spare),
                        Err(e) => return Err(tls_error(e)),
                    }
                }
                Turn::Again
            }
            ConnectionState::TransmitTlsData(data) => {
                Self::send(sock, outgoing, pending, spare).await?;
                data.done();
                Turn::Again
            }
            ConnectionState::BlockedHandshake => Turn::NeedRead,
            ConnectionState::WriteTraffic(mut traffic) => {
                if let Some(data) = write.take() {
                    loop {
                        match traffic
                            .encrypt(data, outgoing.get_mut(*pending..).unwrap_or_default())
                        {
                            Ok(n) => {
                                *pending += n;
                                break;
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) => Self::room(outgoing, *pending, required_size, spare),
                            Err(e) => return Err(tls_error(e)),
                        }
                    }
                    Self::send(sock, outgoing, pending, spare).await?;
                }
                Turn::Writable
            }
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                Turn::Again
            }
            // Closed, and states of features not enabled here (early data).
            _ => Turn::Closed,
        };
        if discard > 0 {
            incoming.drain(..discard);
        }
        Ok(turn)
    }

    async fn turn(&mut self) -> io::Result<Turn> {
        self.turn_with(None, None).await
    }
}

impl ClientIo for TlsStream {
    async fn read_to(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len();
                input.extend_from_slice(&self.plain);
                self.plain.clear();
                return Ok(n);
            }
            let before = input.len();
            match self.turn_with(Some(input), None).await? {
                Turn::Plain if input.len() > before => return Ok(input.len() - before),
                Turn::Plain | Turn::Again => {}
                Turn::Closed => return Ok(0),
                Turn::NeedRead | Turn::Writable => {
                    if self.peer_closed || self.recv().await? == 0 {
                        return Ok(0);
                    }
                }
            }
        }
    }

    async fn write_from(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        loop {
            match self.turn_with(None, Some(out)).await? {
                Turn::Writable => break,
                // Records the client sent meanwhile are kept for the next read.
                Turn::Plain | Turn::Again => {}
                Turn::NeedRead | Turn::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
        out.clear();
        Ok(())
    }

    async fn wait_readable(&self) -> io::Result<()> {
        // The socket's records: a close_notify, the end or a reset wake it
        // as bytes would.
        self.sock.readable(false).await
    }

    async fn close(&mut self) {
        let TlsStream {
            conn,
            incoming,
            outgoing,
            pending,
            sock,
            spare,
            ..
        } = self;
        let UnbufferedStatus { state, .. } = conn.process_tls_records(incoming);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
            Self::room(outgoing, *pending, 64, spare);
            if let Ok(n) = traffic.queue_close_notify(&mut outgoing[*pending..]) {
                *pending += n;
                let _ = Self::send(sock, outgoing, pending, spare).await;
            }
        }
        lifecycle::linger(&mut self.sock).await;
    }
}

/// The first byte of every TLS connection: a handshake record
/// (RFC 8446 §5.1, ContentType handshake(22)).
pub const HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let err = TlsCerts::load(TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
