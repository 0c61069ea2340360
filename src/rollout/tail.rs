//! The last bytes of a hook's output, bounded while the hook runs.

use std::collections::VecDeque;

/// How much of a hook's output is kept: the last 64 KiB.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Keeps the last `limit` bytes written to it and counts the rest.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    limit: usize,
    cut: u64,
}

impl Tail {
    /// An empty tail keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: VecDeque::with_capacity(limit.min(8192)),
            limit,
            cut: 0,
        }
    }

    /// Appends `bytes`, dropping the oldest ones beyond the limit.
    pub fn push(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(self.limit)..];
        self.cut += (bytes.len() - keep.len()) as u64;
        let over = (self.buf.len() + keep.len()).saturating_sub(self.limit);
        self.buf.drain(..over);
        self.cut += over as u64;
        self.buf.extend(keep);
    }

    /// The kept bytes as lossy UTF-8, after a `[… N bytes cut]` line when
    /// anything was dropped; a character split by the cut is dropped whole.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = [a, b].concat();
        if self.cut == 0 {
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        let partial = bytes
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count();
        bytes.drain(..partial);
        let cut = self.cut + partial as u64;
        format!("[… {cut} bytes cut]\n{}", String::from_utf8_lossy(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut t = Tail::new(16);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "hello world");
    }

    #[test]
    fn long_output_keeps_its_end_and_says_how_much_was_cut() {
        let mut t = Tail::new(8);
        t.push(b"0123456");
        t.push(b"789abcdefghij");
        assert_eq!(t.text(), "[… 12 bytes cut]\ncdefghij");
        t.push(b"k");
        assert_eq!(t.text(), "[… 13 bytes cut]\ndefghijk");
    }

    #[test]
    fn a_character_split_by_the_cut_is_dropped() {
        let mut t = Tail::new(4);
        t.push("aé€xy".as_bytes()); // a, é (2 bytes), € (3 bytes), x, y
        // The last 4 bytes start inside €: its 2 trailing bytes go too.
        assert_eq!(t.text(), "[… 6 bytes cut]\nxy");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut t = Tail::new(8);
        t.push(b"ok\xFFok");
        assert_eq!(t.text(), "ok\u{FFFD}ok");
    }
}
