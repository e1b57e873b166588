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
