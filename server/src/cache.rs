//! Per-core caches for the product API's reads (docs/architecture.md §9): the
//! common app queries are answered from here at close to hot-path cost.
//!
//! - [`TokenCache`]: a verified bearer token's subject until it expires, so
//!   a client's repeated requests cost one HMAC, not one each.
//! - [`PageCache`]: rendered pages of `GET /todos?...` keyed by the query
//!   string (and the subject for `mine=true`), valid while the read model's
//!   version is the one they were rendered at.
//!
//! Both are `!Send`, one per core, bounded, and emptied whole when full:
//! simple, and a full cache of distinct queries is rare enough that a
//! smarter eviction would not pay. Keys are hashed with aHash (randomly
//! keyed, so clients cannot choose colliding keys): a token is ~200 bytes,
//! and SipHash over it and the page key was a tenth of a cached answer's
//! CPU.

use std::collections::HashMap;
use std::rc::Rc;

use crate::auth::{TokenError, Verifier};

/// Tokens kept per core.
pub const TOKENS_MAX: usize = 4096;
/// Pages kept per core.
pub const PAGES_MAX: usize = 4096;
/// Bytes of pages kept per core.
pub const PAGE_BYTES_MAX: usize = 32 << 20;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Default)]
pub struct TokenCache {
    tokens: Map<Box<[u8]>, (Rc<str>, u64)>,
}

impl TokenCache {
    /// The subject of the `Authorization` value, verifying it only when it
    /// is not cached or has expired.
    pub fn subject(
        &mut self,
        verifier: &Verifier,
        authorization: Option<&[u8]>,
        now_secs: u64,
    ) -> Result<Rc<str>, TokenError> {
        let value = authorization.ok_or(TokenError::Missing)?;
        if let Some((sub, exp)) = self.tokens.get(value) {
            if now_secs < *exp {
                return Ok(sub.clone());
            }
        }
        let (sub, exp) = verifier.verify_claims(Some(value))?;
        let sub: Rc<str> = sub.into();
        if self.tokens.len() >= TOKENS_MAX {
            self.tokens.clear();
        }
        self.tokens.insert(value.into(), (sub.clone(), exp));
        Ok(sub)
    }
}

/// A rendered page and what it was rendered from.
pub struct CachedPage {
    pub version: u64,
    pub body: Rc<[u8]>,
    /// `ETag`, `Cache-Control` and, when there is a next page, `Link`.
    pub headers: Rc<[u8]>,
}

#[derive(Default)]
pub struct PageCache {
    pages: Map<Box<[u8]>, Rc<CachedPage>>,
    bytes: usize,
}

impl PageCache {
    /// The page for `key` if it was rendered at `version`.
    #[inline]
    pub fn get(&self, key: &[u8], version: u64) -> Option<&Rc<CachedPage>> {
        self.pages.get(key).filter(|p| p.version == version)
    }

    pub fn put(&mut self, key: Box<[u8]>, page: Rc<CachedPage>) {
        let size = key.len() + page.body.len();
        if self.pages.len() >= PAGES_MAX || self.bytes + size > PAGE_BYTES_MAX {
            self.pages.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        let key_len = key.len();
        if let Some(old) = self.pages.insert(key, page) {
            self.bytes -= key_len + old.body.len();
        }
    }
}

/// Write into `key` the cache key of a query: the query string, plus the
/// token's subject when the request carries a valid one (a page that
/// depends on it must not be answered to anyone else).
pub fn page_key(key: &mut Vec<u8>, query: &str, subject: Option<&str>) {
    key.clear();
    key.extend_from_slice(query.as_bytes());
    if let Some(s) = subject {
        key.push(0);
        key.extend_from_slice(s.as_bytes());
    }
}
