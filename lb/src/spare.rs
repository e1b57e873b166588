//! A core's spare byte buffers, for what a connection needs only for a
//! moment: the TLS records of a batch, taken when the batch is encrypted and
//! given back once it is sent (a socket write, which seldom waits).
//!
//! So a core touches a few warm buffers, however many connections it has,
//! instead of one per connection spread over the whole cache; and an idle
//! connection holds none.
//!
//! Not for the proxy's batch buffers: a pipelining connection holds those
//! across the upstream's round trip, so under load every connection holds
//! them at once and a pool only adds work (measured: no gain, and more CPU
//! per request where the pool was full).
//!
//! Last given back, first taken (the warmest). At most [`Spare::KEPT`] are
//! kept, none larger than [`Spare::LARGEST`]: a buffer grown by a rare huge
//! batch is let go.

use std::cell::RefCell;

#[derive(Default)]
pub struct Spare(RefCell<Vec<Vec<u8>>>);

impl Spare {
    pub const KEPT: usize = 64;
    pub const LARGEST: usize = 256 * 1024;

    /// A buffer as it was given back (its length too: the TLS records are
    /// encoded into its initialized bytes), or a new empty one.
    pub fn take(&self) -> Vec<u8> {
        self.0.borrow_mut().pop().unwrap_or_default()
    }

    pub fn give(&self, buf: Vec<u8>) {
        let mut kept = self.0.borrow_mut();
        if kept.len() < Self::KEPT && buf.capacity() <= Self::LARGEST && buf.capacity() > 0 {
            kept.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_warmest_first_and_huge_ones_are_let_go() {
        let spare = Spare::default();
        assert_eq!(spare.take().capacity(), 0);
        spare.give(vec![1u8; 100]);
        spare.give(vec![2u8; 200]);
        assert_eq!(spare.take(), vec![2u8; 200]);
        assert_eq!(spare.take(), vec![1u8; 100]);
        spare.give(vec![0; Spare::LARGEST + 1]);
        spare.give(Vec::new());
        assert_eq!(spare.take().capacity(), 0);
        for _ in 0..Spare::KEPT + 5 {
            spare.give(vec![0; 10]);
        }
        assert_eq!(spare.0.borrow().len(), Spare::KEPT);
    }
}
