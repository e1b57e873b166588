//! The product API (docs/architecture.md §9) on the embedded default, over real
//! sockets: accounts, sessions, categories, filters, search, sorts, keyset
//! pages, conditional requests and every refusal. The distributed path runs
//! the same flows in `product_distributed.rs`.

mod common;

use common::api::create_request;
use common::Server;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

fn server() -> Server {
    Server::start("legacy", &["--seed", "30"])
}

fn hashes(s: &Server) -> u64 {
    todo_testkit::http::scrape(s.addr, "todo_password_hashes_total").expect("hash counter")
}

#[test]
fn register_log_in_and_refusals() {
    let s = server();
    let r = s.register("alice", "correct horse");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["username"].as_str(), Some("alice"));
    let id = r.json()["id"].as_u64().unwrap();
    assert_eq!(s.register("alice", "another password").status, 409);
    for (user, pw) in [
        ("Al", "password1"),
        ("al ice", "password1"),
        ("bob", "short"),
    ] {
        let r = s.register(user, pw);
        assert_eq!(r.status, 422, "{user}: {}", r.text());
    }
    let r = s.call(
        "POST",
        "/users",
        None,
        Some(r#"{"username":"carol","password":"password1","admin":true}"#),
    );
    assert_eq!(r.status, 422, "unknown field: {}", r.text());
    assert_eq!(s.call("POST", "/users", None, Some("{")).status, 400);

    let r = s.login("alice", "correct horse");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["token_type"].as_str(), Some("Bearer"));
    assert_eq!(v["expires_in"].as_u64(), Some(3600));
    let token = v["access_token"].as_str().unwrap();
    let me = s.call("GET", "/users/me", Some(token), None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["id"].as_u64(), Some(id));
    assert_eq!(s.call("GET", "/users/me", None, None).status, 401);
    // A session token is the token writes take.
    assert!(s.create(token, "from a session").1 > 0);
    // An operator's token for a name nobody registered has no account.
    assert_eq!(
        s.call("GET", "/users/me", Some(&s.token("ghost")), None)
            .status,
        404
    );

    // A wrong password and an unknown user: the same answer, one argon2
    // run each (the unknown user is checked against a decoy hash).
    let before = hashes(&s);
    let wrong = s.login("alice", "wrong horse!");
    let after_wrong = hashes(&s);
    let unknown = s.login("nobody", "wrong horse!");
    let after_unknown = hashes(&s);
    assert_eq!((wrong.status, unknown.status), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(after_wrong - before, 1, "a wrong password costs one hash");
    assert_eq!(
        after_unknown - after_wrong,
        1,
        "an unknown user costs one hash"
    );

    // Five failures for one name: the sixth attempt is refused unhashed.
    for _ in 0..4 {
        assert_eq!(s.login("alice", "wrong horse!").status, 401);
    }
    let before = hashes(&s);
    let limited = s.login("alice", "correct horse");
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(hashes(&s), before, "a limited login is not hashed");
    // Another name from the same address still gets in.
    assert_eq!(s.register("bob", "password1").status, 201);
    assert_eq!(s.login("bob", "password1").status, 200);
}

