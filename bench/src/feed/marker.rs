//! The round marker: `feed-NNNNNNNN-wIIIIIII`, this run's nonce (8 hex
//! digits) and the write's index in the ledger (7 digits, fixed width so
//! every write's event has the same size). The publisher puts it in the
//! todo's title (nchan: in the same place of the same JSON); subscribers and
//! the visibility pollers find it in what they read.

/// Digits of the write index.
const DIGITS: usize = 7;

#[derive(Debug, Clone)]
pub struct Marker {
    prefix: Vec<u8>,
}

impl Marker {
    pub fn new(nonce: u32) -> Marker {
        Marker {
            prefix: format!("feed-{nonce:08x}-w").into_bytes(),
        }
    }

    /// The marker of write `index`.
    pub fn text(&self, index: usize) -> String {
        format!(
            "{}{index:0DIGITS$}",
            std::str::from_utf8(&self.prefix).expect("ASCII")
        )
    }

    /// The write index of the first marker of this run in `bytes`.
    pub fn find(&self, bytes: &[u8]) -> Option<usize> {
        let at = bytes
            .windows(self.prefix.len())
            .position(|w| w == self.prefix)?
            + self.prefix.len();
        let digits = bytes.get(at..at + DIGITS)?;
        digits.iter().try_fold(0usize, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_marker_only() {
        let m = Marker::new(0xabc);
        assert_eq!(m.text(17), "feed-00000abc-w0000017");
        let event = format!(r#"{{"op":"created","todo":{{"title":"{}"}}}}"#, m.text(17));
        assert_eq!(m.find(event.as_bytes()), Some(17));
        assert_eq!(Marker::new(0xabd).find(event.as_bytes()), None);
        assert_eq!(m.find(b"feed-00000abc-w00001"), None, "cut short");
    }
}
