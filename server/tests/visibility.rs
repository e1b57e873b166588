//! Private todos (docs/architecture.md §13), over real sockets, in both
//! modes (the embedded default; the distributed path with two servers, the
//! worker, PostgreSQL, Redis and the broker) and through todo-lb with
//! `--cache on`:
//!
//! - a private todo's title and description are shown on no read surface
//!   to an anonymous reader, another user, an expired token or a forged
//!   one, even after its owner's own token-bearing reads of the same URLs
//!   went through the edge cache; its owner sees it with `mine=true` and
//!   by id;
//! - "may not see" answers byte for byte as "does not exist" (dates and
//!   request ids aside), for a todo by id, for an owner's list and for a
//!   write's outcome;
//! - a flip each way holds on every server;
//! - random writes by several users (creates, updates, flips, deletes,
//!   some by the wrong user): after each, what each viewer sees through
//!   each surface is the model's filter.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use common::api::{ids, next_link};
use common::deploy::{call, get, poll, runtime, token, Deployment, SECRET, VISIBLE_WITHIN};
use common::{poll_until, Response, Rng};
use sonic_rs::JsonValueTrait;

const OTHER_SECRET: &str = "not-the-servers-secret-0123456789abcdef0123";

/// The answer without what differs per request (its date, its request id,
/// the edge's cache headers).
fn normalised(r: &Response) -> String {
    let mut out = format!("{}\n", r.status);
    for (name, value) in &r.headers {
        let name = name.to_ascii_lowercase();
        if ["date", "x-request-id", "traceparent", "x-cache", "age"].contains(&name.as_str()) {
            continue;
        }
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push_str(&r.text());
    out
}

fn contains(r: &Response, marker: &str) -> bool {
    let head: String = r
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    let body = r.text().to_lowercase();
    head.to_lowercase().contains(&marker.to_lowercase()) || body.contains(&marker.to_lowercase())
}

/// Every page of `path` for `token` at `at`, following `Link`.
fn walk(at: SocketAddr, path: &str, token: Option<&str>) -> Vec<Response> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(p) = next {
        let r = get(at, &p, token);
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        next = next_link(&r);
        pages.push(r);
        assert!(pages.len() < 500, "{path}: a walk that does not end");
    }
    pages
}

/// The read surfaces of a list, for a todo in `category` made around
/// `made_ms`.
fn list_surfaces(category: u64, made_ms: u64) -> Vec<String> {
    let rfc = |ms: u64| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    };
    let mut paths: Vec<String> = [
        "/todos",
        "/todos?limit=1",
        "/todos?limit=1000",
        "/todos?owner=alice",
        "/todos?owner=alice&completed=false&limit=1000",
        "/todos?completed=false&limit=1000",
        "/todos?q=biopsy",
        "/todos?q=doctor&limit=1000",
        "/todos?q=secretdesc",
        "/todos?q=secrettitle&sort=title",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    paths.push(format!("/todos?category={category}&limit=1000"));
    paths.push(format!(
        "/todos?created_after={}&limit=1000",
        rfc(made_ms - 60_000)
    ));
    paths.push(format!(
        "/todos?created_before={}&limit=1000",
        rfc(made_ms + 60_000)
    ));
    for sort in [
        "-created_at",
        "created_at",
        "-updated_at",
        "updated_at",
        "title",
        "-title",
    ] {
        paths.push(format!("/todos?sort={sort}&limit=1000"));
    }
    paths
}

/// The markers in the private todo's title and description.
const TITLE_MARK: &str = "SecretTitle7731";
const DESC_MARK: &str = "SecretDesc5527";

