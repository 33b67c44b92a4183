//! Response framing: length prefix, header at the version the API demands, then the body.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;
use thiserror::Error;

use crate::api_table::ApiTable;

/// A response could not be encoded: a broker bug, never a client's fault.
#[derive(Debug, Error)]
#[error("cannot encode {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    /// The API.
    pub api_key: ApiKey,
    /// The version asked for.
    pub version: i16,
    /// What the encoder reported.
    pub reason: String,
}

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The response header version for `api_key` at `version`.
///
/// ApiVersions always answers with header v0 so that a client that asked for a version we do
/// not know can still read the answer (KIP-511).
pub fn response_header_version(api_key: ApiKey, version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    }
}

/// Appends one whole response frame to `out`.
pub fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Result<(), EncodeError> {
    let err = |e: anyhow_to_string::S| EncodeError {
        api_key,
        version,
        reason: e.0,
    };
    let start = out.len();
    out.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(out, response_header_version(api_key, version))
        .map_err(|e| err(e.into()))?;
    body.encode(out, version).map_err(|e| err(e.into()))?;
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The KIP-511 answer to an ApiVersions request at a version this broker does not know:
/// a v0 body with UNSUPPORTED_VERSION and our supported ranges, so the client can retry.
pub fn encode_api_versions_fallback(
    out: &mut BytesMut,
    correlation_id: i32,
    table: &ApiTable,
) -> Result<(), EncodeError> {
    let body = ResponseKind::ApiVersions(table.api_versions_response(UNSUPPORTED_VERSION));
    encode_response(out, correlation_id, ApiKey::ApiVersions, 0, &body)
}

mod anyhow_to_string {
    pub(crate) struct S(pub(crate) String);
    impl<E: std::fmt::Display> From<E> for S {
        fn from(e: E) -> Self {
            S(format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_a_v0_frame_with_unsupported_version() {
        let table = ApiTable::new([(ApiKey::ApiVersions, 0, 4), (ApiKey::Metadata, 0, 12)]);
        let mut out = BytesMut::new();
        encode_api_versions_fallback(&mut out, 77, &table).expect("encodes");
        // length, correlation id, error code, array of 2 x (key, min, max)
        assert_eq!(&out[0..4], &(4 + 2 + 4 + 2 * 6i32).to_be_bytes());
        assert_eq!(&out[4..8], &77i32.to_be_bytes());
        assert_eq!(&out[8..10], &35i16.to_be_bytes());
        assert_eq!(&out[10..14], &2i32.to_be_bytes());
        assert_eq!(&out[14..20], &[0, 3, 0, 0, 0, 12]);
        assert_eq!(&out[20..26], &[0, 18, 0, 0, 0, 4]);
        assert_eq!(out.len(), 26);
    }
}
