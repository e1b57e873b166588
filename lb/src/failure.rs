//! Why an exchange with an upstream failed: where the failure came from.
//!
//! The class is what the rest reads: the retry policy (`proxy/retry.rs`)
//! decides from it what may be sent again and what the client is answered,
//! and each upstream's counters (`upstream_stats.rs`) count failures by it,
//! the `kind` of `todo_lb_upstream_errors_total`. Made by the exchange
//! (`proxy/forward.rs`); it depends on nothing, so every one of those may
//! name it.

/// Why an upstream failed a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing was written.
    Connect,
    /// The batch was written, then a reset, an end of stream or a response
    /// that cannot be framed.
    Broken,
    /// The batch was written and not answered within `--upstream-timeout`.
    TimedOut,
}

impl Failure {
    /// Every class, in declaration order (the counters' slots).
    pub const ALL: [Failure; 3] = [Failure::Connect, Failure::Broken, Failure::TimedOut];

    /// Its `kind` label in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Broken => "broken",
            Failure::TimedOut => "timeout",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_own_slot_and_label() {
        for (slot, failure) in Failure::ALL.into_iter().enumerate() {
            // The counters index by `as usize`: ALL must list them in order.
            assert_eq!(failure as usize, slot);
        }
        let labels: Vec<_> = Failure::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(labels, ["connect", "broken", "timeout"]);
    }
}
