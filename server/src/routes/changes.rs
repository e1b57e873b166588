//! `GET /todos/changes`: a subscriber's checks (its parameters, its token,
//! room on this core) before its stream starts (`crate::feed`).

use todo_http::http1::{Method, Request};
use todo_http::HttpError;

use super::{Action, Reply, Routed};
use crate::errors;
use crate::feed::Refusal;
use crate::metrics::Route;
use crate::per_core::Core;
use crate::query::{parse_position, parse_subscription};

/// 503: this core has `--feed-max` subscribers.
const FULL: HttpError = HttpError::new(
    503,
    "feed_full",
    "this server has as many change-feed subscribers as it takes; retry shortly",
    false,
)
.with_retry_after(5);

/// 503: a distributed server whose follower has not loaded the state.
const STARTING: HttpError =
    HttpError::new(503, "not_ready", "the change feed is starting", false).with_retry_after(1);

pub fn subscribe(core: &Core, req: &Request<'_>, out: &mut Vec<u8>, reply: Reply<'_>) -> Routed {
    let refuse =
        |err: &HttpError, out: &mut Vec<u8>| Action::Done(Route::Changes, reply.error(out, err));
    if req.method != Method::Get {
        return refuse(&HttpError::method_not_allowed("GET"), out).into();
    }
    let viewer = core.auth.viewer(req.authorization);
    let mut sub = match parse_subscription(req.query) {
        Ok(sub) => sub,
        Err(e) => return refuse(&e, out).by(viewer),
    };
    // An EventSource reconnecting says where it was; that wins over the
    // `since=` of the address it reconnects to.
    if let Some(id) = req.last_event_id {
        let id = std::str::from_utf8(id).unwrap_or("");
        match parse_position("Last-Event-ID", id) {
            Ok(at) => sub.since = Some(at),
            Err(e) => return refuse(&e, out).by(viewer),
        }
    }
    if sub.mine {
        match &viewer {
            Some(subject) => sub.owner = Some(subject.to_string()),
            None => {
                let e = errors::unauthorized(core.auth.refusal(req.authorization));
                return refuse(&e, out).into();
            }
        }
    }
    match core.feed.admit() {
        Ok(()) => Action::Stream(Box::new(sub)).by(viewer),
        Err(Refusal::Full) => refuse(&FULL, out).by(viewer),
        Err(Refusal::Starting) => refuse(&STARTING, out).by(viewer),
    }
}
