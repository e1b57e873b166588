//! `--listen-tls` over real sockets: curl and `openssl s_client` with TLS 1.3
//! and 1.2 and ALPN http/1.1, session resumption, a pipelined batch of 80
//! answered in order, a certificate swapped on disk (new connections get it,
//! an open one keeps working), plain HTTP on the TLS port, and an event
//! stream relayed over TLS until either end closes.
//!
//! The certificates are made by the `openssl` command for each test: a CA and
//! a leaf for `localhost` and 127.0.0.1, the file holding the chain.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{lb, peer, stream_peer, Behaviour, RETRY, STREAM_HEAD};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use todo_testkit::http::read_response;
use todo_testkit::process::{temp_dir, wait_until};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a leaf signed by it named `name` (`name.pem` holds the leaf
/// then the CA, `name.key` its key). Returns the CA's file.
fn make_ca(dir: &Path) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=todo-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    dir.join("ca.pem")
}

fn make_leaf(dir: &Path, name: &str) {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{:x}", rand_serial()),
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            &crt,
        ],
    );
    let chain = [
        std::fs::read(dir.join(&crt)).unwrap(),
        std::fs::read(dir.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join(format!("{name}.pem")), chain).unwrap();
}

fn rand_serial() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) & 0x7fff_ffff_ffff_ffff
}

struct Setup {
    dir: PathBuf,
    ca: PathBuf,
    tls: SocketAddr,
    lb: common::Lb,
}

/// todo-lb with `--listen-tls` in front of one echoing peer, serving
/// `first.pem` from `dir`.
fn setup(name: &str) -> Setup {
    setup_for(name, peer(Behaviour::Echo("a")).addr)
}

