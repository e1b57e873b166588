//! `POST /users`, `POST /sessions`, `GET /users/me` (design section 11).
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
use crate::errors;
use crate::per_core::Core;
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
pub fn register(core: &Core, req: &Request<'_>) -> Result<Credentials, HttpError> {
    let c: Credentials = json_body(req, "a user")?;
    check_username(&c.username).map_err(|e| errors::invalid_field(e.to_string()))?;
    check_password(&c.password).map_err(|e| errors::invalid_field(e.to_string()))?;
    // Taken already, as far as this server knows: say so without hashing.
    // (A name taken meanwhile elsewhere is refused by the apply rule.)
    if core.services.model.read().user(&c.username).is_some() {
        return Err(USERNAME_TAKEN);
    }
    Ok(c)
}

pub async fn complete_register(
    core: &Core,
    c: Credentials,
    out: &mut Vec<u8>,
    reply: Reply,
    trace: &crate::trace::Trace,
) -> u16 {
    let Some(hash) = core.services.accounts.hash(c.password).await else {
        return reply.error(
            core,
            out,
            &HttpError::unavailable("password hashing stopped", 1),
        );
    };
    let cmd = TodoCommand {
        command_id: core.next_id(),
        op: Op::CreateUser,
        todo_id: core.next_id(),
        user: c.username,
        fields: Fields::default(),
        issued_at: todo_model::now_ms(),
        name: None,
        password_hash: Some(hash),
        idempotency: None,
    };
    let (id, command_id) = (cmd.todo_id, cmd.command_id);
    let username = cmd.user.clone();
    match core.backend.apply(cmd, Some(trace)).await {
        Ok(Some(Outcome::Applied)) => {
            let mut body = Vec::with_capacity(64);
            render_user(id, &username, &mut body);
            reply.with_headers(core, out, 201, b"\r\nLocation: /users/me", &[&body]);
            201
        }
        Ok(Some(Outcome::Rejected(Rejection::UsernameTaken))) => {
            reply.error(core, out, &USERNAME_TAKEN)
        }
        Ok(Some(Outcome::Rejected(r))) => reply.error(
            core,
            out,
            &HttpError::with_message(
                409,
                "rejected",
                format!("registration refused: {}", r.as_str()),
            ),
        ),
        Ok(None) => super::todos::accepted(core, Ok((command_id, id)), out, reply),
        Err(e) => reply.error(core, out, &e),
    }
}

/// `POST /sessions`: the body only; every login then takes the same path.
pub fn login(req: &Request<'_>) -> Result<Credentials, HttpError> {
    json_body(req, "credentials")
}

pub async fn complete_login(
    core: &Core,
    c: Credentials,
    peer: Option<IpAddr>,
    out: &mut Vec<u8>,
    reply: Reply,
) -> u16 {
    let user = match core.backend.user(&core.services.model, &c.username).await {
        Ok(user) => user,
        Err(unavailable) => return reply.error(core, out, &unavailable.answer()),
    };
    let login = core
        .services
        .accounts
        .login(user, c.username.clone(), c.password, peer)
        .await;
    match login {
        Some(Login::Ok(_)) => {
            let ttl = core.config.session_ttl;
            let token = crate::auth::issue(
                &core.services.secret,
                &core.services.rules,
                &c.username,
                ttl,
            );
            let Ok(token) = token else {
                return reply.error(core, out, &HttpError::internal("cannot sign a token"));
            };
            let body = format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{}}}"#,
                ttl.as_secs()
            );
            reply.no_store(core, out, 200, body.as_bytes());
            200
        }
        Some(Login::Refused) => reply.error(core, out, &BAD_CREDENTIALS),
        Some(Login::Limited(secs)) => reply.error(
            core,
            out,
            &HttpError::new(
                429,
                "too_many_attempts",
                "too many failed logins; wait before trying again",
                false,
            )
            .with_retry_after(secs.min(u64::from(u32::MAX)) as u32),
        ),
        None => reply.error(
            core,
            out,
            &HttpError::unavailable("password checks stopped", 1),
        ),
    }
}

/// `GET /users/me`: the token's account.
pub async fn me(core: &Core, subject: Rc<str>, out: &mut Vec<u8>, reply: Reply) -> u16 {
    match core.backend.user(&core.services.model, &subject).await {
        Ok(Some(user)) => {
            let mut body = Vec::with_capacity(64);
            render_user(user.id, &user.username, &mut body);
            reply.json(core, out, 200, &[&body]);
            200
        }
        Ok(None) => reply.error(core, out, &NO_ACCOUNT),
        Err(unavailable) => reply.error(core, out, &unavailable.answer()),
    }
}
