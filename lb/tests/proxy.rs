//! todo-lb over real sockets, in front of small upstream peers whose
//! behaviour the test chooses (answer, echo the head, hang up without
//! answering; `common/mod.rs`). The failover test against real todo-server
//! processes is in bench/tests/lb_failover.rs; the admin endpoints are
//! tested in `admin.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{get, lb, peer, read_responses, Behaviour, Lb};
use todo_testkit::http::{read_response, Response};
use todo_testkit::process::wait_until;

#[test]
fn pipelined_requests_keep_their_order_and_carry_forwarding_headers() {
    let a = peer(Behaviour::Echo("a"));
    let b = peer(Behaviour::Echo("b"));
    let lb = lb(&[a.addr, b.addr], |_| {});
    let mut batch = String::new();
    for i in 0..200 {
        batch.push_str(&get(&format!("/item/{i}")));
    }
    // One client-chosen request id is kept.
    batch.push_str("GET /mine HTTP/1.1\r\nHost: t\r\nX-Request-Id: client-7\r\n\r\n");
    let mut s = TcpStream::connect(lb.addr).unwrap();
    // Split mid-request, as a client's writes may be.
    let (first, second) = batch.as_bytes().split_at(1001);
    s.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(second).unwrap();
    let answers = read_responses(&mut s, 201);
    let mut ids = std::collections::HashSet::new();
    for (i, (status, body)) in answers.iter().take(200).enumerate() {
        assert_eq!(*status, 200);
        assert!(
            body.contains(&format!("GET /item/{i} HTTP/1.1")),
            "{i}: {body}"
        );
        assert!(body.contains("X-Forwarded-For: 127.0.0.1"), "{body}");
        let id = body
            .lines()
            .find_map(|l| l.strip_prefix("X-Request-Id: "))
            .expect("a request id");
        assert_eq!(id.len(), 24);
        assert!(ids.insert(id.to_string()), "request ids are unique");
    }
    let mine = &answers[200].1;
    assert!(mine.contains("X-Request-Id: client-7"), "{mine}");
    assert_eq!(mine.matches("X-Request-Id").count(), 1, "{mine}");
}

#[test]
fn connections_are_spread_over_upstreams() {
    let a = peer(Behaviour::Echo("a"));
    let b = peer(Behaviour::Echo("b"));
    let lb = lb(&[a.addr, b.addr], |_| {});
    // Many clients at once: least-connections with rotating ties uses both.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = lb.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                for _ in 0..20 {
                    s.write_all(get("/").as_bytes()).unwrap();
                    read_responses(&mut s, 1);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (na, nb) = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    assert_eq!(na + nb, 320);
    assert!(na > 0 && nb > 0, "a {na}, b {nb}");
}

