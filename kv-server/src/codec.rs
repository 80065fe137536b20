//! The JSON-lines codec: one JSON value per line, in both directions.
//!
//! Decoding yields raw lines (without `\n` or a trailing `\r`), so the caller decides how to
//! parse them and how to answer a line that is not valid JSON; encoding writes any
//! `Serialize` value followed by `\n`. Written here rather than taken from
//! `tokio_util::codec::LinesCodec` for two reasons: `LinesCodec` turns a line that is not
//! UTF-8 into a stream error that ends the connection, where the contract wants a
//! `bad_request` and the connection kept; and it hands over the unterminated tail of a stream
//! as a last line, where a line cut off by a disconnect must be dropped, not executed.

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// Errors from [`JsonLinesCodec`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A line grew past the limit before its newline arrived. The stream cannot be resynced
    /// cheaply, so the connection should answer `too_large` and close.
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The limit that was passed.
        limit: usize,
    },
    /// The value could not be written as JSON.
    #[error("cannot encode as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines of at most `max_line_bytes` and writes values as JSON lines.
#[derive(Debug, Clone)]
pub struct JsonLinesCodec {
    max_line_bytes: usize,
    /// How far the buffer has already been searched for a newline, so a long line arriving in
    /// many reads is scanned once, not once per read.
    scanned: usize,
}

impl JsonLinesCodec {
    /// A codec that rejects lines longer than `max_line_bytes` (newline excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        JsonLinesCodec {
            max_line_bytes,
            scanned: 0,
        }
    }
}

impl Decoder for JsonLinesCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let too_long = CodecError::LineTooLong {
            limit: self.max_line_bytes,
        };
        match buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let newline = self.scanned + offset;
                self.scanned = 0;
                let mut line = buf.split_to(newline + 1);
                line.truncate(newline);
                if line.last() == Some(&b'\r') {
                    line.truncate(newline - 1);
                }
                if line.len() > self.max_line_bytes {
                    return Err(too_long);
                }
                Ok(Some(line))
            }
            // Past the limit without a newline: too long, unless the one byte past it is the
            // `\r` of a CRLF line of exactly the limit whose `\n` is still to come.
            None if buf.len() > self.max_line_bytes
                && (buf.len() > self.max_line_bytes + 1 || buf.last() != Some(&b'\r')) =>
            {
                Err(too_long)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let line = self.decode(buf)?;
        if line.is_none() {
            // A line without its newline was cut off by a disconnect: drop it, never execute it.
            buf.clear();
            self.scanned = 0;
        }
        Ok(line)
    }
}

impl<T: Serialize> Encoder<T> for JsonLinesCodec {
    type Error = CodecError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        serde_json::to_writer(dst.writer(), &item)?;
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut JsonLinesCodec, buf: &mut BytesMut) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while let Some(line) = codec.decode(buf).unwrap() {
            lines.push(line.to_vec());
        }
        lines
    }

    #[test]
    fn a_crlf_line_of_exactly_the_limit_is_taken_even_when_its_cr_comes_first() {
        let mut codec = JsonLinesCodec::new(5);
        let mut buf = BytesMut::from(&b"12345\r"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(
            codec.decode(&mut buf).unwrap().as_deref(),
            Some(&b"12345"[..])
        );
        // One byte more is still too long, newline or not.
        let mut buf = BytesMut::from(&b"123456\r"[..]);
        assert!(codec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"123456\n"[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        let mut codec = JsonLinesCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"a\":1}\n{\"b\":2}\r\n\npartial"[..]);
        let lines = decode_all(&mut codec, &mut buf);
        assert_eq!(
            lines,
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec(), b"".to_vec()]
        );
        assert_eq!(&buf[..], b"partial");
    }

    #[test]
    fn a_line_arriving_in_pieces_is_assembled() {
        let mut codec = JsonLinesCodec::new(100);
        let mut buf = BytesMut::new();
        for piece in [&b"{\"op\":"[..], b"\"get\",", b"\"key\":\"k\"}\n"] {
            buf.extend_from_slice(piece);
            if let Some(line) = codec.decode(&mut buf).unwrap() {
                assert_eq!(&line[..], b"{\"op\":\"get\",\"key\":\"k\"}");
                return;
            }
        }
        panic!("the line was never completed");
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_fails() {
        let mut codec = JsonLinesCodec::new(4);
        let mut buf = BytesMut::from(&b"abcd\nabcde\n"[..]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abcd");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::LineTooLong { limit: 4 })
        ));
    }

    #[test]
    fn an_unterminated_line_past_the_limit_fails_before_its_newline() {
        let mut codec = JsonLinesCodec::new(4);
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::LineTooLong { .. })
        ));
    }

    #[test]
    fn a_line_cut_off_by_eof_is_dropped() {
        let mut codec = JsonLinesCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"op\":\"status\"}\n{\"op\":\"put\",\"key\":\"k\""[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_utf8_is_passed_through_for_the_parser_to_reject() {
        let mut codec = JsonLinesCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfe\n"[..]);
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"\xff\xfe");
    }

    #[test]
    fn encodes_one_json_value_per_line() {
        let mut codec = JsonLinesCodec::new(100);
        let mut buf = BytesMut::new();
        codec
            .encode(serde_json::json!({"ok": true}), &mut buf)
            .unwrap();
        codec.encode("line\nbreak", &mut buf).unwrap();
        assert_eq!(&buf[..], b"{\"ok\":true}\n\"line\\nbreak\"\n");
    }
}
