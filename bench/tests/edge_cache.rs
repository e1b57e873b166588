//! todo-lb `--cache on` in front of two real todo-servers (their public list
//! answers `Cache-Control: public, max-age=1` with an `ETag`): one hot key
//! at full pipelined load reaches the servers at most once per core per
//! second (coalescing), a token-bearing request is never answered from the
//! cache, and a matching `If-None-Match` is answered 304 at the edge.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LB_CORES: u64 = 2;
const HOT: &str = "/todos?limit=10";

struct Edge {
    dir: std::path::PathBuf,
    servers: [SocketAddr; 2],
    lb: SocketAddr,
    admin: SocketAddr,
    _procs: Vec<Proc>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Edge {
    let dir = temp_dir("edge-cache");
    let servers: [SocketAddr; 2] =
        [0, 1].map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut procs: Vec<Proc> = servers
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let instance = (i + 1).to_string();
            server(
                *at,
                &dir.join(&instance),
                &["--cores", "1", "--instance", &instance],
            )
        })
        .collect();
    let mut cmd = Command::new(bin("todo-lb"));
    cmd.args(["--listen", &lb.to_string(), "--admin", &admin.to_string()])
        .args(["--upstream", &servers[0].to_string()])
        .args(["--upstream", &servers[1].to_string()])
        .args(["--cores", &LB_CORES.to_string(), "--pin", "false"])
        .args(["--health-interval", "200ms", "--cache", "on"])
        .stdout(Stdio::null());
    procs.push(Proc::spawn("todo-lb", cmd, Duration::from_secs(20)));
    wait_ready(lb, "/readyz", Duration::from_secs(20));
    Edge {
        dir,
        servers,
        lb,
        admin,
        _procs: procs,
    }
}

/// Requests written to the upstreams by the balancer, from its metrics.
fn upstream_requests(admin: SocketAddr) -> u64 {
    get(admin, "/metrics")
        .unwrap()
        .text()
        .lines()
        .filter(|l| l.starts_with("todo_lb_upstream_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn request(at: SocketAddr, head: &str) -> Response {
    let mut s = TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{head}\r\n").as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new()).expect("an answer")
}

#[test]
fn one_hot_key_reaches_the_servers_once_per_core_per_max_age() {
    let edge = start();
    let served = || edge.servers.iter().map(|s| todos_served(*s)).sum::<u64>();
    let before = served();
    let started = Instant::now();
    let report = bench(
        &format!("http://{}{HOT}", edge.lb),
        &["-c", "64", "-p", "16", "-d", "4s", "-t", "1"],
    );
    let seconds = started.elapsed().as_secs_f64().ceil() as u64;
    assert_clean(&report);
    let answered = num(&report, "responses");
    let reached = served() - before;
    eprintln!("{answered} answered, {reached} reached the servers in {seconds} s");
    // Each core fetches the key once per expiry (max-age=1): at most one
    // per core and second of the run, and one more per core at the start.
    let bound = LB_CORES * (seconds + 1) + 2;
    assert!(
        reached <= bound,
        "{reached} requests for the hot key reached the servers in {seconds} s (bound {bound}); {answered} answered"
    );
    assert!(
        answered > 100 * reached,
        "{answered} answered, {reached} upstream"
    );
    let metrics = get(edge.admin, "/metrics").unwrap().text();
    let m = todo_testkit::http::series(&metrics);
    let hits = todo_testkit::http::value(&m, "todo_lb_cache_requests_total{result=\"hit\"}");
    assert!(
        hits as u64 + reached >= answered,
        "{hits} hits of {answered}"
    );
    assert!(todo_testkit::http::value(&m, "todo_lb_cache_bytes") > 0.0);
}

#[test]
fn a_token_bearing_request_is_never_answered_from_the_cache() {
    let edge = start();
    // One connection (so one core and its cache), one pipelined batch:
    // the key fetched, then held, then asked with a token, then again.
    let mut c = TcpStream::connect(edge.lb).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let plain = format!("GET {HOT} HTTP/1.1\r\nHost: t\r\n\r\n");
    let token =
        format!("GET {HOT} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer not-a-token\r\n\r\n");
    let before = upstream_requests(edge.admin);
    c.write_all(
        [plain.as_str(), &plain, &token, &plain, &token]
            .concat()
            .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let seen: Vec<_> = (0..5)
        .map(|_| {
            let r = read_response(&mut c, &mut buf).expect("an answer");
            r.header("x-cache").unwrap_or("none").to_owned()
        })
        .collect();
    assert_eq!(seen, ["MISS", "HIT", "MISS", "HIT", "MISS"]);
    assert_eq!(
        upstream_requests(edge.admin),
        before + 3,
        "the fetch and both tokens went to a server"
    );
    // A request that asks to skip caches goes to a server too.
    let before = upstream_requests(edge.admin);
    let r = request(
        edge.lb,
        &format!("GET {HOT} HTTP/1.1\r\nHost: t\r\nCache-Control: no-cache\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(upstream_requests(edge.admin), before + 1);
}

#[test]
fn a_matching_if_none_match_is_answered_304_at_the_edge() {
    let edge = start();
    let first = request(edge.lb, &format!("GET {HOT} HTTP/1.1\r\nHost: t\r\n"));
    let etag = first
        .header("etag")
        .expect("the list has an ETag")
        .to_owned();
    // Within max-age the entry is fresh; wait for a HIT to know it is held
    // on the core this connection lands on (a core per connection).
    let (r, before) = wait_until("a 304 from the edge", Duration::from_secs(10), || {
        let before = upstream_requests(edge.admin);
        let r = request(
            edge.lb,
            &format!("GET {HOT} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n"),
        );
        (r.status == 304 && r.header("x-cache") == Some("HIT")).then_some((r, before))
    });
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.header("cache-control").unwrap().contains("max-age=1"));
    assert!(r.body.is_empty());
    assert_eq!(
        upstream_requests(edge.admin),
        before,
        "answered without a server"
    );
    // A tag that does not match gets the whole answer.
    let other = request(
        edge.lb,
        &format!("GET {HOT} HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"nope\"\r\n"),
    );
    assert_eq!(other.status, 200);
}
