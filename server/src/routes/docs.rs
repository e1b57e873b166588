//! `GET /openapi.json`, `GET /docs` and `GET /docs/{file}`: the API's
//! contract and its interactive page; `GET /app` and `GET /app/{file}`: the
//! todo page (`server/app/`: HTML, script and style of its own, no build
//! step), under a policy that runs no inline script.
//!
//! The contract is `server/openapi.json` (OpenAPI 3.1), written by hand
//! beside the routes and built into the binary; `server/tests/openapi.rs`
//! holds the dispatcher to it, and `scripts/contract.sh` runs schemathesis
//! against it. The page is Swagger UI: its HTML is made here, and every
//! file it loads comes from the `swagger-ui-redist` crate, which ships them
//! inside the crate, so the page needs nothing but this server (no CDN,
//! works offline).
//!
//! None of this is on a hot path: each answer is a copy of bytes made once
//! per process ([`Files`]). Every answer carries a strong `ETag` (the
//! content's CRC-32C) and `Cache-Control`, and an `If-None-Match` naming
//! the tag answers `304`.

use std::sync::OnceLock;

use swagger_ui_redist::{SwaggerUi, SwaggerUiStaticFile};

use super::Reply;
use todo_http::conditional::not_modified;
use todo_http::http1::{Method, Request};
use todo_http::response::{self, Persist};
use todo_http::HttpError;

/// The contract, as served.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Where the page's files are served: `/docs/` + the crate's file name.
const FILES_PREFIX: &str = "/docs/";
/// Seconds a client may keep the contract and the page before it
/// revalidates (a new binary may bring a new contract).
const PAGE_MAX_AGE: &str = "60";
/// Seconds for the page's files (they change only with the crate).
const FILE_MAX_AGE: &str = "3600";
/// The page may load and ask only this server: scripts and styles from
/// here (inline too: Swagger UI's start-up script and its styles), images
/// from here or inline `data:` URIs.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     frame-ancestors 'none'";

/// The todo page runs its own files only: no inline script or style, no
/// other origin, and asks nothing but this server.
const APP_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";
/// Where the todo page's files are served.
const APP_PREFIX: &str = "/app/";

/// One servable body and its headers.
struct File {
    path: &'static str,
    content_type: &'static str,
    max_age: &'static str,
    body: &'static [u8],
    /// Its `Content-Security-Policy` (pages only).
    policy: Option<&'static str>,
    /// CRC-32C of the body, the `ETag` value.
    tag: u64,
}

/// Everything this module serves, made on first use and shared by every
/// core (read-only, and the only state here).
struct Files(Vec<File>);

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut ui = SwaggerUi::new();
        ui.title("Todo API");
        for &(file, _) in SwaggerUi::static_files() {
            ui.override_file_path(file, format!("{FILES_PREFIX}{}", file.file_name()));
        }
        ui.config()
            .urls(["/openapi.json"])
            .try_it_out_enabled(true)
            .display_request_duration(true)
            .filter(true)
            .persist_authorization(false)
            // Swagger UI would otherwise ask an online validator for a
            // badge.
            .validator_url("none");
        let page = ui
            .serve()
            .expect("the Swagger UI configuration serializes")
            .leak();
        let mut all = vec![
            file(
                "/openapi.json",
                "application/json",
                PAGE_MAX_AGE,
                OPENAPI.as_bytes(),
            ),
            File {
                policy: Some(PAGE_POLICY),
                ..file(
                    "/docs",
                    "text/html; charset=utf-8",
                    PAGE_MAX_AGE,
                    page.as_bytes(),
                )
            },
            File {
                policy: Some(APP_POLICY),
                ..file(
                    "/app",
                    "text/html; charset=utf-8",
                    PAGE_MAX_AGE,
                    include_bytes!("../../app/index.html"),
                )
            },
            file(
                "/app/app.js",
                "text/javascript; charset=utf-8",
                PAGE_MAX_AGE,
                include_bytes!("../../app/app.js"),
            ),
            file(
                "/app/app.css",
                "text/css; charset=utf-8",
                PAGE_MAX_AGE,
                include_bytes!("../../app/app.css"),
            ),
            file(
                "/app/icon.svg",
                "image/svg+xml",
                PAGE_MAX_AGE,
                include_bytes!("../../app/icon.svg"),
            ),
        ];
        for &(kind, body) in SwaggerUi::static_files() {
            let path = format!("{FILES_PREFIX}{}", kind.file_name()).leak();
            all.push(file(path, content_type(kind), FILE_MAX_AGE, body));
        }
        Files(all)
    })
}

