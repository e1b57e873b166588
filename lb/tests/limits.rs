//! `--config`'s `[[limit]]` rules over real sockets: per user (the verified
//! token's subject) and per client, the 429's fields, and a changed file
//! taking effect without a restart, by its change and by SIGHUP alone.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::{lb, peer, Behaviour};
use todo_testkit::http::{pipelined, statuses, Response};
use todo_testkit::process::{temp_dir, wait_until};

const SECRET: &str = "limits-test-secret";

fn token(sub: &str, secret: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Send `n` requests pipelined on one new connection; their answers.
fn send(at: SocketAddr, method: &str, path: &str, bearer: Option<&str>, n: usize) -> Vec<Response> {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = if method == "POST" {
        "{\"public\":true,\"title\":\"x\"}"
    } else {
        ""
    };
    let one = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    pipelined(at, &one, n)
}

struct Setup {
    dir: PathBuf,
    file: PathBuf,
    lb: common::Lb,
    up: common::Peer,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.lb.trigger.fire();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(name: &str, text: &str) -> Setup {
    let dir = temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    let up = peer(Behaviour::Echo("a"));
    let path = file.clone();
    let lb = lb(&[up.addr], |c| {
        c.config = Some(path);
        c.jwt_secret = Some(SECRET.into());
        c.admin = todo_lb::config::Admin(Some("127.0.0.1:0".parse().unwrap()));
    });
    Setup { dir, file, lb, up }
}

const POST_PER_USER: &str = "\
[[limit]]
route = \"POST /todos\"
per = \"user\"
rate = 0.05
burst = 3
";

#[test]
fn one_user_over_its_limit_does_not_slow_another_on_the_same_address() {
    let s = setup("lb-limits-user", POST_PER_USER);
    let (a, b) = (token("alice", SECRET), token("bob", SECRET));
    let before = s.up.requests.load(Ordering::SeqCst);
    let answers = send(s.lb.addr, "POST", "/todos", Some(&a), 5);
    assert_eq!(statuses(&answers), [200, 200, 200, 429, 429]);
    let refused = &answers[3];
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"POST /todos\";q=3;w=60")
    );
    let remaining = refused.header("ratelimit").unwrap();
    assert!(
        remaining.starts_with("\"POST /todos\";r=0;t="),
        "{remaining}"
    );
    assert!(
        refused.text().contains("rate_limited"),
        "{}",
        refused.text()
    );
    // Only the three admitted reached the upstream.
    assert_eq!(s.up.requests.load(Ordering::SeqCst) - before, 3);

    // Bob, from the same address, has his own allowance, on a new
    // connection and pipelined behind Alice's refused ones alike.
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos", Some(&b), 3)),
        [200; 3]
    );
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos", Some(&a), 1)),
        [429]
    );
    // Other routes are not limited; a route under the prefix is.
    assert_eq!(
        statuses(&send(s.lb.addr, "GET", "/todos", Some(&a), 4)),
        [200; 4]
    );
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos/7", Some(&a), 1)),
        [429]
    );

    // A token that does not verify counts against the client address (its
    // own allowance), not against the subject it claims.
    let forged = token("bob", "another-secret");
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos", Some(&forged), 4)),
        [200, 200, 200, 429]
    );
    assert_eq!(statuses(&send(s.lb.addr, "POST", "/todos", None, 1)), [429]);
    let admin = s.lb.admin.unwrap();
    assert_eq!(
        todo_testkit::http::scrape(admin, "todo_lb_limited_total{route=\"POST /todos\"}"),
        Some(6)
    );
}

/// Write `text` over `file`, keeping its modification time and length, so
/// only a SIGHUP can make the balancer read it.
fn write_unseen(file: &Path, text: &str) {
    let meta = std::fs::metadata(file).unwrap();
    assert_eq!(meta.len(), text.len() as u64);
    std::fs::write(file, text).unwrap();
    let f = std::fs::File::options().write(true).open(file).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
}

#[test]
fn a_changed_file_takes_effect_without_a_restart_and_on_sighup() {
    let s = setup("lb-limits-reload", POST_PER_USER);
    let a = token("carol", SECRET);
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos", Some(&a), 4)),
        [200, 200, 200, 429]
    );

    // Changed on disk: a per-client limit on GET /todos; POST is free.
    std::fs::write(
        &s.file,
        "[[limit]]\nroute = \"GET /todos\"\nper = \"client\"\nrate = 0.05\nburst = 2\n",
    )
    .unwrap();
    wait_until("the new file in force", Duration::from_secs(10), || {
        (send(s.lb.addr, "GET", "/todos", None, 3)[2].status == 429).then_some(())
    });
    assert_eq!(
        statuses(&send(s.lb.addr, "POST", "/todos", Some(&a), 2)),
        [200; 2]
    );

    // The same length and modification time: seen only on SIGHUP.
    let text = std::fs::read_to_string(&s.file).unwrap();
    write_unseen(&s.file, &text.replace("GET /todos", "GET /other"));
    // SAFETY: the balancer under test runs in this process and its
    // `--config` reloader handles SIGHUP (registered before it started).
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_until(
        "the file re-read on SIGHUP",
        Duration::from_secs(10),
        || (send(s.lb.addr, "GET", "/todos", None, 1)[0].status == 200).then_some(()),
    );
    assert_eq!(
        statuses(&send(s.lb.addr, "GET", "/other", None, 3)),
        [200, 200, 429]
    );

    // A file that does not parse leaves the rules in force.
    let admin = s.lb.admin.unwrap();
    let failed =
        || todo_testkit::http::scrape(admin, "todo_lb_config_reloads_total{result=\"failed\"}");
    assert_eq!(failed(), Some(0));
    std::fs::write(
        &s.file,
        "[[limit]]\nroute = \"GET /other\"\nper = \"nobody\"\nrate = 1\n",
    )
    .unwrap();
    wait_until("the bad file refused", Duration::from_secs(10), || {
        (failed() == Some(1)).then_some(())
    });
    assert_eq!(statuses(&send(s.lb.addr, "GET", "/other", None, 1)), [429]);
}
