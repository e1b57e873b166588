//! todo-lb's edge cache (`--cache on`) on any upstream answer and any request
//! head: holding, looking up, `Vary`, `If-None-Match`; it never panics, and
//! what it answers from the cache is a response that frames to its end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use todo_http::http1::{parse_response, ParsedResponse};
use todo_http::DateCache;
use todo_lb::cache::{probe, EdgeCache, Lookup};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the rest: a request head, then a response.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * data.len() / 255).min(data.len());
    let (head, response) = data.split_at(cut);
    // The proxy holds exactly one framed response.
    let response = match parse_response(response, false, 1 << 20) {
        Ok(ParsedResponse::Complete { len, .. }) => &response[..len],
        _ => return,
    };
    let target = head.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
    let Some(p) = probe(true, false, target, head) else {
        return;
    };
    let cache = EdgeCache::new(64 * 1024);
    let date = DateCache::default();
    let mut out = Vec::new();
    let Lookup::Fetch(lead) = cache.lookup(p, head, &date, &mut out) else {
        panic!("an empty cache fetches");
    };
    cache.store(&lead, head, response);
    drop(lead);
    out.clear();
    let answered = matches!(
        cache.lookup(p, head, &date, &mut out),
        Lookup::Answered { .. }
    );
    if answered {
        // What the cache answers frames whole, as the client will read it.
        match parse_response(&out, false, 1 << 20) {
            Ok(ParsedResponse::Complete { len, .. }) => assert_eq!(len, out.len()),
            other => panic!("a held answer that does not frame: {other:?}"),
        }
    }
});
