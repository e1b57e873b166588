//! `GET /commands/{id}`: what became of an accepted write.

use todo_model::Outcome;

use super::Reply;
use crate::backend::{Backend, Status};
use crate::errors;

/// 200 `{"command_id":..,"status":"pending"}` (accepted by any server, not
/// applied yet), `{"command_id":..,"status":"applied"}` or
/// `{"command_id":..,"status":"rejected","reason":"not_found"}`; 404 when
/// unknown (never accepted, or older than what is kept); 503 when the
/// store cannot be read now.
pub async fn outcome(backend: &Backend, id: u64, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    let outcome = match backend.status(id).await {
        Ok(Some(Status::Done(outcome))) => outcome,
        Ok(Some(Status::Pending)) => {
            let body = format!(r#"{{"command_id":{id},"status":"pending"}}"#);
            // Polled: never cached.
            reply.no_store(out, 200, body.as_bytes());
            return 200;
        }
        Ok(None) => return reply.error(out, &errors::COMMAND_NOT_FOUND),
        Err(unavailable) => return reply.error(out, &unavailable.answer()),
    };
    let body = match outcome {
        Outcome::Applied => format!(r#"{{"command_id":{id},"status":"applied"}}"#),
        Outcome::Rejected(r) => format!(
            r#"{{"command_id":{id},"status":"rejected","reason":"{}"}}"#,
            r.as_str()
        ),
    };
    reply.json(out, 200, &[body.as_bytes()]);
    200
}
