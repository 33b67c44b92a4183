//! Request headers and bodies.
//!
//! The first eight bytes of every request (api key, version, correlation id) are read by hand so
//! that even a request we cannot decode can be answered or logged with its correlation id.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;
use thiserror::Error;

use crate::api_table::ApiTable;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The request header (correlation id, client id, ...).
    pub header: RequestHeader,
    /// Which API this is.
    pub api_key: ApiKey,
    /// The decoded body; record payloads are slices of the frame, not copies.
    pub body: RequestKind,
}

impl Request {
    /// The API version the client used; responses must be encoded at the same version.
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// The fixed first eight bytes of every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    /// Raw API key.
    pub api_key: i16,
    /// Requested API version.
    pub api_version: i16,
    /// Echoed back in the response.
    pub correlation_id: i32,
}

/// Why a frame did not yield a request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Fewer than eight bytes: not even a header prefix.
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    /// The API key is not one Kafka defines.
    #[error("unknown API key {} (correlation id {})", .0.api_key, .0.correlation_id)]
    UnknownApiKey(HeaderPrefix),
    /// A known API at a version this broker does not implement.
    #[error("{api_key:?} v{} is not supported (correlation id {})", .prefix.api_version, .prefix.correlation_id)]
    UnsupportedVersion {
        /// The API.
        api_key: ApiKey,
        /// The header prefix as sent.
        prefix: HeaderPrefix,
    },
    /// The header or body does not decode at the version the client named.
    #[error("malformed {api_key:?} v{} request (correlation id {}): {reason}", .prefix.api_version, .prefix.correlation_id)]
    Malformed {
        /// The API.
        api_key: ApiKey,
        /// The header prefix as sent.
        prefix: HeaderPrefix,
        /// What the decoder reported.
        reason: String,
    },
}

/// Reads the fixed header prefix.
pub fn peek_header(frame: &[u8]) -> Result<HeaderPrefix, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::Truncated(frame.len()));
    }
    Ok(HeaderPrefix {
        api_key: i16::from_be_bytes([frame[0], frame[1]]),
        api_version: i16::from_be_bytes([frame[2], frame[3]]),
        correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
    })
}

/// Decodes one request frame (without its length prefix) against the advertised table.
pub fn decode_request(frame: Bytes, table: &ApiTable) -> Result<Request, RequestError> {
    let prefix = peek_header(&frame)?;
    let api_key =
        ApiKey::try_from(prefix.api_key).map_err(|()| RequestError::UnknownApiKey(prefix))?;
    if !table.supports(api_key, prefix.api_version) {
        return Err(RequestError::UnsupportedVersion { api_key, prefix });
    }
    let malformed = |reason: String| RequestError::Malformed {
        api_key,
        prefix,
        reason,
    };
    let version = prefix.api_version;
    let mut buf = frame;
    // The decoder is third-party code fed by the network: a panic in it must cost one
    // connection, never the broker.
    let decoded = catch_unwind(AssertUnwindSafe(move || {
        let header_version = api_key.request_header_version(version);
        let header = RequestHeader::decode(&mut buf, header_version)?;
        let body = RequestKind::decode(api_key, &mut buf, version)?;
        Ok::<_, anyhow_like::Error>((header, body))
    }));
    match decoded {
        Ok(Ok((header, body))) => Ok(Request {
            header,
            api_key,
            body,
        }),
        Ok(Err(e)) => Err(malformed(e.0)),
        Err(_) => Err(malformed("decoder panicked".into())),
    }
}

/// The decoder's errors are `anyhow::Error`; this keeps anyhow out of our public API.
mod anyhow_like {
    pub(crate) struct Error(pub(crate) String);
    impl<E: std::fmt::Display> From<E> for Error {
        fn from(e: E) -> Self {
            Error(format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ApiTable {
        ApiTable::new([(ApiKey::ApiVersions, 0, 4), (ApiKey::Metadata, 0, 13)])
    }

    #[test]
    fn short_frame_is_truncated() {
        assert_eq!(
            decode_request(Bytes::from_static(&[0, 18, 0]), &table()).err(),
            Some(RequestError::Truncated(3))
        );
    }

    #[test]
    fn unknown_key_keeps_the_correlation_id() {
        let frame = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 9]);
        match decode_request(frame, &table()) {
            Err(RequestError::UnknownApiKey(p)) => assert_eq!(p.correlation_id, 9),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unimplemented_version_is_reported_as_such() {
        let frame = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(frame, &table()),
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                ..
            })
        ));
    }

    #[test]
    fn garbage_body_is_malformed_not_a_panic() {
        // Metadata v1 whose topic array claims more entries than there are bytes.
        let frame = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 5, 0, 0, 0x00, 0x00, 0x10, 0, 0]);
        assert!(matches!(
            decode_request(frame, &table()),
            Err(RequestError::Malformed { .. })
        ));
    }
}
