//! The product API on the distributed path, over real services (the
//! Kafka-protocol broker, PostgreSQL, Redis, todo-worker): accounts work on
//! any server at once, and a differential test holds that the embedded
//! default and the distributed path give the same answers to the same
//! writes and queries once each write is visible.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Rng, Server};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};
use todo_testkit::services::Env;

const SECRET: &str = "product-test-secret-0123456789abcdef0123";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn distributed(env: &Env, instance: u16, extra: &[&str]) -> Server {
    let mut vars = env.vars();
    vars.push(("JWT_SECRET", SECRET.to_string()));
    vars.push(("TODO_INSTANCE", instance.to_string()));
    let server = Server::start_with("legacy", common::temp_dir("product"), extra, &vars);
    common::wait_until(
        "snapshot and read model loaded",
        Duration::from_secs(30),
        || {
            let ready = server.get("/readyz").status == 200;
            let loaded =
                todo_testkit::http::scrape(server.addr, "todo_read_model_version").unwrap_or(0) > 0;
            (ready && loaded).then_some(())
        },
    );
    server
}

#[test]
fn accounts_and_categories_work_on_any_server_at_once() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    let _worker = env.start_worker();
    let a = distributed(&env, 1, &[]);
    let b = distributed(&env, 2, &[]);

    let r = a.register("dora", "password1");
    assert_eq!(r.status, 201, "{}", r.text());
    // Taken, as the worker decided; asked on the other server.
    assert_eq!(b.register("dora", "password2").status, 409);
    // Registered on a, logged in on b at once.
    let token = b.session("dora", "password1");
    assert_eq!(b.call("GET", "/users/me", Some(&token), None).status, 200);
    assert_eq!(a.login("dora", "wrong password").status, 401);

    // A category made on a names todos written on b at once.
    let work = a.category(&token, "work");
    assert_eq!(
        b.call(
            "POST",
            "/categories",
            Some(&token),
            Some(r#"{"name":"work"}"#)
        )
        .status,
        409
    );
    let r = b.call(
        "POST",
        "/todos",
        Some(&token),
        Some(&format!(
            r#"{{"public":true,"title":"plan","category_id":{work}}}"#
        )),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let todo = r.json()["todo_id"].as_u64().unwrap();
    let other = Server::token_with_secret(SECRET, "eve");
    let theirs = b.call(
        "POST",
        "/todos",
        Some(&other),
        Some(&format!(
            r#"{{"public":true,"title":"x","category_id":{work}}}"#
        )),
    );
    assert_eq!(
        theirs.status,
        422,
        "another user's category: {}",
        theirs.text()
    );

    // Visible in the read model of both servers.
    for s in [&a, &b] {
        let r = s.wait_for_secs(&format!("/todos?category={work}"), 10, |r| {
            r.text().contains("\"plan\"")
        });
        assert_eq!(common::api::ids(&r), vec![todo]);
    }
    // Safe delete: the worker refuses while the todo is in it.
    let r = a.call("DELETE", &format!("/categories/{work}"), Some(&token), None);
    assert_eq!(r.status, 409, "{}", r.text());
    let moved = b.call(
        "PUT",
        &format!("/todos/{todo}"),
        Some(&token),
        Some(r#"{"category_id":null}"#),
    );
    assert_eq!(moved.status, 202);
    common::wait_until(
        "the todo left the category",
        Duration::from_secs(10),
        || {
            let r = a.call("DELETE", &format!("/categories/{work}"), Some(&token), None);
            (r.status == 204).then_some(())
        },
    );
    assert_eq!(
        b.call("GET", &format!("/categories/{work}"), Some(&token), None)
            .status,
        404
    );
}

/// One deployment under test: a server, and how its ids map to the names
/// the test gave them.
struct Side {
    server: Server,
    tokens: HashMap<String, String>,
    categories: HashMap<(String, String), u64>,
    todos: Vec<u64>,
    commands: Vec<u64>,
}

impl Side {
    fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    /// A list answer with ids replaced by what the test named them, so two
    /// deployments' answers compare.
    fn normal(&self, path: &str, user: Option<&str>) -> (u16, String) {
        let r = self
            .server
            .call("GET", path, user.map(|u| self.token(u)), None);
        if r.status != 200 {
            return (r.status, r.text());
        }
        let names: HashMap<u64, String> = self
            .categories
            .iter()
            .map(|((owner, name), id)| (*id, format!("{owner}/{name}")))
            .collect();
        let rows: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let category = t["category_id"]
                    .as_u64()
                    .map(|c| names.get(&c).cloned().unwrap_or(format!("?{c}")));
                if t.get("title").is_some() {
                    format!(
                        "{}|{}|{}|{}|{:?}",
                        t["title"].as_str().unwrap(),
                        t["description"].as_str().unwrap(),
                        t["completed"].as_bool().unwrap(),
                        t["owner"].as_str().unwrap(),
                        category
                    )
                } else {
                    t["name"].as_str().unwrap().to_string()
                }
            })
            .collect();
        (200, rows.join("\n"))
    }

    /// Every page of a walk, normalised.
    fn walk(&self, path: &str, user: Option<&str>) -> String {
        let mut out = String::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next {
            let r = self
                .server
                .call("GET", &p, user.map(|u| self.token(u)), None);
            assert_eq!(r.status, 200, "{p}: {}", r.text());
            next = common::api::next_link(&r);
            out.push_str(&self.normal(&p, user).1);
            out.push('\n');
        }
        out
    }

    /// The command's outcome; `None` while it is pending.
    fn outcome(&self, command: u64) -> Option<String> {
        let r = self.server.get(&format!("/commands/{command}"));
        (r.status == 200 && r.json()["status"].as_str() != Some("pending")).then(|| {
            let v = r.json();
            format!(
                "{}:{}",
                v["status"].as_str().unwrap(),
                v["reason"].as_str().unwrap_or("")
            )
        })
    }
}

