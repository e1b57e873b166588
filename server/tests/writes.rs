//! The embedded default's write path over real sockets: tokens, 202s,
//! ownership, visibility in GET /todos, and durability across SIGKILL.

mod common;

use common::{drivers, read_response, Server};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};
use std::io::Write;

fn first_id(server: &Server) -> u64 {
    server.get("/todos?limit=1").json()[0]["id"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_write_is_accepted_visible_and_owned() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let alice = server.token("alice");
        let bob = server.token("bob");

        let r = server.send_json(
            "POST",
            "/todos",
            &alice,
            r#"{"public":true,"title":"buy milk","description":"2 litres"}"#,
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let accepted = r.json();
        let todo_id = accepted["todo_id"].as_u64().unwrap();
        let command_id = accepted["command_id"].as_u64().unwrap();

        let list = server.wait_for("/todos?limit=1", |r| {
            r.json()[0]["id"].as_u64() == Some(todo_id)
        });
        let top = &list.json()[0];
        assert_eq!(top["id"].as_u64(), Some(todo_id));
        assert_eq!(top["title"].as_str(), Some("buy milk"));
        assert_eq!(top["description"].as_str(), Some("2 litres"));
        assert_eq!(top["completed"].as_bool(), Some(false));
        assert_eq!(top["owner"].as_str(), Some("alice"));
        for field in ["created_at", "updated_at"] {
            assert!(top[field].as_str().unwrap().ends_with('Z'));
        }
        let outcome = server.get(&format!("/commands/{command_id}")).json();
        assert_eq!(outcome["status"].as_str(), Some("applied"));

        // Bob may not change or delete Alice's todo: accepted, recorded as
        // rejected exactly as for a todo that does not exist, nothing
        // changes.
        let r = server.send_json(
            "PUT",
            &format!("/todos/{todo_id}"),
            &bob,
            r#"{"public":true,"title":"mine now"}"#,
        );
        assert_eq!(r.status, 202);
        let cmd = r.json()["command_id"].as_u64().unwrap();
        let outcome = server.get(&format!("/commands/{cmd}")).json();
        assert_eq!(outcome["status"].as_str(), Some("rejected"));
        assert_eq!(outcome["reason"].as_str(), Some("not_found"));
        let r = server.send_json("DELETE", &format!("/todos/{todo_id}"), &bob, "");
        assert_eq!(r.status, 202);
        let cmd = r.json()["command_id"].as_u64().unwrap();
        assert_eq!(
            server.get(&format!("/commands/{cmd}")).json()["reason"].as_str(),
            Some("not_found")
        );
        assert_eq!(
            server.get(&format!("/todos/{todo_id}")).json()["title"].as_str(),
            Some("buy milk")
        );

        // Alice may.
        let r = server.send_json(
            "PUT",
            &format!("/todos/{todo_id}"),
            &alice,
            r#"{"completed":true}"#,
        );
        assert_eq!(r.status, 202);
        let got = server.wait_for(&format!("/todos/{todo_id}"), |r| {
            r.json()["completed"].as_bool() == Some(true)
        });
        assert_eq!(got.json()["title"].as_str(), Some("buy milk"));
        let r = server.send_json("DELETE", &format!("/todos/{todo_id}"), &alice, "");
        assert_eq!(r.status, 202);
        let gone = server.wait_for(&format!("/todos/{todo_id}"), |r| r.status == 404);
        assert_eq!(gone.status, 404);
        assert_ne!(first_id(&server), todo_id);

        // Updating something that does not exist is recorded as not_found.
        let r = server.send_json(
            "PUT",
            "/todos/12345",
            &alice,
            r#"{"public":true,"title":"x"}"#,
        );
        let cmd = r.json()["command_id"].as_u64().unwrap();
        assert_eq!(
            server.get(&format!("/commands/{cmd}")).json()["reason"].as_str(),
            Some("not_found")
        );
    }
}

#[test]
fn bad_write_bodies_get_their_status_and_change_nothing() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let token = server.token("carol");
        let before = server.get("/todos?limit=5").body;
        let cases: &[(&str, &str, u16)] = &[
            ("application/json", "{", 400),
            ("application/json", "not json", 400),
            ("application/json", "   ", 400),
            ("application/json", "{}", 422),
            ("application/json", r#"{"title":""}"#, 422),
            ("application/json", r#"{"title":"   "}"#, 422),
            ("application/json", r#"{"title":5}"#, 422),
            ("application/json", r#"{"title":"a","colour":"red"}"#, 422),
            ("application/json", r#"["title"]"#, 422),
            ("text/plain", r#"{"title":"a"}"#, 415),
        ];
        for (ct, body, status) in cases {
            let r = server.request(
                format!(
                    "POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            assert_eq!(r.status, *status, "{ct} {body}: {}", r.text());
        }
        let long = format!(r#"{{"title":"{}"}}"#, "x".repeat(201));
        assert_eq!(
            server.send_json("POST", "/todos", &token, &long).status,
            422
        );
        let r = server.request(format!("POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\r\n").as_bytes());
        assert_eq!(r.status, 411);
        assert_eq!(
            server.send_json("PUT", "/todos/1", &token, "{}").status,
            422
        );
        assert_eq!(
            server.get("/todos?limit=5").body,
            before,
            "a refused write changed the list"
        );
    }
}

#[test]
fn chunked_and_expect_continue_writes_work() {
    let server = Server::start(drivers()[0], &[]);
    let token = server.token("dave");
    let mut s = server.connect();
    s.write_all(
        format!(
            "POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{{\"public\":true,\r\n5\r\n\"titl\r\na\r\ne\":\"chunk\"\r\n1\r\n}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(r.status, 202, "{}", r.text());

    let body = r#"{"public":true,"title":"continued"}"#;
    let mut s = server.connect();
    s.write_all(
        format!(
            "POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut raw = [0u8; 25];
    use std::io::Read;
    s.read_exact(&mut raw).unwrap();
    assert_eq!(&raw, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 202);
    let list = server.wait_for("/todos?limit=2", |r| {
        r.json()[0]["title"].as_str() == Some("continued")
    });
    let titles: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(titles, ["continued", "chunk"]);
}

#[test]
fn accepted_writes_survive_sigkill_and_restart() {
    for driver in drivers() {
        let server = Server::start(driver, &[]);
        let token = server.token("erin");
        let mut ids = Vec::new();
        // Pipelined writes on one connection plus a few on their own.
        let mut s = server.connect();
        let mut batch = Vec::new();
        for i in 0..50 {
            let body = format!(r#"{{"public":true,"title":"durable {i}"}}"#);
            batch.extend_from_slice(
                format!(
                    "POST /todos HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        s.write_all(&batch).unwrap();
        let mut buf = Vec::new();
        for _ in 0..50 {
            let r = read_response(&mut s, &mut buf).unwrap();
            assert_eq!(r.status, 202);
            ids.push(r.json()["todo_id"].as_u64().unwrap());
        }
        // The 202s came back in request order, and ids are time-ordered.
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let data_dir = server.kill();

        let server = Server::start_in(driver, data_dir, &[]);
        let got = server.newest_ids(50);
        let mut want = ids.clone();
        want.reverse();
        assert_eq!(got, want, "newest first, every accepted write kept");
        // The token minted before the restart still works: the secret is kept.
        assert_eq!(
            server
                .send_json(
                    "POST",
                    "/todos",
                    &token,
                    r#"{"public":true,"title":"after"}"#
                )
                .status,
            202
        );
        // A restart does not seed again.
        let m = server.get("/readyz").json();
        assert!(m["snapshot_version"].as_u64().unwrap() >= 2);
    }
}

/// `todo-server data ACTION` on `dir`: exit code and what it printed.
fn data(action: &str, dir: &std::path::Path) -> (i32, String) {
    let out = common::command()
        .args(["data", action, "--data-dir"])
        .arg(dir)
        .output()
        .expect("todo-server data");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_damaged_command_log_stops_start_up_and_a_torn_tail_does_not() {
    use std::time::Duration;
    let server = Server::start("legacy", &[]);
    let token = server.token("erin");
    let first: Vec<u64> = (0..5)
        .map(|i| server.create(&token, &format!("first {i}")).1)
        .collect();
    let dir = server.kill();

    // A torn tail: the start of a record whose write a crash cut short.
    let log = dir.join("commands.1.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&[0x40, 0, 0, 0, 0x12, 0x34]).unwrap();
    drop(f);
    let server = Server::start_in("legacy", dir, &[]);
    let mut want = first.clone();
    want.sort_unstable_by(|a, b| b.cmp(a)); // by id: two cores may interleave
    assert_eq!(
        server.newest_ids(5),
        want,
        "every acknowledged write is served"
    );
    let second: Vec<u64> = (0..5)
        .map(|i| server.create(&token, &format!("second {i}")).1)
        .collect();
    let dir = server.kill();

    // A byte flipped in the middle of the log now in use: start-up stops,
    // names the file and the offset, and removes nothing.
    let log = dir.join("commands.2.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&log, &bytes).unwrap();
    let state = std::fs::read(dir.join("state.json")).unwrap();
    let mut cmd = common::command();
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir);
    let mut refused = common::Proc::start("damaged", cmd);
    let said = refused.wait_line("is damaged at byte", Duration::from_secs(20));
    assert!(said.contains("commands.2.log"), "{said}");
    assert_ne!(refused.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log is as it was");
    assert_eq!(std::fs::read(dir.join("state.json")).unwrap(), state);

    let (code, report) = data("check", &dir);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("DAMAGED at byte"), "{report}");
    let (code, report) = data("repair", &dir);
    assert_eq!(code, 0, "{report}");
    assert_eq!(data("check", &dir).0, 0);

    // What was before the damage is served; the original log is kept aside.
    let server = Server::start_in("legacy", dir.clone(), &[]);
    let served = server.newest_ids(20);
    for id in &first {
        assert!(served.contains(id), "{id} from before the torn tail");
    }
    assert!(served.contains(&second[0]), "the record before the damage");
    let kept_aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("commands.2.log.damaged-")
        })
        .count();
    assert_eq!(kept_aside, 1);
}

/// A small tmpfs the test mounts (root only), unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// The disk, or `None` when this machine cannot mount one and
    /// `TODO_TEST_SKIP` names `tmpfs` (otherwise the test fails).
    fn mount(kib: u32) -> Option<SmallDisk> {
        let dir = common::temp_dir("small-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let probe = match std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "mount -t tmpfs: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("mount: {e}")),
        };
        todo_testkit::capability::available("tmpfs", probe).then_some(SmallDisk { dir })
    }

    fn grow(&self, kib: u32) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_full_disk_is_503_loses_no_acknowledged_write_and_writes_resume() {
    let Some(disk) = SmallDisk::mount(256) else {
        return; // TODO_TEST_SKIP names tmpfs: recorded as skipped
    };
    let server = Server::start_in("legacy", disk.dir.join("data"), &["--seed", "0"]);
    let token = server.token("hana");
    let description = "d".repeat(2000);
    // Writes of about 2 KiB each, numbered by what was accepted so far.
    let big = |n: usize| {
        server.send_json(
            "POST",
            "/todos",
            &token,
            &format!(r#"{{"public":true,"title":"t {n}","description":"{description}"}}"#),
        )
    };
    let mut accepted = Vec::new();
    let refused = loop {
        let r = big(accepted.len());
        match r.status {
            202 => accepted.push(r.json()["todo_id"].as_u64().unwrap()),
            _ => break r,
        }
        assert!(accepted.len() < 1000, "the disk never filled");
    };
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert!(!accepted.is_empty());
    // Full: writes of that size keep being refused (one may still fit in
    // what a refused one left free), and reads go on.
    let mut refusals = 0;
    for _ in 0..20 {
        let again = big(accepted.len());
        match again.status {
            202 => accepted.push(again.json()["todo_id"].as_u64().unwrap()),
            503 => refusals += 1,
            other => panic!("{other}: {}", again.text()),
        }
    }
    assert!(refusals >= 19, "{refusals} of 20 refused on a full disk");
    assert_eq!(server.get("/todos?limit=1").status, 200);

    // Space comes back: writes resume without a restart.
    disk.grow(4096);
    let after = server.send_json(
        "POST",
        "/todos",
        &token,
        r#"{"public":true,"title":"after"}"#,
    );
    assert_eq!(after.status, 202, "{}", after.text());
    accepted.push(after.json()["todo_id"].as_u64().unwrap());

    // Nothing acknowledged was lost, and the log reads clean: the refused
    // appends left nothing behind.
    let dir = server.kill();
    let (code, report) = data("check", &dir);
    assert_eq!(code, 0, "{report}");
    let server = Server::start_in("legacy", dir, &["--seed", "0"]);
    let served = server.newest_ids(1000);
    // Newest first by id (ids from the two cores interleave).
    let mut want = accepted.clone();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(served, want, "every acknowledged write, and only those");
    drop(server);
}
