//! An `http://HOST[:PORT]/PATH` target, resolved: what todo-bench and
//! todo-feed are pointed at.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;

/// `http://host:port/path?query`, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} has no address"))?;
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:9/todos?limit=1").unwrap();
        assert_eq!(t.addr.port(), 9);
        assert_eq!(t.path, "/todos?limit=1");
        assert!(Target::parse("https://x/").is_err());
    }
}