const USERS: [&str; 3] = ["ann", "ben", "cat"];
const WORDS: [&str; 8] = [
    "milk", "bread", "report", "call", "Garden", "tax", "car", "book",
];

/// The same random writes against the embedded default and the distributed
/// path; after each round, once every write is visible, the same queries
/// give the same answers (ids and times aside: each deployment makes its
/// own). Rounds begin with category changes, made once the previous
/// round's writes are applied: on the distributed path writes to different
/// keys are applied in no fixed order until then.
#[test]
fn embedded_and_distributed_give_the_same_answers() {
    let rt = runtime();
    let env = rt.block_on(Env::new(3));
    let _worker = env.start_worker();
    // One core each: ids, and so the "created" order, follow request order.
    let dist = distributed(&env, 1, &["--cores", "1"]);
    let emb = Server::start("legacy", &["--cores", "1", "--seed", "100"]);
    let mut sides = [emb, dist].map(|server| Side {
        server,
        tokens: HashMap::new(),
        categories: HashMap::new(),
        todos: Vec::new(),
        commands: Vec::new(),
    });
    for side in sides.iter_mut() {
        for user in USERS {
            assert_eq!(side.server.register(user, "password1").status, 201);
            let token = side.server.session(user, "password1");
            side.tokens.insert(user.to_string(), token);
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut made = 0usize;
    let rounds = 12;
    let per_round = 250;
    for round in 0..rounds {
        // Category changes, the same on both sides.
        for _ in 0..4 {
            let user = USERS[rng.below(USERS.len())];
            let name = format!("c{}", rng.below(4));
            let action = rng.below(3);
            let statuses: Vec<u16> = sides
                .iter_mut()
                .map(|side| {
                    let key = (user.to_string(), name.clone());
                    let token = side.token(user).to_string();
                    match (action, side.categories.get(&key).copied()) {
                        (0, _) | (_, None) => {
                            let r = side.server.call(
                                "POST",
                                "/categories",
                                Some(&token),
                                Some(&format!(r#"{{"name":"{name}"}}"#)),
                            );
                            if r.status == 201 {
                                side.categories
                                    .insert(key, r.json()["id"].as_u64().unwrap());
                            }
                            r.status
                        }
                        (1, Some(id)) => {
                            let r = side.server.call(
                                "DELETE",
                                &format!("/categories/{id}"),
                                Some(&token),
                                None,
                            );
                            if r.status == 204 {
                                side.categories.remove(&key);
                            }
                            r.status
                        }
                        (_, Some(id)) => {
                            side.server
                                .call("GET", &format!("/categories/{id}"), Some(&token), None)
                                .status
                        }
                    }
                })
                .collect();
            assert_eq!(
                statuses[0], statuses[1],
                "round {round}: category {action} {user}/{name}"
            );
        }
        // Todo writes: creates, edits and deletes, some by the wrong user.
        for _ in 0..per_round {
            let user = USERS[rng.below(USERS.len())];
            let kind = if made == 0 { 0 } else { rng.below(10) };
            let target = if made == 0 { 0 } else { rng.below(made) };
            let (w1, w2) = (WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]);
            let cat_name = format!("c{}", rng.below(5));
            let completed = rng.below(2) == 1;
            let with_category = rng.below(3) == 0;
            let statuses: Vec<u16> = sides
                .iter_mut()
                .map(|side| {
                    let token = side.token(user).to_string();
                    let category = side.categories.get(&(user.to_string(), cat_name.clone())).copied();
                    let cat_field = match (with_category, category) {
                        (true, Some(id)) => format!(r#","category_id":{id}"#),
                        (true, None) => r#","category_id":999"#.to_string(),
                        _ => String::new(),
                    };
                    let r = match kind {
                        0..=5 => side.server.call(
                            "POST",
                            "/todos",
                            Some(&token),
                            Some(&format!(r#"{{"public":true,"title":"t{made} {w1}","description":"{w2} notes","completed":{completed}{cat_field}}}"#)),
                        ),
                        6..=8 => side.server.call(
                            "PUT",
                            &format!("/todos/{}", side.todos[target]),
                            Some(&token),
                            Some(&format!(r#"{{"completed":{completed},"description":"{w1} edited"{cat_field}}}"#)),
                        ),
                        _ => side.server.call("DELETE", &format!("/todos/{}", side.todos[target]), Some(&token), None),
                    };
                    if r.status == 202 {
                        let v = r.json();
                        side.commands.push(v["command_id"].as_u64().unwrap());
                        if kind <= 5 {
                            side.todos.push(v["todo_id"].as_u64().unwrap());
                        }
                    }
                    r.status
                })
                .collect();
            assert_eq!(statuses[0], statuses[1], "round {round}: write kind {kind}");
            if kind <= 5 && statuses[0] == 202 {
                made += 1;
            }
        }
        // Every write visible: each command's outcome is known, and equal.
        let [emb, dist] = &sides;
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, (&e, &d)) in emb.commands.iter().zip(&dist.commands).enumerate() {
            let want = emb.outcome(e).expect("embedded outcomes are known at once");
            let got = loop {
                if let Some(o) = dist.outcome(d) {
                    break o;
                }
                assert!(Instant::now() < deadline, "command {i} not applied in 30 s");
                std::thread::sleep(Duration::from_millis(5));
            };
            assert_eq!(got, want, "round {round}: outcome of command {i}");
        }
        // The same queries, the same answers (the distributed read model
        // follows PostgreSQL: wait until it has caught up).
        let mut queries: Vec<(String, Option<&str>)> = vec![
            ("/todos?limit=1000".into(), None),
            ("/todos?completed=false&limit=200".into(), None),
            ("/todos?sort=title&limit=300".into(), None),
            ("/todos?sort=-title&owner=ben&limit=50".into(), None),
            ("/todos?sort=created_at&limit=100".into(), None),
            ("/todos?q=milk&limit=1000".into(), None),
            ("/todos?q=garden+NOTES&sort=title".into(), None),
            ("/categories".into(), Some("cat")),
        ];
        for user in USERS {
            queries.push((format!("/todos?owner={user}&limit=1000"), None));
            queries.push((
                "/todos?mine=true&completed=true&limit=1000".into(),
                Some(user),
            ));
        }
        for ((owner, name), id) in &emb.categories {
            queries.push((
                format!("/todos?category={id}&limit=1000#{owner}/{name}"),
                None,
            ));
        }
        for (path, user) in &queries {
            let want = if let Some((p, key)) = path.split_once('#') {
                let _ = key;
                emb.normal(p, *user)
            } else {
                emb.normal(path, *user)
            };
            let dist_path = match path.split_once('#') {
                // The same category, by its id on the other side.
                Some((_, key)) => {
                    let (owner, name) = key.split_once('/').unwrap();
                    format!(
                        "/todos?category={}&limit=1000",
                        dist.categories[&(owner.to_string(), name.to_string())]
                    )
                }
                None => path.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = dist.normal(&dist_path, *user);
                if got == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {path} differs:\nembedded:\n{}\ndistributed:\n{}",
                    want.1,
                    got.1
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // A walk of small pages gives the same sequence.
        assert_eq!(
            emb.walk("/todos?owner=ann&limit=7&sort=title", None),
            dist.walk("/todos?owner=ann&limit=7&sort=title", None)
        );
    }
    println!(
        "{} writes and {} rounds of queries: the same answers",
        sides[0].commands.len(),
        rounds
    );
}
