//! TLS on `--listen-tls`: the certificate, its reload, the handshake.
//!
//! ```text
//! accept (tls listener) -> first byte: 0x16 (a TLS handshake record)?
//!                            no  -> 400 in plain text, close (a plain-HTTP
//!                                   client on the TLS port learns why)
//!                            yes -> rustls handshake (within --header-timeout)
//!                                   -> proxy.rs, the same loop as plain
//! ```
//!
//! - rustls with the ring provider; TLS 1.3 and 1.2; ALPN `http/1.1` only
//!   (a client offering only `h2` is refused with the
//!   `no_application_protocol` alert, RFC 7301 §3.2).
//! - Session resumption: stateless tickets (one ticket key rotation kept
//!   across certificate reloads, so resumption survives a reload) and a
//!   session-id cache for TLS 1.2 clients without tickets.
//! - [`TlsCerts`] is the one value shared by the cores: the current
//!   configuration and a generation number. A reloader thread looks at the
//!   files' modification time and size every second; a changed pair that
//!   loads replaces the configuration for NEW connections, while open ones
//!   keep the configuration they were made with. A pair that fails to load
//!   is reported and the old one stays.
//! - Writes: monoio-rustls seals what one `write_all` hands it into records
//!   and writes them 16 KiB at a time, so one batch of answers is still one
//!   write from proxy.rs (a depth-80 batch of small answers: one record).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::ServerConfig;

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
    current: RwLock<Arc<ServerConfig>>,
    /// Bumped on each reload; a core compares it with the one its acceptor
    /// was made from (one relaxed load per accepted connection).
    generation: AtomicU64,
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
            current: RwLock::new(config),
            generation: AtomicU64::new(0),
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

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Load the files again and, when they load, serve them to new
    /// connections.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files, &self.ticketer, &self.sessions)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::AcqRel);
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

    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        let one = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [one(&self.files.cert), one(&self.files.key)]
    }
}

fn build(
    files: &TlsFiles,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<ServerSessionMemoryCache>,
) -> Result<Arc<ServerConfig>, TlsError> {
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
    Ok(Arc::new(config))
}

/// A core's acceptor, remade when the certificates' generation moves.
pub struct CoreTls {
    certs: Arc<TlsCerts>,
    made: std::cell::Cell<u64>,
    acceptor: std::cell::RefCell<monoio_rustls::TlsAcceptor>,
}

impl CoreTls {
    pub fn new(certs: Arc<TlsCerts>) -> Self {
        let made = certs.generation();
        let acceptor = certs.current().into();
        CoreTls {
            certs,
            made: std::cell::Cell::new(made),
            acceptor: std::cell::RefCell::new(acceptor),
        }
    }

    /// The acceptor for a connection accepted now.
    pub fn acceptor(&self) -> monoio_rustls::TlsAcceptor {
        let now = self.certs.generation();
        if now != self.made.get() {
            *self.acceptor.borrow_mut() = self.certs.current().into();
            self.made.set(now);
        }
        self.acceptor.borrow().clone()
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
