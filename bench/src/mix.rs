//! The request mix: every kind of request rendered once into bytes, with the
//! status its response must carry.

use anyhow::{bail, Context};

use crate::target::Target;

/// One kind of request.
#[derive(Clone, Debug)]
pub struct Kind {
    pub bytes: Vec<u8>,
    /// The status a correct response has (200 for reads, 202 for writes).
    pub expect: u16,
    /// May be sent again when its connection closed before its response
    /// (RFC 9110 §9.2.2): GET yes, POST no.
    pub idempotent: bool,
    /// Cumulative weight bound, for sampling.
    upto: u32,
}

#[derive(Clone, Debug)]
pub struct Mix {
    pub kinds: Vec<Kind>,
    total: u32,
}

impl Mix {
    /// GETs of the target's path (with the bearer token when given: lists
    /// such as `mine=true` depend on it).
    pub fn single_get(target: &Target, token: Option<&str>) -> Mix {
        Mix {
            kinds: vec![Kind {
                bytes: get(&target.host, &target.path, token),
                expect: 200,
                idempotent: true,
                upto: 1,
            }],
            total: 1,
        }
    }

    /// `WEIGHT:METHOD PATH,...`
    pub fn parse(spec: &str, target: &Target, token: Option<&str>) -> anyhow::Result<Mix> {
        let mut kinds = Vec::new();
        let mut total = 0u32;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (weight, request) = entry
                .split_once(':')
                .with_context(|| format!("mix entry {entry:?} is not WEIGHT:METHOD PATH"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .with_context(|| format!("weight in {entry:?}"))?;
            let (method, path) = request
                .trim()
                .split_once(' ')
                .with_context(|| format!("mix entry {entry:?} needs METHOD PATH"))?;
            let (bytes, expect) = match method {
                "GET" => (get(&target.host, path, token), 200),
                "POST" => {
                    let token = token.context("a POST in the mix needs --token (or TODO_TOKEN)")?;
                    (post(&target.host, path, token), 202)
                }
                other => bail!("mix method {other} is not supported (GET, POST)"),
            };
            total += weight;
            kinds.push(Kind {
                bytes,
                expect,
                idempotent: method == "GET",
                upto: total,
            });
        }
        if total == 0 {
            bail!("the mix is empty");
        }
        Ok(Mix { kinds, total })
    }

    /// The kind for a uniform random `r`.
    #[inline]
    pub fn pick(&self, r: u64) -> usize {
        if self.kinds.len() == 1 {
            return 0;
        }
        let x = (r % u64::from(self.total)) as u32;
        self.kinds.iter().position(|k| x < k.upto).unwrap_or(0)
    }
}

fn get(host: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    match token {
        Some(t) => {
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\n\r\n")
        }
        None => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    }
    .into_bytes()
}

fn post(host: &str, path: &str, token: &str) -> Vec<u8> {
    let body = r#"{"public":true,"title":"bench","description":"written by todo-bench"}"#;
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::parse("http://127.0.0.1:9/todos?limit=1").unwrap()
    }

    #[test]
    fn mix_weights_and_expectations() {
        let m = Mix::parse(
            "3:GET /todos?limit=1, 1:POST /todos",
            &target(),
            Some("tok"),
        )
        .unwrap();
        assert_eq!(m.kinds.len(), 2);
        assert_eq!((m.kinds[0].expect, m.kinds[1].expect), (200, 202));
        let posts = (0..4000u64).filter(|r| m.pick(*r) == 1).count();
        assert_eq!(posts, 1000);
        assert!(
            String::from_utf8_lossy(&m.kinds[1].bytes).contains("Authorization: Bearer tok\r\n")
        );
        assert!(Mix::parse("1:POST /todos", &target(), None).is_err());
        assert!(Mix::parse("1:PATCH /todos", &target(), None).is_err());
        assert!(Mix::parse("x:GET /", &target(), None).is_err());
    }
}
