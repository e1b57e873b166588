//! The balancing policies (`--balance`) against upstream peers the test
//! controls: a consistent hash keeps each key on one upstream and moves only
//! the keys of an upstream that is out, which come back with it; `p2c` sends
//! a slow upstream less than its share; `round-robin` takes turns.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use todo_lb::config::{Balance, HashKey};
use todo_testkit::process::wait_until;

/// Which peer answered `GET /` with `headers` (each ending in CRLF), on a
/// new connection.
fn answered_by(lb: SocketAddr, headers: &str) -> String {
    let mut s = TcpStream::connect(lb).unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes())
        .unwrap();
    let (status, body) = read_responses(&mut s, 1).remove(0);
    assert_eq!(status, 200, "{body}");
    body.lines().next().unwrap().to_string()
}

/// Which peer answered a request with `X-User: user`.
fn owner_of(lb: SocketAddr, user: &str) -> String {
    answered_by(lb, &format!("X-User: {user}\r\n"))
}

fn owners(lb: SocketAddr, users: usize) -> Vec<String> {
    (0..users)
        .map(|u| owner_of(lb, &format!("user-{u}")))
        .collect()
}

#[test]
fn a_hash_keeps_each_key_on_one_upstream_and_moves_only_the_keys_of_one_that_is_out() {
    let peers = [
        peer(Behaviour::Echo("a")),
        peer(Behaviour::Echo("b")),
        peer(Behaviour::Echo("c")),
    ];
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    let lb = lb(&addrs, |c| {
        c.balance = Balance::Hash;
        c.hash_key = HashKey::Header("x-user".into());
        c.eject_after = 1;
        c.eject_for = Duration::from_millis(300);
    });
    const USERS: usize = 300;
    let before = owners(lb.addr, USERS);
    // The same keys again (each on a new connection, so from either core):
    // the same upstreams.
    assert_eq!(owners(lb.addr, USERS), before);
    let mut share: HashMap<&str, usize> = HashMap::new();
    for o in &before {
        *share.entry(o.as_str()).or_default() += 1;
    }
    assert_eq!(share.len(), 3, "every upstream owns keys: {share:?}");

    // b goes down: once its keys are answered elsewhere, every other key
    // must still be where it was.
    peers[1].down.store(true, Ordering::SeqCst);
    let b_key = before.iter().position(|o| o == "b").unwrap();
    wait_until(
        "b's keys answered elsewhere",
        Duration::from_secs(10),
        || (owner_of(lb.addr, &format!("user-{b_key}")) != "b").then_some(()),
    );
    let during = owners(lb.addr, USERS);
    let mut moved = 0;
    for (was, now) in before.iter().zip(&during) {
        if was == "b" {
            assert_ne!(now, "b");
            moved += 1;
        } else {
            assert_eq!(was, now, "a key of another upstream moved");
        }
    }
    eprintln!("b out: {moved} of {USERS} keys moved (b's share), 0 others; shares {share:?}");

    // b comes back: the health checks take it in again, and its keys return.
    peers[1].down.store(false, Ordering::SeqCst);
    wait_until("b's keys back on b", Duration::from_secs(10), || {
        (owner_of(lb.addr, &format!("user-{b_key}")) == "b").then_some(())
    });
    assert_eq!(owners(lb.addr, USERS), before);
    drop(lb);
}

#[test]
fn jwt_sub_keys_by_the_tokens_subject_and_falls_back_to_the_client() {
    let peers = [peer(Behaviour::Echo("a")), peer(Behaviour::Echo("b"))];
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    let lb = lb(&addrs, |c| {
        c.balance = Balance::Hash;
        c.hash_key = HashKey::JwtSub;
    });
    // Unsigned tokens for two subjects each, with different expiries: the
    // route follows the subject, not the token.
    let token = |sub: &str, exp: u64| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#))
        )
    };
    let owner = |auth: Option<String>| {
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        answered_by(lb.addr, &auth)
    };
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let sub = format!("user-{user}");
        let first = owner(Some(token(&sub, 1_000)));
        assert_eq!(owner(Some(token(&sub, 2_000))), first, "{sub}");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "subjects spread over both upstreams");
    // No token, or one that is not a JWT: the client's address decides, so
    // the same client keeps one upstream.
    // One connection, tokens of different subjects in turn: each request
    // goes where its own subject does (the connection's decoded token is
    // reused only for the same token).
    let subs: Vec<String> = (0..6).map(|u| format!("user-{u}")).collect();
    let alone: Vec<String> = subs.iter().map(|s| owner(Some(token(s, 1_000)))).collect();
    let mut conn = TcpStream::connect(lb.addr).unwrap();
    for round in 0..2 {
        for (sub, want) in subs.iter().zip(&alone) {
            let t = token(sub, 1_000 + round);
            conn.write_all(
                format!("GET / HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            let (_, body) = read_responses(&mut conn, 1).remove(0);
            assert_eq!(
                body.lines().next().unwrap(),
                want,
                "{sub} on a shared connection"
            );
        }
    }
    let anonymous = owner(None);
    for _ in 0..10 {
        assert_eq!(owner(None), anonymous);
        assert_eq!(owner(Some("not-a-jwt".into())), anonymous);
    }
    drop(lb);
}

/// Requests from `clients` threads, `each` one after another on one
/// connection per thread; how many each peer answered.
fn load(lb: SocketAddr, clients: usize, each: usize, peers: &[Peer]) -> Vec<usize> {
    let before: Vec<usize> = peers
        .iter()
        .map(|p| p.requests.load(Ordering::SeqCst))
        .collect();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(lb).unwrap();
                for _ in 0..each {
                    s.write_all(get("/").as_bytes()).unwrap();
                    assert_eq!(read_responses(&mut s, 1)[0].0, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    peers
        .iter()
        .zip(before)
        .map(|(p, b)| p.requests.load(Ordering::SeqCst) - b)
        .collect()
}

#[test]
fn p2c_sends_a_slow_upstream_less_than_round_robin_does() {
    let peers = [
        peer(Behaviour::Echo("a")),
        peer(Behaviour::Echo("b")),
        peer(Behaviour::Slow("c", 20)),
    ];
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    let mut shares = Vec::new();
    for balance in [Balance::RoundRobin, Balance::P2c] {
        let lb = lb(&addrs, |c| c.balance = balance);
        let counts = load(lb.addr, 8, 100, &peers);
        let total: usize = counts.iter().sum();
        assert_eq!(total, 800);
        let slow_share = counts[2] as f64 / total as f64;
        eprintln!("{balance:?}: answered by a, b, c (slow) {counts:?}, c's share {slow_share:.3}");
        shares.push(slow_share);
        drop(lb);
    }
    let (round_robin, p2c) = (shares[0], shares[1]);
    // Round robin gives the slow one its turn, a third; p2c learns it is
    // slow and sends it a small fraction of that.
    assert!(round_robin > 0.25, "round robin gave c {round_robin:.3}");
    assert!(
        p2c < round_robin / 3.0,
        "p2c gave c {p2c:.3}, round robin {round_robin:.3}"
    );
}