fn file(
    path: &'static str,
    content_type: &'static str,
    max_age: &'static str,
    body: &'static [u8],
) -> File {
    File {
        path,
        content_type,
        max_age,
        body,
        policy: None,
        tag: u64::from(crc32c::crc32c(body)),
    }
}

fn content_type(kind: SwaggerUiStaticFile) -> &'static str {
    match kind.file_name().rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        // RFC 9239: JavaScript is text/javascript.
        Some("js") => "text/javascript; charset=utf-8",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// Whether `path` is one this module answers (found or not).
pub fn owns(path: &str) -> bool {
    path == "/openapi.json"
        || path == "/docs"
        || path.starts_with(FILES_PREFIX)
        || path == "/app"
        || path.starts_with(APP_PREFIX)
}

/// Answer a request for one of [`owns`]'s paths; returns the status.
pub fn serve(req: &Request<'_>, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    if !matches!(req.method, Method::Get | Method::Head) {
        return reply.error(out, &HttpError::method_not_allowed(super::READ_ALLOW));
    }
    let Some(f) = files().0.iter().find(|f| f.path == req.path) else {
        return reply.error(out, &HttpError::NOT_FOUND);
    };
    let mut extra = Vec::with_capacity(320);
    extra.extend_from_slice(b"\r\nETag: \"");
    extra.extend_from_slice(itoa::Buffer::new().format(f.tag).as_bytes());
    extra.extend_from_slice(b"\"\r\nCache-Control: public, max-age=");
    extra.extend_from_slice(f.max_age.as_bytes());
    extra.extend_from_slice(b"\r\nX-Content-Type-Options: nosniff");
    if let Some(policy) = f.policy {
        extra.extend_from_slice(b"\r\nContent-Security-Policy: ");
        extra.extend_from_slice(policy.as_bytes());
    }
    if not_modified(req.if_none_match, f.tag) {
        reply.with_headers(out, 304, &extra, &[]);
        return 304;
    }
    if f.content_type == "application/json" {
        reply.with_headers(out, 200, &extra, &[f.body]);
        return 200;
    }
    // Not JSON: `response::append` writes only JSON's and the metrics'
    // media types, so this head is written here.
    out.extend_from_slice(response::status_line(200));
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(&reply.date.get());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(f.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(f.body.len()).as_bytes());
    match reply.persist {
        Persist::KeepAlive => {}
        Persist::KeepAlive10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persist::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(&extra);
    out.extend_from_slice(b"\r\n\r\n");
    if !reply.head_only {
        out.extend_from_slice(f.body);
    }
    200
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_is_openapi_3_1_json() {
        let v: sonic_rs::Value = sonic_rs::from_str(OPENAPI).expect("openapi.json parses");
        use sonic_rs::JsonValueTrait;
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1."));
    }

    #[test]
    fn the_todo_page_loads_only_its_own_files() {
        let page = files().0.iter().find(|f| f.path == "/app").unwrap();
        let html = std::str::from_utf8(page.body).unwrap();
        for (at, _) in html
            .match_indices("src=\"")
            .chain(html.match_indices("href=\""))
        {
            let url = &html[at..].split('"').nth(1).unwrap();
            if url.starts_with('#') {
                continue;
            }
            assert!(url.starts_with(APP_PREFIX), "{url}");
            assert!(files().0.iter().any(|f| f.path == *url), "{url} is served");
        }
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "nothing inline"
        );
        assert_eq!(page.policy, Some(APP_POLICY));
    }

    #[test]
    fn the_page_loads_only_this_server() {
        let page = files().0.iter().find(|f| f.path == "/docs").unwrap();
        let html = std::str::from_utf8(page.body).unwrap();
        assert!(html.contains("/openapi.json"), "{html}");
        for (at, _) in html
            .match_indices("src=\"")
            .chain(html.match_indices("href=\""))
        {
            let url = &html[at..].split('"').nth(1).unwrap();
            assert!(url.starts_with(FILES_PREFIX), "{url} in {html}");
            assert!(files().0.iter().any(|f| f.path == *url), "{url} is served");
        }
        assert!(!html.contains("//"), "no absolute URL: {html}");
    }
}