fn private_todo_is_seen_by_its_owner_only(d: &Deployment) {
    let alice = token(SECRET, "alice", 3600);
    let carol = token(SECRET, "carol", 3600);
    let viewers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("another user", Some(token(SECRET, "bob", 3600))),
        ("an expired token", Some(token(SECRET, "alice", -3600))),
        ("a forged token", Some(token(OTHER_SECRET, "alice", 3600))),
    ];

    // Alice's category, her private todo in it, and a public one.
    let r = call(
        d.servers[0].addr,
        "POST",
        "/categories",
        Some(&alice),
        Some(r#"{"name":"health"}"#),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let category = r.json()["id"].as_u64().unwrap();
    let made_ms = todo_model::now_ms();
    let body = format!(
        r#"{{"title":"see doctor {TITLE_MARK}","description":"biopsy results {DESC_MARK}","category_id":{category}}}"#
    );
    let (private_cmd, private) = d.write(0, "POST", "/todos", &alice, Some(&body));
    let (public_cmd, public) = d.write(
        1,
        "POST",
        "/todos",
        &alice,
        Some(r#"{"title":"buy milk","public":true}"#),
    );
    // Carol has a private todo only.
    let (carol_cmd, _) = d.write(
        0,
        "POST",
        "/todos",
        &carol,
        Some(r#"{"title":"carol's own"}"#),
    );
    for cmd in [private_cmd, public_cmd, carol_cmd] {
        assert_eq!(d.outcome(cmd), "applied");
    }
    let by_id = format!("/todos/{private}");
    let mine = "/todos?mine=true&limit=1000";
    for at in d.server_addrs() {
        // The owner sees it, by id and in her own list; a public todo is
        // in the anonymous hot list.
        let r = poll("the owner sees her private todo", || {
            let r = get(at, &by_id, Some(&alice));
            (r.status == 200).then_some(r)
        });
        assert!(contains(&r, TITLE_MARK) && contains(&r, DESC_MARK));
        assert_eq!(r.json()["public"].as_bool(), Some(false));
        assert_eq!(r.header("cache-control"), Some("private"));
        poll("the owner's list", || {
            let got = ids(&get(at, mine, Some(&alice)));
            (got.contains(&private) && got.contains(&public)).then_some(())
        });
        poll("the public todo in the hot list", || {
            ids(&get(at, "/todos?limit=1000", None))
                .contains(&public)
                .then_some(())
        });
    }

    // The owner's own token-bearing reads of every URL first, through the
    // edge cache too: nothing she sees may be kept for anyone else.
    let surfaces = list_surfaces(category, made_ms);
    let mut etags = Vec::new();
    for at in d.readers() {
        for path in surfaces.iter().chain([&by_id, &mine.to_string()]) {
            let r = get(at, path, Some(&alice));
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            if let Some(tag) = r.header("etag") {
                etags.push((path.clone(), tag.to_string()));
            }
        }
        let mine_page = get(at, mine, Some(&alice));
        assert!(contains(&mine_page, TITLE_MARK), "the owner's own list");
        assert_eq!(
            mine_page.header("cache-control"),
            Some("private, max-age=1"),
            "a per-viewer page"
        );
    }

    // Bob's writes to her private todo, and to one that does not exist.
    let missing = private + 1_000_000;
    let mut outcomes = Vec::new();
    let bob = token(SECRET, "bob", 3600);
    for (method, path, body) in [
        ("PUT", by_id.clone(), Some(r#"{"title":"mine now"}"#)),
        ("DELETE", by_id.clone(), None),
        (
            "PUT",
            format!("/todos/{missing}"),
            Some(r#"{"title":"mine now"}"#),
        ),
        ("DELETE", format!("/todos/{missing}"), None),
    ] {
        let (cmd, _) = d.write(outcomes.len(), method, &path, &bob, body);
        outcomes.push((cmd, d.outcome(cmd)));
    }
    for (_, outcome) in &outcomes {
        assert_eq!(
            outcome, "rejected:not_found",
            "another's todo is one that does not exist"
        );
    }
    // The outcomes themselves, as a reader sees them: alike, ids aside.
    for at in d.readers() {
        let answer = |cmd: u64| {
            normalised(&get(at, &format!("/commands/{cmd}"), None)).replace(&cmd.to_string(), "ID")
        };
        assert_eq!(answer(outcomes[0].0), answer(outcomes[2].0));
        assert_eq!(answer(outcomes[1].0), answer(outcomes[3].0));
    }

    for at in d.readers() {
        for (who, tok) in &viewers {
            let tok = tok.as_deref();
            let mut answers = Vec::new();
            for path in &surfaces {
                answers.push((path.clone(), get(at, path, tok)));
            }
            for sort in ["-created_at", "title", "-updated_at"] {
                for page in walk(at, &format!("/todos?sort={sort}&limit=7"), tok) {
                    answers.push((format!("page of sort={sort}"), page));
                }
            }
            answers.push((by_id.clone(), get(at, &by_id, tok)));
            for (path, tag) in &etags {
                let r = call(at, "GET", path, tok, None, &[("If-None-Match", tag)]);
                answers.push((format!("{path} If-None-Match {tag}"), r));
            }
            answers.push((
                format!("/commands/{private_cmd}"),
                get(at, &format!("/commands/{private_cmd}"), tok),
            ));
            for (path, r) in &answers {
                for marker in [TITLE_MARK, DESC_MARK] {
                    assert!(
                        !contains(r, marker),
                        "{who} at {at} saw {marker} in {path}: {}",
                        r.text()
                    );
                }
                assert!(
                    [200, 304, 401, 404].contains(&r.status),
                    "{who}: {path}: {} {}",
                    r.status,
                    r.text()
                );
            }
            // Cannot see == does not exist, byte for byte.
            let hidden = get(at, &by_id, tok);
            let absent = get(at, &format!("/todos/{missing}"), tok);
            assert_eq!(hidden.status, 404, "{who}");
            assert_eq!(normalised(&hidden), normalised(&absent), "{who} at {at}");
            let quiet = get(at, "/todos?owner=carol&limit=5", tok);
            let nobody = get(at, "/todos?owner=nobody&limit=5", tok);
            assert_eq!(
                normalised(&quiet),
                normalised(&nobody),
                "{who} at {at}: owner="
            );
            assert_eq!(quiet.text(), "[]");
            // Only a token that verifies reads a `mine` list.
            let own = get(at, mine, tok);
            match *who {
                "another user" => assert_eq!(ids(&own), Vec::<u64>::new()),
                _ => assert_eq!(own.status, 401, "{who}"),
            }
        }
    }

    // Flips, each way, on every server.
    let flip = |n: usize, public: bool| {
        let body = format!(r#"{{"public":{public}}}"#);
        let (cmd, _) = d.write(n, "PUT", &by_id, &alice, Some(&body));
        assert_eq!(d.outcome(cmd), "applied");
    };
    flip(1, true);
    for at in d.server_addrs() {
        poll("made public: in the anonymous hot list", || {
            ids(&get(at, "/todos?limit=1000", None))
                .contains(&private)
                .then_some(())
        });
        assert_eq!(get(at, &by_id, None).status, 200);
        poll("made public: found by a search", || {
            ids(&get(at, "/todos?q=biopsy", None))
                .contains(&private)
                .then_some(())
        });
    }
    flip(0, false);
    for at in d.server_addrs() {
        poll("made private: gone from the anonymous hot list", || {
            (!ids(&get(at, "/todos?limit=1000", None)).contains(&private)).then_some(())
        });
        for path in list_surfaces(category, made_ms).iter().chain([&by_id]) {
            poll(&format!("made private: gone from {path}"), || {
                let r = get(at, path, None);
                (!contains(&r, TITLE_MARK) && !contains(&r, DESC_MARK)).then_some(())
            });
        }
        assert_eq!(get(at, &by_id, Some(&alice)).status, 200);
    }
    // Through the edge: gone once its one second of freshness is over.
    poll("made private: gone at the edge", || {
        let r = get(d.lb, "/todos?limit=1000", None);
        (!ids(&r).contains(&private)).then_some(())
    });
}

#[test]
fn a_private_todo_is_its_owners_alone_embedded() {
    private_todo_is_seen_by_its_owner_only(&Deployment::embedded());
}

#[test]
fn a_private_todo_is_its_owners_alone_on_two_servers() {
    let rt = runtime();
    private_todo_is_seen_by_its_owner_only(&Deployment::distributed(&rt));
}

/// What the test knows of one todo it made.
#[derive(Clone, Debug)]
struct Known {
    owner: &'static str,
    title: String,
    public: bool,
    completed: bool,
    exists: bool,
}

const USERS: [&str; 3] = ["ann", "ben", "cat"];
const WORDS: [&str; 4] = ["milk", "taxes", "garden", "letter"];

/// Random writes by several users; after each, every viewer's answers on
/// every surface and server are the model's filter of what was written.
fn visibility_follows_the_model(d: &Deployment, steps: usize, seed: u64) {
    let tokens: BTreeMap<&str, String> =
        USERS.iter().map(|u| (*u, token(SECRET, u, 3600))).collect();
    let mut viewers: Vec<(Option<&str>, Option<String>)> = USERS
        .iter()
        .map(|u| (Some(*u), Some(tokens[u].clone())))
        .collect();
    viewers.push((None, None));
    viewers.push((None, Some(token(SECRET, "ann", -3600))));
    viewers.push((None, Some(token(OTHER_SECRET, "ann", 3600))));
    let mut rng = Rng(seed);
    let mut model: BTreeMap<u64, Known> = BTreeMap::new();
    let mut made: Vec<u64> = Vec::new();
    for step in 0..steps {
        let user = USERS[rng.below(USERS.len())];
        let kind = if made.is_empty() { 0 } else { rng.below(10) };
        let target = if made.is_empty() {
            0
        } else {
            made[rng.below(made.len())]
        };
        let word = WORDS[rng.below(WORDS.len())];
        let public = rng.below(2) == 0;
        let completed = rng.below(2) == 0;
        let (method, path, body) = match kind {
            0..=3 => {
                // Without the field half the time: private.
                let field = if public || rng.below(2) == 0 {
                    format!(r#","public":{public}"#)
                } else {
                    String::new()
                };
                (
                    "POST",
                    "/todos".to_string(),
                    Some(format!(r#"{{"title":"s{step} {word}"{field}}}"#)),
                )
            }
            4..=5 => (
                "PUT",
                format!("/todos/{target}"),
                Some(format!(r#"{{"public":{public}}}"#)),
            ),
            6..=7 => (
                "PUT",
                format!("/todos/{target}"),
                Some(format!(
                    r#"{{"title":"s{step} {word}","completed":{completed}}}"#
                )),
            ),
            _ => ("DELETE", format!("/todos/{target}"), None),
        };
        let (cmd, id) = d.write(step, method, &path, &tokens[user], body.as_deref());
        let outcome = d.outcome(cmd);
        // The model's account of the same write.
        let want = match kind {
            0..=3 => {
                let field_public = body.as_deref().unwrap().contains(r#""public":true"#);
                model.insert(
                    id,
                    Known {
                        owner: user,
                        title: format!("s{step} {word}"),
                        public: field_public,
                        completed: false,
                        exists: true,
                    },
                );
                made.push(id);
                "applied"
            }
            _ => match model.get_mut(&target) {
                Some(k) if k.exists && k.owner == user => {
                    match kind {
                        4..=5 => k.public = public,
                        6..=7 => {
                            k.title = format!("s{step} {word}");
                            k.completed = completed;
                        }
                        _ => k.exists = false,
                    }
                    "applied"
                }
                _ => "rejected:not_found",
            },
        };
        assert_eq!(outcome, want, "step {step}: {method} {path} by {user}");
        check_views(d, &model, &viewers, id, step);
    }
}

/// Every viewer's answers on every server against the model (polled: the
/// distributed read model follows PostgreSQL a moment behind).
fn check_views(
    d: &Deployment,
    model: &BTreeMap<u64, Known>,
    viewers: &[(Option<&str>, Option<String>)],
    touched: u64,
    step: usize,
) {
    let made: HashSet<u64> = model.keys().copied().collect();
    let sees = |viewer: Option<&str>, k: &Known, mine: bool| {
        k.exists && (k.public || (mine && viewer == Some(k.owner)))
    };
    let expect = |viewer: Option<&str>, mine: bool, filter: &dyn Fn(&Known) -> bool| -> Vec<u64> {
        model
            .iter()
            .rev()
            .filter(|(_, k)| sees(viewer, k, mine) && filter(k))
            .map(|(id, _)| *id)
            .collect()
    };
    for at in d.server_addrs() {
        for (viewer, tok) in viewers {
            let tok = tok.as_deref();
            // (path, the ids the model says it lists, whether in another
            // order than newest first: then compared as a set).
            let mut checks: Vec<(String, Vec<u64>, bool)> = vec![
                (
                    "/todos?limit=1000".into(),
                    expect(*viewer, false, &|_| true),
                    false,
                ),
                (
                    "/todos?completed=true&limit=1000".into(),
                    expect(*viewer, false, &|k| k.completed),
                    false,
                ),
                (
                    "/todos?q=milk&limit=1000".into(),
                    expect(*viewer, false, &|k| k.title.contains("milk")),
                    false,
                ),
                (
                    "/todos?sort=-updated_at&limit=1000".into(),
                    expect(*viewer, false, &|_| true),
                    true,
                ),
            ];
            for owner in USERS {
                checks.push((
                    format!("/todos?owner={owner}&limit=1000"),
                    expect(*viewer, false, &|k| k.owner == owner),
                    false,
                ));
            }
            if let Some(v) = viewer {
                checks.push((
                    "/todos?mine=true&limit=1000".into(),
                    expect(*viewer, true, &|k| k.owner == *v),
                    false,
                ));
            }
            for (path, want, as_set) in checks {
                let mut last = Vec::new();
                let same = poll_until(VISIBLE_WITHIN, || {
                    let mut got: Vec<u64> = ids(&get(at, &path, tok))
                        .into_iter()
                        .filter(|id| made.contains(id))
                        .collect();
                    if as_set {
                        got.sort_unstable_by(|a, b| b.cmp(a));
                    }
                    let same = got == want;
                    last = got;
                    same.then_some(())
                });
                assert!(
                    same.is_some(),
                    "step {step}: {path} for {viewer:?} at {at}: got {last:?}, want {want:?}, model {model:?}"
                );
            }
            // The todo this step touched, by id.
            let k = &model[&touched];
            let want = if sees(*viewer, k, true) { 200 } else { 404 };
            poll(
                &format!("step {step}: /todos/{touched} for {viewer:?}"),
                || {
                    let r = get(at, &format!("/todos/{touched}"), tok);
                    (r.status == want
                        && (want == 404 || r.json()["public"].as_bool() == Some(k.public)))
                    .then_some(())
                },
            );
        }
    }
}

#[test]
fn visibility_follows_a_model_of_random_writes_embedded() {
    let d = Deployment::embedded();
    visibility_follows_the_model(&d, 150, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn visibility_follows_a_model_of_random_writes_on_two_servers() {
    let rt = runtime();
    let d = Deployment::distributed(&rt);
    visibility_follows_the_model(&d, 60, 0x2545_f491_4f6c_dd1d);
}
