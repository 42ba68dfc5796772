//! Framing: one frame is one line of bytes ending in `\n` (`\r\n` accepted), at most N bytes.
//!
//! This module knows nothing about JSON or requests; it only cuts a byte stream into lines and
//! refuses to buffer more than the limit. Meaning lives in [`crate::cmd`] and [`crate::reply`].

use std::io;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default limit on a frame, in bytes of the line without its newline.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// What the decoder yields for each line.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n` or `\r\n`. Never empty or all whitespace.
    Line(BytesMut),
    /// A line went over the limit. It is reported once, as soon as the limit is crossed, and
    /// the rest of that line is discarded up to its newline.
    TooLarge,
}

/// A [`Decoder`] of lines with a size limit, and an [`Encoder`] of already-serialized lines.
///
/// Memory stays bounded by the limit whatever the peer sends: an over-long line is dropped as it
/// arrives instead of being buffered to its end. Blank lines are skipped, so a person typing into
/// `nc` can press Enter without getting an error.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max_frame_bytes: usize,
    /// How far the buffer has been searched for a newline, so each byte is scanned once.
    scanned: usize,
    /// True while throwing away the tail of an over-long line.
    discarding: bool,
}

impl LineCodec {
    /// A codec that accepts lines of up to `max_frame_bytes` bytes.
    pub fn new(max_frame_bytes: usize) -> LineCodec {
        LineCodec {
            max_frame_bytes,
            scanned: 0,
            discarding: false,
        }
    }

    /// The limit this codec enforces.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Changes the limit for the lines still to come (a server raises it once a client has
    /// authenticated).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        LineCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        loop {
            let newline = buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|offset| self.scanned + offset);
            let Some(newline) = newline else {
                if self.discarding {
                    buf.clear();
                    self.scanned = 0;
                } else if buf.len() > self.max_frame_bytes + 1 {
                    // One byte of slack for the `\r` of a `\r\n` that has not fully arrived.
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Ok(Some(Frame::TooLarge));
                } else {
                    self.scanned = buf.len();
                }
                return Ok(None);
            };
            let mut line = buf.split_to(newline + 1);
            self.scanned = 0;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            line.truncate(line.len() - 1);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.len() > self.max_frame_bytes {
                return Ok(Some(Frame::TooLarge));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Frame::Line(line)));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        // A last line without its newline still counts: `printf '{...}' | nc` should work.
        if self.discarding || buf.is_empty() {
            buf.clear();
            return Ok(None);
        }
        let line = buf.split_to(buf.len());
        self.scanned = 0;
        let trimmed_len = line.len() - usize::from(line.last() == Some(&b'\r'));
        if line[..trimmed_len].iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if trimmed_len > self.max_frame_bytes {
            // The one byte of slack kept for a `\r` turned out to be part of the line.
            return Ok(Some(Frame::TooLarge));
        }
        let mut line = line;
        line.truncate(trimmed_len);
        Ok(Some(Frame::Line(line)))
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for LineCodec {
    type Error = io::Error;

    /// Writes one already-serialized frame and its newline. The caller guarantees the frame
    /// holds no newline (serde_json never emits one in compact mode).
    fn encode(&mut self, frame: T, dst: &mut BytesMut) -> Result<(), io::Error> {
        let frame = frame.as_ref();
        dst.reserve(frame.len() + 1);
        dst.put_slice(frame);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut LineCodec, input: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            out.push(frame);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(BytesMut::from(s.as_bytes()))
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut codec = LineCodec::new(100);
        let frames = decode_all(&mut codec, b"{\"a\":1}\n{\"b\":2}\r\n\n  \r\n{\"c\"");
        assert_eq!(frames, vec![line("{\"a\":1}"), line("{\"b\":2}")]);
    }

    #[test]
    fn partial_lines_are_completed_by_later_bytes() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"a\""[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b":1}\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(line("{\"a\":1}")));
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_over_is_refused() {
        let mut codec = LineCodec::new(4);
        let frames = decode_all(&mut codec, b"abcd\nabcde\nok\nabcd\r\n");
        assert_eq!(
            frames,
            vec![line("abcd"), Frame::TooLarge, line("ok"), line("abcd")]
        );
    }

    #[test]
    fn an_endless_line_is_reported_once_and_never_buffered() {
        let mut codec = LineCodec::new(8);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for _ in 0..100 {
            buf.extend_from_slice(b"xxxxxxxxxxxxxxxx");
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
            assert!(buf.len() <= 16, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"xx\nnext\n");
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert_eq!(frames, vec![Frame::TooLarge, line("next")]);
    }

    #[test]
    fn eof_yields_a_last_unterminated_line() {
        let mut codec = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"one\ntwo\r"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(line("one")));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(line("two")));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn eof_refuses_a_last_line_one_byte_over_the_limit() {
        // Found by the fuzzer: the slack byte kept for `\r` must not let a line through.
        let mut codec = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Frame::TooLarge));
        let mut buf = BytesMut::from(&b"abcd\r"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(line("abcd")));
    }

    #[test]
    fn encoder_appends_newline() {
        let mut codec = LineCodec::default();
        let mut dst = BytesMut::new();
        codec.encode(b"{}", &mut dst).unwrap();
        assert_eq!(&dst[..], b"{}\n");
    }
}
