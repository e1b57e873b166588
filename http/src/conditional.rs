//! Conditional GETs (RFC 9110 §13) of a representation named by a version
//! number: its validator and freshness headers ([`version_headers`]), and
//! whether a request's `If-None-Match` names it ([`not_modified`]), so it is
//! answered `304` without its body.

/// `\r\nETag: W/"<version>"\r\nCache-Control: ...` for a representation
/// made from `version`: a `public` one may be kept by shared caches for a
/// second; one that depends on the token (`Authorization`) only by the
/// client.
pub fn version_headers(version: u64, public: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(80);
    h.extend_from_slice(b"\r\nETag: W/\"");
    h.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
    h.extend_from_slice(if public {
        b"\"\r\nCache-Control: public, max-age=1".as_slice()
    } else {
        b"\"\r\nCache-Control: private, max-age=1\r\nVary: Authorization".as_slice()
    });
    h
}

/// Whether an `If-None-Match` value names the representation tagged
/// `version` (weak comparison, RFC 9110 §13.1.2; `*` matches any).
pub fn not_modified(if_none_match: Option<&[u8]>, version: u64) -> bool {
    let Some(value) = if_none_match else {
        return false;
    };
    let mut n = itoa::Buffer::new();
    let want = n.format(version).as_bytes();
    value.split(|&b| b == b',').any(|tag| {
        let tag = tag.trim_ascii();
        let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
        tag == b"*"
            || (tag.len() == want.len() + 2
                && tag[0] == b'"'
                && tag[tag.len() - 1] == b'"'
                && &tag[1..tag.len() - 1] == want)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(!not_modified(None, 7));
        assert!(not_modified(Some(b"W/\"7\""), 7));
        assert!(not_modified(Some(b"\"7\""), 7));
        assert!(not_modified(Some(b"\"1\", W/\"7\""), 7));
        assert!(not_modified(Some(b"*"), 7));
        assert!(!not_modified(Some(b"W/\"71\""), 7));
        assert!(!not_modified(Some(b"7"), 7));
    }

    #[test]
    fn private_answers_vary_on_the_token() {
        let public = version_headers(42, true);
        assert_eq!(
            public,
            b"\r\nETag: W/\"42\"\r\nCache-Control: public, max-age=1"
        );
        let private = String::from_utf8(version_headers(42, false)).unwrap();
        assert!(private.ends_with("private, max-age=1\r\nVary: Authorization"));
    }
}
