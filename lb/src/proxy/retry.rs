//! The retry policy: after an upstream fails a batch, which of its requests
//! may be sent to another upstream, how many upstreams a batch may try, and
//! what a request that will not be sent (again) is answered.
//!
//! A request that never reached the upstream may always go elsewhere; one
//! that did only if it is idempotent (RFC 9110 §9.2.2), since the upstream
//! may have acted on it. The failure's class (`failure.rs`) says which it
//! was. Pure decisions: `forward.rs` applies them.

use std::net::SocketAddr;

use todo_http::http1::Method;
use todo_http::HttpError;

use crate::failure::Failure;

static BAD_GATEWAY: HttpError = HttpError::new(
    502,
    "bad_gateway",
    "the upstream failed before answering and the request cannot be sent again safely",
    false,
);
static GATEWAY_TIMEOUT: HttpError = HttpError::new(
    504,
    "gateway_timeout",
    "the upstream did not answer in time",
    false,
);
static NO_UPSTREAM: HttpError = HttpError::new(
    503,
    "no_upstream",
    "no healthy upstream is available",
    false,
)
.with_retry_after(1);

/// Sending the request twice has the effect of sending it once (RFC 9110
/// §9.2.2): GET, HEAD, PUT, DELETE.
#[inline]
pub fn idempotent(method: Method) -> bool {
    matches!(
        method,
        Method::Get | Method::Head | Method::Put | Method::Delete
    )
}

/// THE retry rule: a request that never reached the upstream may go to
/// another one; one that did may only if it is idempotent, since the
/// upstream may have acted on it.
#[inline]
pub fn may_resend(failure: Failure, idempotent: bool) -> bool {
    failure == Failure::Connect || idempotent
}

/// THE answer for a request that will not be forwarded (again) after
/// `failure`: 503 when the upstream could not be reached (nothing was sent;
/// the client may retry), 504 after a time-out, 502 otherwise.
pub fn answer(failure: Failure) -> &'static HttpError {
    match failure {
        Failure::Connect => &NO_UPSTREAM,
        Failure::TimedOut => &GATEWAY_TIMEOUT,
        Failure::Broken => &BAD_GATEWAY,
    }
}

/// The answer for a request no upstream will take: by its own failure when
/// it may not be sent again (`poisoned`), else by the batch's last failure,
/// else 503: no upstream was available to begin with.
pub fn answer_unsent(poisoned: Option<Failure>, last: Option<Failure>) -> &'static HttpError {
    poisoned.or(last).map_or(&NO_UPSTREAM, answer)
}

/// A batch's way through failing upstreams: those that failed it (not
/// picked again for it) and the last failure. Allocates only when an
/// upstream fails.
pub struct Failover {
    failed: Vec<SocketAddr>,
    last: Option<Failure>,
    /// `--retries`: upstreams tried after the first failure.
    retries: usize,
}

impl Failover {
    pub fn new(retries: u32) -> Self {
        Failover {
            failed: Vec::new(),
            last: None,
            retries: retries as usize,
        }
    }

    /// The upstreams that failed this batch.
    #[inline]
    pub fn failed(&self) -> &[SocketAddr] {
        &self.failed
    }

    /// The last failure, if any: the answer of what is left unsent.
    #[inline]
    pub fn last(&self) -> Option<Failure> {
        self.last
    }

    /// `upstream` failed the batch with `failure`. Whether what is left may
    /// go to another upstream: false once `--retries` more have failed
    /// after the first.
    pub fn record(&mut self, upstream: SocketAddr, failure: Failure) -> bool {
        self.last = Some(failure);
        self.failed.push(upstream);
        self.failed.len() <= self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_may_be_sent_twice() {
        for method in [Method::Get, Method::Head, Method::Put, Method::Delete] {
            assert!(idempotent(method), "{method:?}");
        }
        // Other: PATCH, OPTIONS and the rest are not told apart.
        for method in [Method::Post, Method::Other] {
            assert!(!idempotent(method), "{method:?}");
        }
    }

    #[test]
    fn what_may_be_sent_again_after_each_class() {
        // Nothing was written: anything may go elsewhere.
        assert!(may_resend(Failure::Connect, false));
        assert!(may_resend(Failure::Connect, true));
        // Written: the upstream may have acted on it.
        for failure in [Failure::Broken, Failure::TimedOut] {
            assert!(may_resend(failure, true), "{failure:?}");
            assert!(!may_resend(failure, false), "{failure:?}");
        }
    }

    #[test]
    fn each_class_is_answered_by_its_own_status() {
        let status = |f| answer(f).status;
        assert_eq!(status(Failure::Connect), 503);
        assert_eq!(status(Failure::TimedOut), 504);
        assert_eq!(status(Failure::Broken), 502);
        // 503 tells the client when to try again; the others do not.
        assert_eq!(answer(Failure::Connect).retry_after, Some(1));
        assert_eq!(answer(Failure::Broken).retry_after, None);
    }

    #[test]
    fn an_unsent_request_is_answered_by_its_own_failure_first() {
        let status = |p, l| answer_unsent(p, l).status;
        assert_eq!(status(None, None), 503, "no upstream at all");
        assert_eq!(status(None, Some(Failure::TimedOut)), 504);
        assert_eq!(
            status(Some(Failure::Broken), Some(Failure::TimedOut)),
            502,
            "poisoned by the failure that saw it written"
        );
    }

    #[test]
    fn a_batch_tries_one_upstream_and_then_retries_more() {
        let (a, b, c) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        );
        let mut failover = Failover::new(2);
        assert_eq!(failover.last(), None);
        assert!(failover.record(a, Failure::Connect));
        assert!(failover.record(b, Failure::Broken));
        assert!(!failover.record(c, Failure::TimedOut), "retries spent");
        assert_eq!(failover.failed(), &[a, b, c]);
        assert_eq!(failover.last(), Some(Failure::TimedOut));

        let mut once = Failover::new(0);
        assert!(
            !once.record(a, Failure::Connect),
            "--retries 0: no second upstream"
        );
    }
}
