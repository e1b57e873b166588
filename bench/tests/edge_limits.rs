//! todo-lb's `[[limit]]` rules in front of a real todo-server (the embedded
//! default, which answers an accepted write 202 once it is durable): a user
//! over the `POST /todos` limit is refused 429 with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit`, while another user from the same
//! address keeps getting 202; the refused writes never reach the server; a
//! changed file takes effect without a restart.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use todo_testkit::http::{pipelined, statuses};

const SECRET: &str = "edge-limits-secret-of-at-least-32-bytes";

struct Edge {
    dir: PathBuf,
    file: PathBuf,
    server: SocketAddr,
    lb: SocketAddr,
    admin: SocketAddr,
    _procs: Vec<Proc>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(rules: &str) -> Edge {
    let dir = temp_dir("edge-limits");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, rules).unwrap();
    let server_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut procs = vec![server(
        server_at,
        &dir.join("server"),
        &["--cores", "1", "--jwt-secret", SECRET],
    )];
    let mut cmd = Command::new(bin("todo-lb"));
    cmd.args(["--listen", &lb.to_string(), "--admin", &admin.to_string()])
        .args(["--upstream", &server_at.to_string()])
        .args(["--cores", "1", "--pin", "false"])
        .args(["--health-interval", "200ms"])
        .arg("--config")
        .arg(&file)
        .args(["--jwt-secret", SECRET])
        .env_remove("JWT_SECRET")
        .stdout(Stdio::null());
    procs.push(Proc::spawn("todo-lb", cmd, Duration::from_secs(20)));
    wait_ready(lb, "/readyz", Duration::from_secs(20));
    Edge {
        dir,
        file,
        server: server_at,
        lb,
        admin,
        _procs: procs,
    }
}

/// A bearer token for `sub`, minted by the server's own `token` command.
fn token(sub: &str) -> String {
    let out = Command::new(bin("todo-server"))
        .args(["token", "--sub", sub, "--jwt-secret", SECRET])
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `n` requests pipelined on one new connection; their answers.
fn send(at: SocketAddr, method: &str, bearer: Option<&str>, n: usize) -> Vec<Response> {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (path, body) = match method {
        "POST" => ("/todos", "{\"public\":true,\"title\":\"limited\"}"),
        _ => ("/todos?limit=1", ""),
    };
    let one = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    pipelined(at, &one, n)
}

/// Writes the server accepted (202), from its own metrics.
fn accepted(server: SocketAddr) -> u64 {
    get(server, "/metrics")
        .unwrap()
        .text()
        .lines()
        .filter(|l| l.starts_with("todo_requests_total{route=\"todos_write\",status=\"202\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const POST_PER_USER: &str = "\
[[limit]]
route = \"POST /todos\"
per = \"user\"
rate = 0.05
burst = 3
";

#[test]
fn a_user_over_the_write_limit_gets_429_while_another_on_the_same_address_gets_202() {
    let edge = start(POST_PER_USER);
    let (alice, bob) = (token("alice"), token("bob"));
    let before = accepted(edge.server);

    let answers = send(edge.lb, "POST", Some(&alice), 5);
    assert_eq!(statuses(&answers), [202, 202, 202, 429, 429]);
    let refused = &answers[3];
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"POST /todos\";q=3;w=60")
    );
    let left = refused.header("ratelimit").unwrap();
    assert!(left.starts_with("\"POST /todos\";r=0;t="), "{left}");

    // Bob shares Alice's address (loopback) and has his own allowance.
    assert_eq!(statuses(&send(edge.lb, "POST", Some(&bob), 3)), [202; 3]);
    assert_eq!(statuses(&send(edge.lb, "POST", Some(&alice), 1)), [429]);
    // Reads are not under the rule.
    assert_eq!(statuses(&send(edge.lb, "GET", None, 4)), [200; 4]);

    // The server accepted exactly the six admitted writes: the refused ones
    // never reached it.
    assert_eq!(accepted(edge.server) - before, 6);
    assert_eq!(
        todo_testkit::http::scrape(edge.admin, "todo_lb_limited_total{route=\"POST /todos\"}"),
        Some(3)
    );
}

#[test]
fn a_changed_file_takes_effect_without_a_restart() {
    let edge = start(POST_PER_USER);
    let carol = token("carol");
    assert_eq!(
        statuses(&send(edge.lb, "POST", Some(&carol), 4)),
        [202, 202, 202, 429]
    );
    // The rule now limits reads per client address; writes are free.
    std::fs::write(
        &edge.file,
        "[[limit]]\nroute = \"GET /todos\"\nper = \"client\"\nrate = 0.05\nburst = 2\n",
    )
    .unwrap();
    wait_until("the new file in force", Duration::from_secs(10), || {
        (send(edge.lb, "GET", None, 3)[2].status == 429).then_some(())
    });
    assert_eq!(statuses(&send(edge.lb, "POST", Some(&carol), 2)), [202; 2]);
    assert_eq!(
        todo_testkit::http::scrape(edge.admin, "todo_lb_config_reloads_total{result=\"ok\"}"),
        Some(1)
    );
}
