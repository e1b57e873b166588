//! Errors answered to clients: every one is a JSON body
//! `{"error":{"code":"...","message":"..."}}` with the right status
//! (docs/architecture.md §8), and says whether the connection must close.
//!
//! The constants here are the protocol's own (framing, limits, media type);
//! each program adds its own next to its routes (the server's `not_found`
//! of a todo, the balancer's 502/503/504/429) with [`HttpError::new`].

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    /// Stable, machine-readable code.
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Close after answering: the framing of what follows cannot be trusted.
    pub close: bool,
    /// `Allow` header value for 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` seconds for 503 and 429.
    pub retry_after: Option<u32>,
}

impl HttpError {
    /// The same error with `Retry-After: secs`.
    pub const fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// An error of `status`; `close` when the connection cannot go on.
    pub const fn new(status: u16, code: &'static str, message: &'static str, close: bool) -> Self {
        HttpError {
            status,
            code,
            message: Cow::Borrowed(message),
            close,
            allow: None,
            retry_after: None,
        }
    }

    pub const MALFORMED: HttpError = HttpError::new(
        400,
        "malformed_request",
        "the request could not be parsed as HTTP/1.1",
        true,
    );
    pub const VERSION: HttpError = HttpError::new(
        505,
        "http_version_not_supported",
        "only HTTP/1.0 and HTTP/1.1 are served",
        true,
    );
    pub const URI_TOO_LONG: HttpError = HttpError::new(
        414,
        "uri_too_long",
        "the request line is longer than the limit",
        true,
    );
    pub const HEADERS_TOO_LARGE: HttpError = HttpError::new(
        431,
        "headers_too_large",
        "the request headers are larger than the limit",
        true,
    );
    pub const PAYLOAD_TOO_LARGE: HttpError = HttpError::new(
        413,
        "payload_too_large",
        "the request body is larger than the limit",
        true,
    );
    pub const NOT_IMPLEMENTED_CODING: HttpError = HttpError::new(
        501,
        "transfer_coding_not_implemented",
        "only Transfer-Encoding: chunked is supported",
        true,
    );
    pub const EXPECTATION_FAILED: HttpError = HttpError::new(
        417,
        "expectation_failed",
        "only Expect: 100-continue is supported",
        true,
    );
    pub const HEADER_TIMEOUT: HttpError = HttpError::new(
        408,
        "request_timeout",
        "the request was not received in time",
        true,
    );
    pub const NOT_FOUND: HttpError = HttpError::new(404, "not_found", "no such resource", false);
    pub const LENGTH_REQUIRED: HttpError = HttpError::new(
        411,
        "length_required",
        "a body needs Content-Length or Transfer-Encoding: chunked",
        false,
    );

    /// An error whose message is made at run time (a field's name, a
    /// parser's words).
    pub fn with_message(status: u16, code: &'static str, message: String) -> HttpError {
        HttpError {
            message: Cow::Owned(message),
            ..HttpError::new(status, code, "", false)
        }
    }

    /// 400 for an RFC 9112 framing error; the connection closes.
    pub fn framing(message: &'static str) -> HttpError {
        HttpError::new(400, "bad_framing", message, true)
    }

    pub fn method_not_allowed(allow: &'static str) -> HttpError {
        HttpError {
            allow: Some(allow),
            ..HttpError::new(
                405,
                "method_not_allowed",
                "method not allowed on this resource",
                false,
            )
        }
    }

    pub fn unavailable(message: &'static str, retry_after: u32) -> HttpError {
        HttpError {
            retry_after: Some(retry_after),
            ..HttpError::new(503, "unavailable", message, false)
        }
    }

    pub fn internal(message: &'static str) -> HttpError {
        HttpError::new(500, "internal", message, false)
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        sonic_rs::to_vec(&Outer {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_default()
    }
}