#[test]
fn a_failed_upstream_is_retried_for_gets_and_502_for_a_written_post() {
    let bad = peer(Behaviour::HangUp);
    let good = peer(Behaviour::Echo("good"));
    let lb = lb(&[bad.addr, good.addr], |c| c.eject_after = 100);
    // GETs: whichever upstream is picked, every one is answered by `good`.
    for _ in 0..6 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(format!("{}{}", get("/1"), get("/2")).as_bytes())
            .unwrap();
        let answers = read_responses(&mut s, 2);
        assert!(answers
            .iter()
            .all(|(st, body)| *st == 200 && body.starts_with("good")));
    }
    // A POST written to the upstream that hung up is not sent again: 502.
    let post = "POST /todos HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}";
    let mut saw_502 = false;
    for _ in 0..10 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(post.as_bytes()).unwrap();
        let (status, body) = read_responses(&mut s, 1).remove(0);
        match status {
            200 => assert!(body.starts_with("good")),
            502 => {
                assert!(body.contains("bad_gateway"), "{body}");
                saw_502 = true;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(saw_502, "some POST went to the failing upstream");
}

#[test]
fn a_failing_upstream_is_ejected_and_no_upstream_is_503() {
    let bad = peer(Behaviour::HangUp);
    let good = peer(Behaviour::Echo("good"));
    let lb = lb(&[bad.addr, good.addr], |c| {
        c.eject_after = 1;
        c.eject_for = Duration::from_secs(60);
    });
    // Each core ejects the bad upstream after its own first failure, so
    // it sees one request per core: send until both cores have tried it
    // (which core takes a connection is the kernel's choice, so ten
    // connections may all land on one core).
    let cores = 2;
    for _ in 0..400 {
        if bad.requests.load(Ordering::SeqCst) >= cores {
            break;
        }
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(get("/").as_bytes()).unwrap();
        assert_eq!(read_responses(&mut s, 1)[0].0, 200);
    }
    // Once ejected on both cores, the bad upstream sees no more requests.
    let before = bad.requests.load(Ordering::SeqCst);
    assert_eq!(before, cores, "ejected after one failure per core");
    for _ in 0..10 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(get("/").as_bytes()).unwrap();
        assert_eq!(read_responses(&mut s, 1)[0].0, 200);
    }
    assert_eq!(bad.requests.load(Ordering::SeqCst), before);

    // Nothing listening at all: 503 with Retry-After.
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = lb_with_gone(gone);
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.write_all(get("/").as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r: Response = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    // A HEAD gets the balancer's own answer without a body, so the
    // response pipelined after it is read where it starts.
    s.write_all(format!("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n{}", get("/")).as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let head = todo_testkit::http::read_answer(&mut s, &mut buf, true).expect("HEAD answer");
    assert_eq!(head.status, 503);
    assert!(head.body.is_empty(), "{}", head.text());
    let next = read_response(&mut s, &mut buf).expect("the GET's answer");
    assert_eq!(next.status, 503, "{}", next.text());
    assert!(next.text().contains("error"), "{}", next.text());
}

#[test]
fn a_circuit_opens_tests_one_exchange_half_open_and_closes() {
    let flaky = peer(Behaviour::Echo("flaky"));
    let good = peer(Behaviour::Echo("good"));
    let lb = lb(&[flaky.addr, good.addr], |c| {
        c.eject_after = 1;
        c.eject_for = Duration::from_millis(300);
        // Turns, so that a closed circuit is sure to get its share (p2c
        // would send this sequential load wherever the estimate is lower).
        c.balance = todo_lb::config::Balance::RoundRobin;
        // Only the passive breaker acts here.
        c.health_interval = Duration::from_secs(3600);
        c.admin = todo_lb::config::Admin(Some("127.0.0.1:0".parse().unwrap()));
    });
    let admin = lb.admin.unwrap();
    let circuit = |state: &str| {
        todo_testkit::http::scrape(
            admin,
            &format!(
                "todo_lb_upstream_circuit{{upstream=\"{}\",state=\"{state}\"}}",
                flaky.addr
            ),
        )
        .unwrap()
    };
    let send = || {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(get("/").as_bytes()).unwrap();
        // A GET the flaky upstream drops is resent to the good one.
        assert_eq!(read_responses(&mut s, 1)[0].0, 200);
    };
    assert_eq!(circuit("closed"), 2);
    flaky.down.store(true, Ordering::SeqCst);
    todo_testkit::process::wait_until("the circuit open", Duration::from_secs(10), || {
        send();
        (circuit("closed") < 2).then_some(())
    });
    flaky.down.store(false, Ordering::SeqCst);
    // Back: after the open time one exchange tests it, and it closes.
    todo_testkit::process::wait_until("every circuit closed", Duration::from_secs(10), || {
        send();
        (circuit("closed") == 2).then_some(())
    });
    assert_eq!(circuit("open") + circuit("half_open"), 0);
    let served = flaky.requests.load(Ordering::SeqCst);
    for _ in 0..20 {
        send();
    }
    assert!(
        flaky.requests.load(Ordering::SeqCst) > served,
        "the closed circuit carries traffic again"
    );
}

#[test]
fn an_upstream_that_does_not_answer_in_time_is_504_for_every_request() {
    let silent = peer(Behaviour::Silent);
    let lb = lb(&[silent.addr], |c| {
        c.upstream_timeout = Duration::from_millis(300);
    });
    let mut s = TcpStream::connect(lb.addr).unwrap();
    // A written POST is not sent again; the GET is, but no upstream is left.
    let post = "POST /todos HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}";
    s.write_all(format!("{post}{}", get("/")).as_bytes())
        .unwrap();
    let answers = read_responses(&mut s, 2);
    assert_eq!((answers[0].0, answers[1].0), (504, 504), "{answers:?}");
    assert!(answers[0].1.contains("gateway_timeout"));
}

fn lb_with_gone(gone: SocketAddr) -> Lb {
    lb(&[gone], |_| {})
}

#[test]
fn rate_and_connection_limits_answer_429() {
    let a = peer(Behaviour::Echo("a"));
    let lb = lb(&[a.addr], |c| {
        c.rate = 1.0;
        c.burst = Some(5.0);
        c.max_conns_per_client = 2;
    });
    let mut s = TcpStream::connect(lb.addr).unwrap();
    let batch: String = (0..8).map(|i| get(&format!("/{i}"))).collect();
    s.write_all(batch.as_bytes()).unwrap();
    let answers = read_responses(&mut s, 8);
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(answers[5].1.contains("rate_limited"));

    // A second connection, surely counted once it has an answer (429 while
    // the bucket is empty, 200 if a token came back meanwhile).
    let mut second = TcpStream::connect(lb.addr).unwrap();
    second.write_all(get("/").as_bytes()).unwrap();
    let status = read_responses(&mut second, 1)[0].0;
    assert!(status == 429 || status == 200, "{status}");
    let mut third = TcpStream::connect(lb.addr).unwrap();
    third.write_all(get("/").as_bytes()).unwrap();
    let (status, body) = read_responses(&mut third, 1).remove(0);
    assert_eq!(status, 429);
    assert!(body.contains("too_many_connections"), "{body}");
}

#[test]
fn the_upstreams_file_is_read_again_when_it_changes() {
    let a = peer(Behaviour::Echo("a"));
    let b = peer(Behaviour::Echo("b"));
    let file = std::env::temp_dir().join(format!("todo-lb-file-{}", std::process::id()));
    std::fs::write(&file, format!("# one upstream\n{}\n", a.addr)).unwrap();
    let path = file.clone();
    let lb = lb(&[], move |c| c.upstreams_file = Some(path));
    let ask = || {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(get("/").as_bytes()).unwrap();
        read_responses(&mut s, 1).remove(0).1
    };
    assert!(ask().starts_with('a'));
    std::fs::write(&file, format!("{}\n", b.addr)).unwrap();
    wait_until(
        "the new upstreams file picked up",
        Duration::from_secs(10),
        || ask().starts_with('b').then_some(()),
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn bad_requests_are_refused_at_the_balancer() {
    let a = peer(Behaviour::Echo("a"));
    let lb = lb(&[a.addr], |_| {});
    let mut s = TcpStream::connect(lb.addr).unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let (status, _) = read_responses(&mut s, 1).remove(0);
    assert_eq!(status, 400);
    assert_eq!(
        a.requests.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
}

#[test]
fn a_drain_closes_waiting_clients_and_ends_the_balancer() {
    let a = peer(Behaviour::Echo("a"));
    let Lb {
        addr,
        mut trigger,
        thread,
        ..
    } = lb(&[a.addr], |_| {});
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(get("/").as_bytes()).unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].0, 200);
    // The client now waits quietly; the drain must not wait for it.
    let started = Instant::now();
    trigger.fire();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(s.read(&mut byte).unwrap(), 0, "closed by the drain");
    thread.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
