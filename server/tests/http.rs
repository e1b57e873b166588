//! The read path over real sockets, on every driver this machine has:
//! pipelining, splits at every byte, HTTP/1.0 and close, hostile input.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{closed, drivers, read_answer, read_response, Server};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// The limit request `i` (1-based) of a pipeline of 80 asks for. Distinct
/// limits make the order of the responses visible.
type Limits = fn(usize) -> usize;
const DISTINCT: Limits = |i| i;
/// Period 7: any two swapped responses less than 7 apart are caught, with
/// small bodies (for the thousands of split connections).
const CYCLIC: Limits = |i| 1 + i % 7;

fn pipeline_80(limit: Limits) -> Vec<u8> {
    (1..=80)
        .flat_map(|i| {
            format!("GET /todos?limit={} HTTP/1.1\r\nHost: t\r\n\r\n", limit(i)).into_bytes()
        })
        .collect()
}

fn expect_80_in_order(s: &mut std::net::TcpStream, limit: Limits) {
    let mut buf = Vec::new();
    for i in 1..=80 {
        let r = read_response(s, &mut buf).unwrap_or_else(|| panic!("response {i} missing"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json().as_array().unwrap().len(),
            limit(i),
            "response {i} out of order"
        );
    }
    assert!(buf.is_empty(), "bytes after the 80th response");
}

#[test]
fn eighty_pipelined_requests_in_one_packet_come_back_in_order() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let mut s = server.connect();
        s.write_all(&pipeline_80(DISTINCT)).unwrap();
        expect_80_in_order(&mut s, DISTINCT);
        // The connection stays usable.
        s.write_all(&pipeline_80(DISTINCT)).unwrap();
        expect_80_in_order(&mut s, DISTINCT);
    }
}

#[test]
fn the_pipeline_split_at_every_byte_boundary() {
    let whole = pipeline_80(CYCLIC);
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let cuts: Vec<usize> = (1..whole.len()).collect();
        // Spread the cuts over a few client threads; each cut is a connection
        // that writes the two halves with a pause between them.
        std::thread::scope(|scope| {
            for part in cuts.chunks(cuts.len().div_ceil(16)) {
                let (server, whole) = (&server, &whole);
                scope.spawn(move || {
                    for &cut in part {
                        let mut s = server.connect();
                        s.write_all(&whole[..cut]).unwrap();
                        std::thread::sleep(Duration::from_micros(100));
                        s.write_all(&whole[cut..]).unwrap();
                        expect_80_in_order(&mut s, CYCLIC);
                    }
                });
            }
        });
        // And one byte per write on a single connection.
        let mut s = server.connect();
        for b in &whole {
            s.write_all(std::slice::from_ref(b)).unwrap();
        }
        expect_80_in_order(&mut s, CYCLIC);
    }
}

#[test]
fn http10_and_connection_close_end_the_connection() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let mut s = server.connect();
        s.write_all(b"GET /todos?limit=1 HTTP/1.0\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 200);
        assert!(closed(&mut s));

        let mut s = server.connect();
        s.write_all(
            b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /livez HTTP/1.0\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
        assert!(closed(&mut s));

        let mut s = server.connect();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            read_response(&mut s, &mut buf).is_none(),
            "nothing after close"
        );
    }
}

