//! The contract, `server/openapi.json`, held to the real server so that the
//! two cannot drift apart silently.
//!
//! The document is checked against the running binary rather than against
//! a route table: the dispatcher (`routes::dispatch`) matches paths in
//! code, and what a client sees is what it answers. On one keep-alive
//! connection, for every path the document lists (its `{id}` filled with a
//! real todo's, command's or category's id, `{file}` with each file the
//! document names) and every method (GET, HEAD, POST, PUT, DELETE, PATCH,
//! OPTIONS):
//! - a method the document lists for the path is routed: not 405, not the
//!   "no such resource" 404 of a path that names nothing, a status the
//!   operation lists, and a media type it lists;
//! - any other method is 405 with an `Allow` naming exactly the methods
//!   the document lists for the path;
//! - every answer is framed right (a body after a HEAD answer would be read
//!   as the next response and fail).
//!
//! Paths next to the documented ones answer the "no such resource" 404,
//! and `/openapi.json` serves this very file. What bodies and headers look
//! like, over many generated requests, is `scripts/contract.sh`'s part
//! (schemathesis).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use common::{read_answer, Response, Server};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

const DOCUMENT: &str = include_str!("../openapi.json");
/// Every method asked of every path; DELETE last, since the category it
/// deletes is what the others on its path read.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "OPTIONS", "DELETE"];

/// The answer of a path that names nothing.
fn unrouted(r: &Response) -> bool {
    r.status == 404 && r.text().contains("no such resource")
}

/// One request on `s`, its answer read as the answer to `method`.
fn ask(
    s: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Response {
    s.write_all(&common::api::request(method, path, Some(token), body))
        .unwrap();
    read_answer(s, buf, method == "HEAD")
        .unwrap_or_else(|| panic!("{method} {path}: no answer (the connection closed)"))
}

/// A stream's answer (its body does not end), on a connection of its own:
/// its head and its first frame as the body.
fn stream_head(s: &Server, path: &str) -> Response {
    let mut c = s.connect();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            c.read(&mut byte).unwrap(),
            1,
            "{path}: the head ended early"
        );
        head.push(byte[0]);
    }
    let mut body = Vec::new();
    while !body.ends_with(b"\n\n") {
        assert_eq!(
            c.read(&mut byte).unwrap(),
            1,
            "{path}: the stream ended early"
        );
        body.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    let headers = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Response {
        status: text[9..12].parse().unwrap(),
        headers,
        body,
        close: true,
    }
}

