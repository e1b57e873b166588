//! The server's own error answers, beside the protocol's in
//! [`todo_http::HttpError`].

use todo_http::HttpError;

pub const TODO_NOT_FOUND: HttpError =
    HttpError::new(404, "not_found", "no todo with that id", false);
pub const COMMAND_NOT_FOUND: HttpError =
    HttpError::new(404, "not_found", "no command with that id is known", false);
pub const BAD_LIMIT: HttpError = HttpError::new(
    400,
    "invalid_limit",
    "limit must be an integer from 1 to 1000",
    false,
);
pub const UNSUPPORTED_MEDIA_TYPE: HttpError = HttpError::new(
    415,
    "unsupported_media_type",
    "the body must be application/json",
    false,
);
pub const BODY_REQUIRED: HttpError = HttpError::new(
    400,
    "body_required",
    "this request needs a JSON body",
    false,
);
/// 503 while draining, before the first snapshot, or (distributed path)
/// before the read model is loaded; like every 503, with `Retry-After`.
pub const NOT_READY: HttpError =
    HttpError::new(503, "not_ready", "the service is not ready", false).with_retry_after(1);

/// 400: the body is not JSON.
pub fn bad_json(message: String) -> HttpError {
    HttpError::with_message(400, "invalid_json", message)
}

/// 422: JSON, but not fields a todo accepts.
pub fn invalid_field(message: String) -> HttpError {
    HttpError::with_message(422, "invalid_field", message)
}

/// 401: no token, or one that does not verify.
pub fn unauthorized(message: String) -> HttpError {
    HttpError::with_message(401, "unauthorized", message)
}

/// 400: a malformed `Idempotency-Key`.
pub const INVALID_IDEMPOTENCY_KEY: HttpError = HttpError::new(
    400,
    "invalid_header",
    "Idempotency-Key must be 1-255 visible ASCII characters",
    false,
);

/// A read the backend could not answer now (PostgreSQL away, the apply
/// thread stopping): 503, never a false 404. Made by the backends
/// (`embedded/`, `distributed/`), answered by the routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl Unavailable {
    pub fn answer(self) -> HttpError {
        HttpError::unavailable("the store cannot be read now", 1)
    }
}