/// (name, raw request, status, connection closes afterwards)
fn hostile_table() -> Vec<(&'static str, Vec<u8>, u16, bool)> {
    let mut t: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, true),
        ("no Host", b"GET /todos HTTP/1.1\r\n\r\n".to_vec(), 400, true),
        ("CL and TE", b"POST /todos HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, true),
        ("differing CL", b"POST /todos HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400, true),
        ("bad chunk size", b"POST /todos HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n".to_vec(), 400, true),
        ("obs-fold", b"GET /todos HTTP/1.1\r\nHost: t\r\nX: a\r\n  folded\r\n\r\n".to_vec(), 400, true),
        ("bare CR", b"GET /todos HTTP/1.1\r\nHost: t\rX: y\r\n\r\n".to_vec(), 400, true),
        ("NUL in method", b"GE\0 /todos HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, true),
        ("HTTP/2 line", b"GET /todos HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505, true),
        ("gzip coding", b"POST /todos HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501, true),
        ("body too large", b"POST /todos HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n".to_vec(), 413, true),
        ("unknown expectation", b"POST /todos HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n".to_vec(), 417, true),
        ("limit 0", b"GET /todos?limit=0 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, false),
        ("limit 1001", b"GET /todos?limit=1001 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, false),
        ("limit text", b"GET /todos?limit=ten HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, false),
        ("unknown path", b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 404, false),
        ("bad id", b"GET /todos/abc HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 404, false),
        ("unknown id", b"GET /todos/1 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 404, false),
        ("PATCH", b"PATCH /todos HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 405, false),
        ("POST livez", b"POST /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, false),
        ("no token", b"POST /todos HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 401, false),
        ("bad token", b"POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer a.b.c\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 401, false),
    ];
    t.push((
        "long request line",
        [
            b"GET /".as_slice(),
            &vec![b'a'; 10_000],
            b" HTTP/1.1\r\nHost: t\r\n\r\n",
        ]
        .concat(),
        414,
        true,
    ));
    let mut many = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    t.push(("too many headers", many, 431, true));
    t.push((
        "huge header",
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
            "v".repeat(40_000)
        )
        .into_bytes(),
        431,
        true,
    ));
    t
}

#[test]
fn hostile_inputs_get_their_status_and_the_server_keeps_serving() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        // A connection held open across the whole table must keep working.
        let mut bystander = server.connect();
        for (name, raw, status, closes) in hostile_table() {
            let mut s = server.connect();
            s.write_all(&raw).unwrap();
            let r = read_response(&mut s, &mut Vec::new())
                .unwrap_or_else(|| panic!("{name}: no response"));
            assert_eq!(r.status, status, "{name}: {}", r.text());
            let err = r.json();
            assert!(
                err["error"]["code"].as_str().is_some()
                    && err["error"]["message"].as_str().is_some(),
                "{name}: {}",
                r.text()
            );
            if status == 405 {
                assert!(r.header("allow").is_some(), "{name}: 405 without Allow");
            }
            if closes {
                assert!(closed(&mut s), "{name}: connection left open");
            } else {
                // The same connection goes on.
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                assert_eq!(
                    read_response(&mut s, &mut Vec::new()).unwrap().status,
                    200,
                    "{name}"
                );
            }
            bystander
                .write_all(b"GET /todos?limit=1 HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(
                read_response(&mut bystander, &mut Vec::new())
                    .unwrap()
                    .status,
                200,
                "after {name}"
            );
        }
        assert_eq!(server.get("/livez").status, 200);
    }
}

#[test]
fn random_bytes_never_take_a_core_down() {
    // A small deterministic xorshift stream: printable-ish and binary input,
    // some of it starting like a request.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let inputs: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let len = (next() % 600) as usize;
            let mut raw: Vec<u8> = if i % 2 == 0 {
                b"GET /todos?limit=".to_vec()
            } else {
                Vec::new()
            };
            raw.extend((0..len).map(|_| next() as u8));
            if i % 3 == 0 {
                raw.extend_from_slice(b"\r\n\r\n");
            }
            raw
        })
        .collect();
    for driver in drivers() {
        let server = Server::start(driver, &["--header-timeout", "300ms"]);
        std::thread::scope(|scope| {
            for part in inputs.chunks(20) {
                let server = &server;
                scope.spawn(move || {
                    for raw in part {
                        let mut s = server.connect();
                        let _ = s.write_all(raw);
                        // Whatever the answer (an error, or a 408 for an
                        // unfinished head), the server must answer or close,
                        // and never stop answering others.
                        let _ = read_response(&mut s, &mut Vec::new());
                    }
                });
            }
        });
        let metrics = server.get("/metrics").text();
        assert!(
            metrics.contains("todo_connection_panics_total 0"),
            "{metrics}"
        );
        assert_eq!(server.get("/todos?limit=1").status, 200);
    }
}

#[test]
fn slow_and_idle_clients_are_timed_out() {
    for driver in drivers() {
        let server = Server::start(
            driver,
            &["--header-timeout", "300ms", "--idle-timeout", "500ms"],
        );
        // Slowloris: a head that never ends gets 408 and a close.
        let mut s = server.connect();
        s.write_all(b"GET /todos HTTP/1.1\r\nHost: t\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"X-Slow: 1\r\n").unwrap();
        let r = read_response(&mut s, &mut Vec::new()).expect("408");
        assert_eq!(r.status, 408);
        assert!(closed(&mut s));
        // An idle keep-alive connection is closed without a response.
        let mut s = server.connect();
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 200);
        assert!(closed(&mut s));
    }
}

/// A metric without labels, from `/metrics` (todo-testkit's scrape).
fn metric(server: &Server, name: &str) -> u64 {
    todo_testkit::http::scrape(server.addr, name)
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn a_client_that_never_reads_is_closed_and_others_are_served() {
    for driver in drivers() {
        let server = Server::start(
            driver,
            &["--send-timeout", "300ms", "--socket-buffer", "16384"],
        );
        // Far more answer bytes than the two sockets' buffers hold: the
        // server's write blocks, and this client never reads.
        let mut s = server.connect();
        let request = b"GET /todos?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
        s.write_all(&request).unwrap();
        // Timed out, then gone from the server: only the connection asking
        // is open. (The count drops just after the timeout is counted, when
        // the connection's task ends, so a scrape between them sees 2.)
        common::wait_until("the server closing it", Duration::from_secs(10), || {
            (metric(&server, "todo_send_timeouts_total") == 1
                && metric(&server, "todo_connections_open") == 1)
                .then_some(())
        });
        // Meanwhile, and after, others are answered.
        assert_eq!(server.get("/todos?limit=1").status, 200);
        // A client that reads its answers is not cut off.
        let mut s = server.connect();
        s.write_all(&b"GET /todos?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3))
            .unwrap();
        let mut buf = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                read_response(&mut s, &mut buf).expect("answered").status,
                200
            );
        }
        assert_eq!(metric(&server, "todo_send_timeouts_total"), 1);
    }
}

#[test]
fn head_livez_readyz_and_metrics() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let mut s = server.connect();
        s.write_all(b"HEAD /todos?limit=5 HTTP/1.1\r\nHost: t\r\n\r\nGET /todos?limit=5 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        // HEAD carries the GET's Content-Length and no body.
        let mut buf = Vec::new();
        let head = read_answer(&mut s, &mut buf, true).unwrap();
        assert_eq!((head.status, head.body.len()), (200, 0));
        let get = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str())
        );

        assert_eq!(server.get("/livez").status, 200);
        let ready = server.get("/readyz");
        assert_eq!(ready.status, 200);
        assert!(ready.json()["snapshot_version"].as_u64().unwrap() >= 1);
        let m = server.get("/metrics");
        assert_eq!(m.status, 200);
        assert!(m.header("content-type").unwrap().starts_with("text/plain"));
        let text = m.text();
        for needle in [
            "todo_requests_total{route=\"todos_list\",status=\"200\"}",
            "todo_request_duration_seconds_bucket{le=\"+Inf\"}",
            "todo_connections_open",
            "todo_connections_quiet",
            "todo_snapshot_version{core=\"0\"}",
            "todo_snapshot_age_seconds{core=\"1\"}",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