#[test]
fn every_documented_operation_is_routed_and_no_other() {
    let s = Server::start("legacy", &["--seed", "5"]);
    assert_eq!(s.register("olivia", "password one").status, 201);
    let token = s.session("olivia", "password one");
    let category = s.category(&token, "home");
    let (command, todo) = s.create(&token, "a todo");

    let doc: sonic_rs::Value = sonic_rs::from_str(DOCUMENT).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let paths = doc["paths"].as_object().expect("paths");
    let mut conn = s.connect();
    let mut buf = Vec::new();
    let mut operations = 0;
    let mut expected = 0;
    for (template, item) in paths.iter() {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .iter()
            .map(|(m, _)| m.to_ascii_uppercase())
            .collect();
        assert!(
            documented.iter().all(|m| METHODS.contains(&m.as_str())),
            "{template}: {documented:?}"
        );
        let concrete: Vec<String> = match template {
            "/todos/{id}" => vec![format!("/todos/{todo}")],
            "/commands/{id}" => vec![format!("/commands/{command}")],
            "/categories/{id}" => vec![format!("/categories/{category}")],
            "/docs/{file}" | "/app/{file}" => item["get"]["parameters"][0]["schema"]["enum"]
                .as_array()
                .expect("the files are listed")
                .iter()
                .map(|f| template.replace("{file}", f.as_str().unwrap()))
                .collect(),
            other => {
                assert!(!other.contains('{'), "{other}: fill its parameter here");
                vec![other.to_string()]
            }
        };
        expected += concrete.len() * documented.len();
        for path in &concrete {
            for method in METHODS {
                let body = matches!(method, "POST" | "PUT").then_some("{}");
                let r = if method == "GET" && path == "/todos/changes" {
                    stream_head(&s, path)
                } else {
                    ask(&mut conn, &mut buf, method, path, &token, body)
                };
                let what = format!("{method} {path} -> {} {}", r.status, r.text());
                if !documented.contains(method) {
                    assert_eq!(r.status, 405, "{what}");
                    let allow: BTreeSet<String> = r
                        .header("allow")
                        .unwrap_or_else(|| panic!("{what}: no Allow"))
                        .split(',')
                        .map(|m| m.trim().to_string())
                        .collect();
                    assert_eq!(allow, documented, "{what}: Allow");
                    continue;
                }
                operations += 1;
                assert!(r.status != 405 && !unrouted(&r), "{what}");
                let op = &item[method.to_ascii_lowercase().as_str()];
                let response = &op["responses"][r.status.to_string().as_str()];
                assert!(response.is_object(), "{what}: status not documented");
                if method == "HEAD" || r.body.is_empty() {
                    continue;
                }
                let response = resolve(&doc, response);
                let media = r.header("content-type").unwrap_or_default();
                let essence = media.split(';').next().unwrap().trim();
                let listed = response["content"]
                    .as_object()
                    .is_some_and(|c| c.iter().any(|(m, _)| m == essence));
                assert!(listed, "{what}: {media} not documented");
            }
        }
    }
    assert_eq!(operations, expected, "every documented operation was asked");

    for path in [
        "/",
        "/todo",
        "/users/you",
        "/session",
        "/openapi.yaml",
        "/docs/",
        "/docs/nothing.js",
        "/metrics/x",
        "/livez/x",
    ] {
        let r = ask(&mut conn, &mut buf, "GET", path, &token, None);
        assert!(unrouted(&r), "GET {path} -> {} {}", r.status, r.text());
    }
}

/// A response object, through its `$ref` when it has one.
fn resolve<'a>(doc: &'a sonic_rs::Value, v: &'a sonic_rs::Value) -> &'a sonic_rs::Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/responses/")
                .expect("a response $ref");
            &doc["components"]["responses"][name]
        }
        None => v,
    }
}

#[test]
fn the_contract_and_its_page_are_served_from_the_binary() {
    let s = Server::start("legacy", &["--seed", "0"]);
    let r = s.get("/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, DOCUMENT.as_bytes(), "/openapi.json is this file");
    let tag = r.header("etag").expect("ETag").to_string();
    assert!(r
        .header("cache-control")
        .unwrap()
        .starts_with("public, max-age="));
    let again = s.request(
        format!("GET /openapi.json HTTP/1.1\r\nHost: t\r\nIf-None-Match: {tag}\r\n\r\n").as_bytes(),
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let page = s.get("/docs");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("\"/openapi.json\""), "{html}");
    // Everything the page loads comes from this server.
    let mut loaded = 0;
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let url = html[at + attr.len()..].split('"').next().unwrap();
            assert!(url.starts_with("/docs/"), "{url}");
            let r = s.get(url);
            assert_eq!(r.status, 200, "{url}");
            assert!(!r.body.is_empty(), "{url}");
            let media = r.header("content-type").unwrap();
            let want = match url.rsplit('.').next().unwrap() {
                "js" => "text/javascript",
                "css" => "text/css",
                _ => "image/png",
            };
            assert!(media.starts_with(want), "{url}: {media}");
            loaded += 1;
        }
    }
    assert_eq!(loaded, 6, "two scripts, two styles, two icons");
    let policy = page.header("content-security-policy").expect("a policy");
    assert!(policy.contains("default-src 'self'"), "{policy}");
}
