//! The client side of the wire, for `sluicectl` and for tests that talk to a node: request
//! frames out, response frames in.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use thiserror::Error;

use crate::response::response_header_version;

/// A request or response that could not be encoded or decoded.
#[derive(Debug, Error)]
#[error("{api_key:?} v{version}: {reason}")]
pub struct CodecError {
    /// The API.
    pub api_key: ApiKey,
    /// The version.
    pub version: i16,
    /// What the codec reported.
    pub reason: String,
}

/// Appends one request frame (length prefix, header, body) to `out`.
pub fn encode_request(
    out: &mut BytesMut,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Result<(), CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError {
        api_key,
        version,
        reason: format!("{e:#}"),
    };
    let start = out.len();
    out.put_i32(0);
    let mut header = RequestHeader::default();
    header.request_api_key = api_key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_string(client_id.to_string()));
    header
        .encode(out, api_key.request_header_version(version))
        .map_err(|e| err(&e))?;
    body.encode(out, version).map_err(|e| err(&e))?;
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes one response frame (without its length prefix). Returns the correlation id and body.
pub fn decode_response(
    mut frame: Bytes,
    api_key: ApiKey,
    version: i16,
) -> Result<(i32, ResponseKind), CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError {
        api_key,
        version,
        reason: format!("{e:#}"),
    };
    if frame.remaining() < 4 {
        return Err(err(&"response shorter than its header"));
    }
    let header = ResponseHeader::decode(&mut frame, response_header_version(api_key, version))
        .map_err(|e| err(&e))?;
    let body = ResponseKind::decode(api_key, &mut frame, version).map_err(|e| err(&e))?;
    Ok((header.correlation_id, body))
}
