//! `POST /users`, `POST /sessions`, `GET /users/me` (docs/architecture.md §9).
//!
//! Registration is a command like any write (`Op::CreateUser`, through the
//! command log or Kafka, applied once by the one rule), but its answer waits
//! for the outcome: 201, or 409 when the name was taken first. The password
//! is hashed on the `todo-auth` threads ([`crate::accounts`]) before the
//! command is made; only the hash is written anywhere.

use std::net::IpAddr;
use std::rc::Rc;

use serde::Deserialize;
use todo_model::account::{check_password, check_username, render_user};
use todo_model::{Fields, Op, Outcome, Rejection, TodoCommand};

use super::{json_body, Reply};
use crate::accounts::Login;
use crate::backend::Backend;
use crate::errors;
use crate::per_core::{Auth, Writes};
use crate::read_model::Shared;
use todo_http::http1::Request;
use todo_http::HttpError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub const USERNAME_TAKEN: HttpError =
    HttpError::new(409, "username_taken", "that username is taken", false);
pub const BAD_CREDENTIALS: HttpError = HttpError::new(
    401,
    "invalid_credentials",
    "wrong username or password",
    false,
);
pub const NO_ACCOUNT: HttpError = HttpError::new(
    404,
    "not_found",
    "no account is registered for this token's subject",
    false,
);

/// `POST /users`: check the body; the hashing and the command follow.
pub fn register(model: &Shared, req: &Request<'_>) -> Result<Credentials, HttpError> {
    let c: Credentials = json_body(req, "a user")?;
    check_username(&c.username).map_err(|e| errors::invalid_field(e.to_string()))?;
    check_password(&c.password).map_err(|e| errors::invalid_field(e.to_string()))?;
    // Taken already, as far as this server knows: say so without hashing.
    // (A name taken meanwhile elsewhere is refused by the apply rule.)
    if model.read().user(&c.username).is_some() {
        return Err(USERNAME_TAKEN);
    }
    Ok(c)
}

pub async fn complete_register(
    auth: &Auth,
    writes: &Writes,
    c: Credentials,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
    trace: &crate::trace::Trace,
) -> u16 {
    let Some(hash) = auth.accounts.hash(c.password).await else {
        return reply.error(out, &HttpError::unavailable("password hashing stopped", 1));
    };
    let cmd = TodoCommand {
        command_id: writes.next_id(),
        op: Op::CreateUser,
        todo_id: writes.next_id(),
        user: c.username,
        fields: Fields::default(),
        issued_at: todo_model::now_ms(),
        name: None,
        password_hash: Some(hash),
        idempotency: None,
    };
    let (id, command_id) = (cmd.todo_id, cmd.command_id);
    let username = cmd.user.clone();
    match writes.backend.apply(cmd, Some(trace)).await {
        Ok(Some(Outcome::Applied)) => {
            let mut body = Vec::with_capacity(64);
            render_user(id, &username, &mut body);
            reply.with_headers(out, 201, b"\r\nLocation: /users/me", &[&body]);
            201
        }
        Ok(Some(Outcome::Rejected(Rejection::UsernameTaken))) => reply.error(out, &USERNAME_TAKEN),
        Ok(Some(Outcome::Rejected(r))) => reply.error(
            out,
            &HttpError::with_message(
                409,
                "rejected",
                format!("registration refused: {}", r.as_str()),
            ),
        ),
        Ok(None) => super::todos::accepted(Ok((command_id, id)), out, reply),
        Err(e) => reply.error(out, &e),
    }
}

/// `POST /sessions`: the body only; every login then takes the same path.
pub fn login(req: &Request<'_>) -> Result<Credentials, HttpError> {
    json_body(req, "credentials")
}

pub async fn complete_login(
    auth: &Auth,
    backend: &Backend,
    model: &Shared,
    c: Credentials,
    peer: Option<IpAddr>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> u16 {
    let user = match backend.user(model, &c.username).await {
        Ok(user) => user,
        Err(unavailable) => return reply.error(out, &unavailable.answer()),
    };
    let login = auth
        .accounts
        .login(user, c.username.clone(), c.password, peer)
        .await;
    match login {
        Some(Login::Ok(_)) => {
            let Ok(token) = auth.issue(&c.username) else {
                return reply.error(out, &HttpError::internal("cannot sign a token"));
            };
            let body = format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}}}"#,
                auth.session_ttl.as_secs()
            );
            reply.no_store(out, 200, body.as_bytes());
            200
        }
        Some(Login::Refused) => reply.error(out, &BAD_CREDENTIALS),
        Some(Login::Limited(secs)) => reply.error(
            out,
            &HttpError::new(
                429,
                "too_many_attempts",
                "too many failed logins; wait before trying again",
                false,
            )
            .with_retry_after(secs.min(u64::from(u32::MAX)) as u32),
        ),
        None => reply.error(out, &HttpError::unavailable("password checks stopped", 1)),
    }
}

/// `GET /users/me`: the token's account.
pub async fn me(
    backend: &Backend,
    model: &Shared,
    subject: Rc<str>,
    out: &mut Vec<u8>,
    reply: Reply<'_>,
) -> u16 {
    match backend.user(model, &subject).await {
        Ok(Some(user)) => {
            let mut body = Vec::with_capacity(64);
            render_user(user.id, &user.username, &mut body);
            reply.json(out, 200, &[&body]);
            200
        }
        Ok(None) => reply.error(out, &NO_ACCOUNT),
        Err(unavailable) => reply.error(out, &unavailable.answer()),
    }
}