#[test]
fn categories_are_own_and_delete_safely() {
    let s = server();
    s.register("alice", "password1");
    s.register("bob", "password2");
    let alice = s.session("alice", "password1");
    let bob = s.session("bob", "password2");
    let work = s.category(&alice, "work");
    let home = s.category(&alice, "home");
    let r = s.call(
        "POST",
        "/categories",
        Some(&alice),
        Some(r#"{"name":"work"}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        s.call("POST", "/categories", Some(&alice), Some(r#"{"name":" "}"#))
            .status,
        422
    );
    assert_eq!(
        s.call("POST", "/categories", None, Some(r#"{"name":"x"}"#))
            .status,
        401
    );
    let bobs = s.category(&bob, "work"); // names are per user
    let listed = s.call("GET", "/categories", Some(&alice), None);
    let names: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["work", "home"]);
    assert_eq!(
        s.call("GET", &format!("/categories/{bobs}"), Some(&alice), None)
            .status,
        404
    );
    assert_eq!(
        s.call("DELETE", &format!("/categories/{bobs}"), Some(&alice), None)
            .status,
        404
    );
    let renamed = s.call(
        "PUT",
        &format!("/categories/{home}"),
        Some(&alice),
        Some(r#"{"name":"house"}"#),
    );
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    assert_eq!(renamed.json()["name"].as_str(), Some("house"));
    assert_eq!(
        s.call(
            "PUT",
            &format!("/categories/{home}"),
            Some(&alice),
            Some(r#"{"name":"work"}"#)
        )
        .status,
        409
    );

    // Foreign keys: a todo may only name one of its writer's categories.
    let in_work = s.call(
        "POST",
        "/todos",
        Some(&alice),
        Some(&format!(
            r#"{{"public":true,"title":"report","category_id":{work}}}"#
        )),
    );
    assert_eq!(in_work.status, 202, "{}", in_work.text());
    let todo = in_work.json()["todo_id"].as_u64().unwrap();
    for category in [bobs, 12345] {
        let r = s.call(
            "POST",
            "/todos",
            Some(&alice),
            Some(&format!(
                r#"{{"public":true,"title":"x","category_id":{category}}}"#
            )),
        );
        assert_eq!(r.status, 422, "{}", r.text());
    }
    let moved = s.call(
        "PUT",
        &format!("/todos/{todo}"),
        Some(&alice),
        Some(&format!(r#"{{"category_id":{bobs}}}"#)),
    );
    assert_eq!(moved.status, 422);

    // Safe delete: refused with the count while todos are in it.
    let r = s.call("DELETE", &format!("/categories/{work}"), Some(&alice), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("1 todos"), "{}", r.text());
    let cleared = s.call(
        "PUT",
        &format!("/todos/{todo}"),
        Some(&alice),
        Some(r#"{"category_id":null}"#),
    );
    assert_eq!(cleared.status, 202);
    let r = s.call("DELETE", &format!("/categories/{work}"), Some(&alice), None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        s.call("GET", &format!("/categories/{work}"), Some(&alice), None)
            .status,
        404
    );
}

#[test]
fn filters_search_sorts_and_conditional_requests() {
    let s = server();
    s.register("alice", "password1");
    let alice = s.session("alice", "password1");
    let bob = s.token("bob");
    let work = s.category(&alice, "work");
    let mut made = Vec::new();
    for (i, title) in [
        "Buy milk",
        "buy bread",
        "Write report",
        "Call mum",
        "milk the cow",
    ]
    .iter()
    .enumerate()
    {
        let body = if i % 2 == 0 {
            format!(
                r#"{{"public":true,"title":"{title}","description":"item {i}","category_id":{work}}}"#
            )
        } else {
            format!(r#"{{"public":true,"title":"{title}","description":"item {i}"}}"#)
        };
        let r = s.call("POST", "/todos", Some(&alice), Some(&body));
        assert_eq!(r.status, 202, "{}", r.text());
        made.push(r.json()["todo_id"].as_u64().unwrap());
    }
    let bobs = s.create(&bob, "bob's milk").1;
    let done = s.call(
        "PUT",
        &format!("/todos/{}", made[1]),
        Some(&alice),
        Some(r#"{"completed":true}"#),
    );
    assert_eq!(done.status, 202);

    let get = |path: &str, token: Option<&str>| s.list(path, token).0;
    // "created" order is id order; ids made on two cores in one millisecond
    // need not follow the order the requests were sent in.
    let desc = |mut v: Vec<u64>| {
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    let newest_first: Vec<u64> = desc(made.clone());
    assert_eq!(
        get("/todos?mine=true&limit=100", Some(&alice)),
        newest_first
    );
    assert_eq!(get("/todos?owner=alice&limit=100", None), newest_first);
    let open: Vec<u64> = newest_first
        .iter()
        .copied()
        .filter(|&id| id != made[1])
        .collect();
    assert_eq!(get("/todos?mine=true&completed=false", Some(&alice)), open);
    assert_eq!(
        get("/todos?mine=true&completed=true", Some(&alice)),
        vec![made[1]]
    );
    assert_eq!(
        get(&format!("/todos?category={work}"), None),
        desc(vec![made[4], made[2], made[0]])
    );
    assert_eq!(
        get(&format!("/todos?category={work}&sort=created_at"), None),
        {
            let mut v = desc(vec![made[0], made[2], made[4]]);
            v.reverse();
            v
        }
    );
    // q: every word, case-insensitive, in title or description.
    assert_eq!(
        get("/todos?q=MILK", None),
        desc(vec![bobs, made[4], made[0]])
    );
    assert_eq!(get("/todos?q=milk+buy", None), vec![made[0]]);
    assert_eq!(get("/todos?q=item+3&owner=alice", None), vec![made[3]]);
    assert_eq!(get("/todos?q=nothing-like-this", None), Vec::<u64>::new());
    // Sorts.
    let titles = |path: &str| -> Vec<String> {
        let r = s.call("GET", path, Some(&alice), None);
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        titles("/todos?mine=true&sort=title"),
        [
            "Buy milk",
            "Call mum",
            "Write report",
            "buy bread",
            "milk the cow"
        ]
    );
    assert_eq!(
        titles("/todos?mine=true&sort=-title&limit=2"),
        ["milk the cow", "buy bread"]
    );
    // -updated_at: the keys descend, (updated_at, id) with the id breaking
    // ties; made[1] was updated after every create.
    let by_update = s.call(
        "GET",
        "/todos?mine=true&sort=-updated_at",
        Some(&alice),
        None,
    );
    let keys: Vec<(String, u64)> = by_update
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["updated_at"].as_str().unwrap().to_string(),
                t["id"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted);
    assert_eq!(keys[0].0, keys.iter().find(|k| k.1 == made[1]).unwrap().0);
    // Time windows: everything made in this test is after the seed.
    let first = s
        .call("GET", &format!("/todos/{}", made[0]), None, None)
        .json()["created_at"]
        .as_str()
        .unwrap()
        .to_string();
    let after = get(
        &format!(
            "/todos?owner=alice&created_after={}&limit=100",
            first.replace(':', "%3A")
        ),
        None,
    );
    assert!(!after.contains(&made[0]), "{after:?}");
    for id in &after {
        let at = s.call("GET", &format!("/todos/{id}"), None, None).json()["created_at"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(at > first, "{id} created at {at}, not after {first}");
    }
    let before = get(&format!("/todos?owner=alice&created_before={first}"), None);
    assert!(before.is_empty(), "{before:?}");

    // mine=true needs a token; lists that depend on it are private.
    assert_eq!(s.call("GET", "/todos?mine=true", None, None).status, 401);
    let mine = s.call("GET", "/todos?mine=true", Some(&alice), None);
    assert!(mine.header("cache-control").unwrap().starts_with("private"));
    let public = s.call("GET", "/todos?completed=false", None, None);
    assert_eq!(public.header("cache-control"), Some("public, max-age=1"));
    // ETag and 304, on the hot path and on queries.
    for path in ["/todos?limit=3", "/todos?completed=false&limit=3"] {
        let r = s.call("GET", path, None, None);
        let tag = r.header("etag").unwrap().to_string();
        assert!(tag.starts_with("W/\""), "{tag}");
        let again = s.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {tag}\r\n\r\n").as_bytes(),
        );
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        let other = s.request(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: W/\"1\"\r\n\r\n").as_bytes(),
        );
        assert_eq!(other.status, 200, "{path}: another version");
    }
}

#[test]
fn every_unknown_or_bad_parameter_is_a_400_naming_it() {
    let s = server();
    for (query, name) in [
        ("completed=false&colour=red", "colour"),
        ("completed=no", "completed"),
        ("owner=", "owner"),
        ("mine=yes", "mine"),
        ("category=abc", "category"),
        ("created_after=2026", "created_after"),
        ("created_before=tomorrow", "created_before"),
        ("q=", "q"),
        ("sort=newest", "sort"),
        ("sort=title&limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=20&cursor=nonsense", "cursor"),
        ("limit=5&limit=6", "limit"),
        ("owner=a&mine=true", "owner"),
        ("limit=x", "limit"),
    ] {
        let r = s.get(&format!("/todos?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(name), "{query}: {message}");
    }
}

/// 5,000 todos paged 100 at a time in both id orders while other writes
/// land between pages: every todo that existed when the walk began is
/// listed exactly once, and the links stop when nothing more matches.
#[test]
fn paging_through_5000_todos_while_writes_land() {
    let s = Server::start("legacy", &["--seed", "0"]);
    let writer = s.token("walker");
    let other = s.token("other");
    let made: Vec<u64> = s
        .pipelined(
            &(0..5000)
                .map(|i| {
                    create_request(&writer, &format!(r#"{{"public":true,"title":"t{i:04}"}}"#))
                })
                .collect::<Vec<_>>(),
        )
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.text());
            r.json()["todo_id"].as_u64().unwrap()
        })
        .collect();
    for (sort, expect_order) in [
        ("-created_at", true),
        ("created_at", false),
        ("title", false),
    ] {
        let mut n = 0;
        let seen = s.walk(
            &format!("/todos?owner=walker&sort={sort}&limit=100"),
            None,
            || {
                // Between pages: a new todo of the walker's, one of someone
                // else's, and an edit that keeps every sort key.
                n += 1;
                s.create(&writer, &format!("zz-new-{sort}-{n}"));
                s.create(&other, "elsewhere");
                let edit = s.call(
                    "PUT",
                    &format!("/todos/{}", made[n * 37 % made.len()]),
                    Some(&writer),
                    Some(r#"{"completed":true}"#),
                );
                assert_eq!(edit.status, 202);
            },
        );
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{sort}: a todo was listed twice");
        for id in &made {
            assert!(seen.contains(id), "{sort}: {id} was skipped");
        }
        if expect_order {
            let original: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|id| made.contains(id))
                .collect();
            let mut want = made.clone();
            want.reverse();
            assert_eq!(original, want, "{sort}: order");
        }
    }
    // Deep pages cost no more than the first (measured in bench/queries.sh);
    // here: a page from the middle answers the same rows as counting there.
    let (first, link) = s.list("/todos?owner=walker&sort=created_at&limit=1000", None);
    let (second, _) = s.list(&link.unwrap(), None);
    assert_eq!(first.len() + second.len(), 2000);
    assert_eq!(first[..], made[..1000]);
    assert_eq!(second[..], made[1000..2000]);
}

#[test]
fn the_hot_path_links_to_the_next_page() {
    let s = Server::start("legacy", &["--seed", "50"]);
    let (page, link) = s.list("/todos?limit=20", None);
    assert_eq!(page.len(), 20);
    let link = link.expect("more than 20 todos");
    assert!(link.starts_with("/todos?limit=20&cursor="), "{link}");
    let rest = s.walk(&link, None, || {});
    assert_eq!(rest.len(), 30);
    let all = [page, rest].concat();
    assert_eq!(all, s.newest_ids(50));
    let (_, none) = s.list("/todos?limit=50", None);
    assert_eq!(none, None, "no link when nothing more matches");
}
