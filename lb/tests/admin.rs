//! todo-lb's admin listener (`--admin`): `/livez`, and `/metrics` read
//! while the balancer forwards to one good upstream and three failing ones
//! (one hangs up, one never answers, one refuses connections), each failure
//! kind counted against its upstream, ejected, and out of rotation.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{get, lb, peer, read_responses, Behaviour};
use todo_lb::config::Admin;
use todo_testkit::http::{read_response, series, value, Response};
use todo_testkit::process::wait_until;

fn admin_get(addr: SocketAddr, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(get(path).as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new()).expect("an answer")
}

/// Every series of a scrape: `name{labels}` -> value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = admin_get(addr, "/metrics");
    assert_eq!(r.status, 200);
    series(&r.text())
}

#[test]
fn metrics_count_requests_failures_ejections_and_upstream_latency() {
    let good = peer(Behaviour::Echo("good"));
    let broken = peer(Behaviour::HangUp);
    let silent = peer(Behaviour::Silent);
    let gone = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let lb = lb(&[good.addr, broken.addr, silent.addr, gone], |c| {
        c.admin = Admin(Some("127.0.0.1:0".parse().unwrap()));
        c.eject_after = 1;
        c.eject_for = Duration::from_secs(60);
        c.retries = 3;
        c.upstream_timeout = Duration::from_millis(300);
        // Only passive ejection takes an upstream out here: the active
        // check runs once at start (one failure is below
        // --unhealthy-after) and next in a minute.
        c.health_interval = Duration::from_secs(60);
    });
    let admin = lb.admin.expect("an admin address");

    let livez = admin_get(admin, "/livez");
    assert_eq!((livez.status, livez.text().as_str()), (200, "ok\n"));
    assert_eq!(admin_get(admin, "/nothing").status, 404);
    let text = admin_get(admin, "/metrics").text();
    assert!(
        text.contains("# TYPE todo_lb_upstream_duration_seconds histogram\n"),
        "{text}"
    );

    // Twelve connections of one GET each, then one of five pipelined: every
    // GET is retried until the good upstream answers it; each failing
    // upstream meets its first request on a core and is ejected there.
    for _ in 0..12 {
        let mut s = TcpStream::connect(lb.addr).unwrap();
        s.write_all(get("/one").as_bytes()).unwrap();
        let (status, body) = read_responses(&mut s, 1).remove(0);
        assert_eq!(status, 200);
        assert!(body.starts_with("good"), "{body}");
    }
    let mut held = TcpStream::connect(lb.addr).unwrap();
    let batch: String = (0..5).map(|i| get(&format!("/batch/{i}"))).collect();
    held.write_all(batch.as_bytes()).unwrap();
    assert!(read_responses(&mut held, 5)
        .iter()
        .all(|(status, body)| *status == 200 && body.starts_with("good")));

    let m = wait_until(
        "the held connection counted open",
        Duration::from_secs(10),
        || {
            let m = scrape(admin);
            (m.get("todo_lb_connections_open") == Some(&1.0)).then_some(m)
        },
    );
    assert_eq!(value(&m, "todo_lb_requests_total"), 17.0);
    assert_eq!(value(&m, "todo_lb_connections_accepted_total"), 13.0);

    let label = |addr: SocketAddr| format!("upstream=\"{addr}\"");
    let g = label(good.addr);
    let answered = good.requests.load(Ordering::SeqCst) as f64;
    assert_eq!(
        answered, 17.0,
        "every request answered by the good upstream"
    );
    assert_eq!(
        value(&m, &format!("todo_lb_upstream_requests_total{{{g}}}")),
        answered
    );
    assert_eq!(value(&m, &format!("todo_lb_upstream_up{{{g}}}")), 1.0);
    assert_eq!(
        value(&m, &format!("todo_lb_upstream_ejections_total{{{g}}}")),
        0.0
    );
    for kind in ["connect", "timeout", "broken"] {
        let series = format!("todo_lb_upstream_errors_total{{{g},kind=\"{kind}\"}}");
        assert_eq!(value(&m, &series), 0.0, "{series}");
    }
    // The histogram: one observation per answered request, cumulative
    // buckets, the last one (+Inf) equal to the count.
    let count = value(
        &m,
        &format!("todo_lb_upstream_duration_seconds_count{{{g}}}"),
    );
    assert_eq!(count, answered);
    assert!(value(&m, &format!("todo_lb_upstream_duration_seconds_sum{{{g}}}")) > 0.0);
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(&format!(
                    "todo_lb_upstream_duration_seconds_bucket{{{g},le=\""
                ))?
                .strip_suffix("\"}")?;
            Some((le.parse::<f64>().unwrap(), *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), 18, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)));

    // Each failing upstream: its own kind of failure, an ejection per
    // failure (one failure opens a core's circuit, and it stays open), out
    // of rotation, no answer timed.
    for (addr, kind, written) in [
        (broken.addr, "broken", true),
        (silent.addr, "timeout", true),
        (gone, "connect", false),
    ] {
        let u = label(addr);
        let errors = value(
            &m,
            &format!("todo_lb_upstream_errors_total{{{u},kind=\"{kind}\"}}"),
        );
        let ejections = value(&m, &format!("todo_lb_upstream_ejections_total{{{u}}}"));
        assert!((1.0..=2.0).contains(&errors), "{u} {kind}: {errors}");
        assert_eq!(ejections, errors, "{u}");
        for other in ["connect", "timeout", "broken"]
            .iter()
            .filter(|k| **k != kind)
        {
            let series = format!("todo_lb_upstream_errors_total{{{u},kind=\"{other}\"}}");
            assert_eq!(value(&m, &series), 0.0, "{series}");
        }
        assert_eq!(
            value(&m, &format!("todo_lb_upstream_up{{{u}}}")),
            0.0,
            "{u}"
        );
        let requests = value(&m, &format!("todo_lb_upstream_requests_total{{{u}}}"));
        if written {
            assert!(requests >= errors, "{u}: {requests} written");
        } else {
            assert_eq!(requests, 0.0, "{u}: nothing written without a connection");
        }
        assert_eq!(
            value(
                &m,
                &format!("todo_lb_upstream_duration_seconds_count{{{u}}}")
            ),
            0.0
        );
    }
    assert!(broken.requests.load(Ordering::SeqCst) >= 1);

    drop(held);
    wait_until(
        "the closed connection no longer open",
        Duration::from_secs(10),
        || (scrape(admin).get("todo_lb_connections_open") == Some(&0.0)).then_some(()),
    );
}