/// As [`setup`], in front of `upstream`.
fn setup_for(name: &str, upstream: SocketAddr) -> Setup {
    let dir = temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(&dir);
    make_leaf(&dir, "first");
    std::fs::copy(dir.join("first.pem"), dir.join("served.pem")).unwrap();
    std::fs::copy(dir.join("first.key"), dir.join("served.key")).unwrap();
    let served = (dir.join("served.pem"), dir.join("served.key"));
    let lb = lb(&[upstream], |c| {
        c.listen_tls = Some("127.0.0.1:0".parse().unwrap());
        c.tls_cert = Some(served.0);
        c.tls_key = Some(served.1);
        c.admin = todo_lb::config::Admin(Some("127.0.0.1:0".parse().unwrap()));
    });
    let tls = lb.tls.expect("a TLS listener");
    Setup { dir, ca, tls, lb }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.lb.trigger.fire();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(config: &Arc<rustls::ClientConfig>, at: SocketAddr) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let tcp = TcpStream::connect(at).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

#[test]
fn curl_and_openssl_speak_tls13_and_tls12_with_alpn_http11() {
    let s = setup("lb-tls-clients");
    let url = format!("https://localhost:{}/hello", s.tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", s.tls.port());
    for (flag, version) in [("--tlsv1.3", "1.3"), ("--tlsv1.2", "1.2")] {
        let out = Command::new("curl")
            .args(["-sS", "--http1.1", flag, "--tls-max", version, "--cacert"])
            .arg(&s.ca)
            .args([
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("a\nGET /hello HTTP/1.1"), "{text}");
        assert!(text.ends_with("\n200 1.1"), "{text}");
    }
    for (flag, protocol) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let text = s_client(&s, &[flag, "-alpn", "http/1.1"], None);
        assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
        assert!(
            text.contains(&format!("Protocol  : {protocol}"))
                || text.contains(&format!("New, {protocol}")),
            "{text}"
        );
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    }
}

#[test]
fn sessions_resume_with_tls13_and_tls12() {
    let s = setup("lb-tls-resume");
    for flag in ["-tls1_3", "-tls1_2"] {
        let sess = s.dir.join(format!("session{flag}"));
        let first = s_client(&s, &[flag, "-sess_out", sess.to_str().unwrap()], None);
        assert!(first.contains("New, TLS"), "{first}");
        let again = s_client(&s, &[flag, "-sess_in", sess.to_str().unwrap()], None);
        assert!(again.contains("Reused, TLS"), "{flag}: {again}");
        assert!(again.contains("HTTP/1.1 200 OK"), "{again}");
    }
}

/// `openssl s_client` to the TLS port: sends one GET (or `request`), prints
/// the session and the answer.
fn s_client(s: &Setup, args: &[&str], request: Option<&str>) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &s.tls.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(&s.ca)
        .args(["-ign_eof", "-verify_return_error"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let request = request.unwrap_or("GET /s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_pipelined_batch_of_80_over_tls_is_answered_in_order() {
    let s = setup("lb-tls-pipeline");
    let config = client_config(&s.ca);
    let mut tls = connect(&config, s.tls);
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let batch: String = (0..80)
        .map(|i| format!("GET /item/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    // One write of the whole batch: the client's records arrive together.
    tls.write_all(batch.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut buf = Vec::new();
    for i in 0..80 {
        let r = read_response(&mut tls, &mut buf).unwrap_or_else(|| panic!("closed after {i}"));
        assert_eq!(r.status, 200);
        assert!(
            r.text().starts_with(&format!("a\nGET /item/{i} HTTP/1.1")),
            "{i}: {}",
            r.text()
        );
    }
}

#[test]
fn a_swapped_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let s = setup("lb-tls-reload");
    let config = client_config(&s.ca);
    let mut old = connect(&config, s.tls);
    let first = old.conn.peer_certificates().unwrap()[0].clone();
    make_leaf(&s.dir, "second");
    let second = CertificateDer::pem_file_iter(s.dir.join("second.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_ne!(first, second);
    // Key first, then the chain: the reloader may see either state between.
    std::fs::copy(s.dir.join("second.key"), s.dir.join("served.key")).unwrap();
    std::fs::copy(s.dir.join("second.pem"), s.dir.join("served.pem")).unwrap();
    wait_until(
        "new connections get the second certificate",
        Duration::from_secs(10),
        || {
            let tls = connect(&config, s.tls);
            (tls.conn.peer_certificates().unwrap()[0] == second).then_some(())
        },
    );
    // The connection made before the swap still answers.
    let mut buf = Vec::new();
    old.write_all(b"GET /still HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut old, &mut buf).expect("the old connection answers");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("GET /still"), "{}", r.text());
    // A pair that does not load is refused; the second stays in service.
    std::fs::write(s.dir.join("served.pem"), "not a certificate").unwrap();
    let text = s_client(&s, &["-tls1_3"], None);
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
}

#[test]
fn plain_http_on_the_tls_port_gets_a_clear_error_and_the_port_keeps_serving() {
    let s = setup("lb-tls-plain");
    let mut plain = TcpStream::connect(s.tls).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /todos HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    plain.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("tls_required"), "{text}");
    // Garbage that is not HTTP either: closed, nothing crashes.
    let mut junk = TcpStream::connect(s.tls).unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0])
        .unwrap();
    drop(junk);
    let config = client_config(&s.ca);
    let mut tls = connect(&config, s.tls);
    tls.write_all(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut tls, &mut buf).expect("an answer");
    assert_eq!(r.status, 200);
    let admin = s.lb.admin.unwrap();
    let count = |result: &str| {
        todo_testkit::http::scrape(
            admin,
            &format!("todo_lb_tls_handshakes_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(count("plain_http"), Some(1));
    assert_eq!(count("failed"), Some(1));
    assert!(count("ok") >= Some(1));
}

/// Read from `tls` onto `buf` until it ends with `tail` (10 s at most).
fn read_until_end_with(tls: &mut Tls, buf: &mut Vec<u8>, tail: &str) {
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(tail.as_bytes()) {
        match tls.read(&mut chunk) {
            Ok(0) => panic!("closed before {tail:?}: {}", String::from_utf8_lossy(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{e} before {tail:?}: {}", String::from_utf8_lossy(buf)),
        }
    }
}

#[test]
fn an_event_stream_over_tls_ends_with_either_side() {
    let up = stream_peer(STREAM_HEAD);
    let s = setup_for("lb-tls-stream", up.addr);
    let config = client_config(&s.ca);
    let request = "GET /todos/changes HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n";
    let event = "id: 1-1\nevent: todo\ndata: {}\n\n";

    // The upstream ends it: the client reads the last event, then the
    // balancer's close_notify.
    let mut tls = connect(&config, s.tls);
    tls.write_all(request.as_bytes()).unwrap();
    let mut upstream = up.next();
    let mut buf = Vec::new();
    read_until_end_with(&mut tls, &mut buf, RETRY);
    let head = String::from_utf8_lossy(&buf).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    upstream.send(event);
    read_until_end_with(&mut tls, &mut buf, event);
    drop(upstream);
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)
        .expect("a clean end: close_notify, then the end of stream");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // The client ends it with its close_notify, its socket still open: the
    // upstream connection closes at once.
    let mut tls = connect(&config, s.tls);
    tls.write_all(request.as_bytes()).unwrap();
    let mut upstream = up.next();
    read_until_end_with(&mut tls, &mut Vec::new(), RETRY);
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }
    assert!(upstream.closed(), "the upstream sees the end within 10 s");
}
