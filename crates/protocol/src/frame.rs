//! Splitting a byte stream into size-prefixed Kafka frames.
//!
//! A frame is an i32 length followed by that many bytes. The length is checked against the
//! configured maximum before any buffer is grown for it, so an oversized or negative length costs
//! the broker four bytes, not an allocation.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Why a stream could not be split into frames. Either way the connection must be closed: the
/// stream has lost its framing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds `socket.request.max.bytes`.
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    TooLarge {
        /// Declared frame size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The length prefix is negative or too small to hold a request header.
    #[error("invalid frame length {0}")]
    InvalidLength(i32),
}

/// Smallest request: api_key (2) + api_version (2) + correlation_id (4).
const MIN_FRAME: i32 = 8;

/// Splits frames off the front of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// Checks the length prefix at the front of `buf` without consuming anything.
    ///
    /// Returns the total bytes (prefix included) the next frame needs, or `None` if fewer than
    /// four bytes are buffered.
    pub fn check(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < MIN_FRAME {
            return Err(FrameError::InvalidLength(len));
        }
        let len = len as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                size: len,
                max: self.max_frame,
            });
        }
        Ok(Some(4 + len))
    }

    /// Takes one whole frame (without its length prefix) off the front of `buf`, if buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.check(buf)? {
            Some(total) if buf.len() >= total => {
                buf.advance(4);
                Ok(Some(buf.split_to(total - 4).freeze()))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn splits_consecutive_frames_and_waits_for_partial_ones() {
        let d = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&framed(b"0123456789"));
        buf.extend_from_slice(&framed(b"abcdefgh")[..6]);
        assert_eq!(
            d.decode(&mut buf).unwrap().as_deref(),
            Some(&b"0123456789"[..])
        );
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&framed(b"abcdefgh")[6..]);
        assert_eq!(
            d.decode(&mut buf).unwrap().as_deref(),
            Some(&b"abcdefgh"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_from_its_prefix_alone() {
        let d = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&101i32.to_be_bytes()[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn negative_and_tiny_lengths_are_refused() {
        let d = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::InvalidLength(-5)));
        let mut buf = BytesMut::from(&3i32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::InvalidLength(3)));
    }
}
