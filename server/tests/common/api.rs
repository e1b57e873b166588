//! The product API (accounts, categories, queries) as a client sees it: raw
//! requests over real sockets, answers read by todo-testkit's reader.

use std::io::Write;

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use super::{read_response, Response, Server};

impl Server {
    /// A request with an optional bearer token and JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        self.request(&request(method, path, token, body))
    }

    pub fn register(&self, username: &str, password: &str) -> Response {
        self.call(
            "POST",
            "/users",
            None,
            Some(&format!(
                r#"{{"username":"{username}","password":"{password}"}}"#
            )),
        )
    }

    pub fn login(&self, username: &str, password: &str) -> Response {
        self.call(
            "POST",
            "/sessions",
            None,
            Some(&format!(
                r#"{{"username":"{username}","password":"{password}"}}"#
            )),
        )
    }

    /// Log in; the session token.
    pub fn session(&self, username: &str, password: &str) -> String {
        let r = self.login(username, password);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    /// Create a category; its id.
    pub fn category(&self, token: &str, name: &str) -> u64 {
        let r = self.call(
            "POST",
            "/categories",
            Some(token),
            Some(&format!(r#"{{"name":"{name}"}}"#)),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_u64().unwrap()
    }

    /// `GET path` (with a token when given), which must answer 200: the
    /// ids listed and the `Link` to the next page.
    pub fn list(&self, path: &str, token: Option<&str>) -> (Vec<u64>, Option<String>) {
        let r = self.call("GET", path, token, None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        (ids(&r), next_link(&r))
    }

    /// Walk every page from `path`; the ids in order.
    pub fn walk(&self, path: &str, token: Option<&str>, mut between: impl FnMut()) -> Vec<u64> {
        let mut all = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next {
            let (ids, link) = self.list(&p, token);
            all.extend(ids);
            next = link;
            between();
        }
        all
    }

    /// Send every request on one connection, pipelined; the answers.
    pub fn pipelined(&self, requests: &[Vec<u8>]) -> Vec<Response> {
        let mut s = self.connect();
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut all = Vec::new();
        for r in requests {
            all.extend_from_slice(r);
        }
        s.write_all(&all).unwrap();
        let mut buf = Vec::new();
        (0..requests.len())
            .map(|_| read_response(&mut s, &mut buf).expect("an answer"))
            .collect()
    }
}

/// The bytes of a request with an optional bearer token and JSON body.
pub fn request(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Vec<u8> {
    request_with(method, path, token, body, &[])
}

/// [`request`] with extra header lines (`("Idempotency-Key", "k1")`).
pub fn request_with(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    req.into_bytes()
}

/// A `POST /todos` request with `body`.
pub fn create_request(token: &str, body: &str) -> Vec<u8> {
    request("POST", "/todos", Some(token), Some(body))
}

/// The ids of a list answer.
pub fn ids(r: &Response) -> Vec<u64> {
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

/// The target of `Link: <...>; rel="next"`, if any.
pub fn next_link(r: &Response) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(link[1..link.find('>').unwrap()].to_string())
}
