//! Sans-IO Kafka wire protocol for Sluice. No sockets, no files, no runtime.
//!
//! - [`frame`]: splits a byte stream into size-prefixed frames, refusing oversized ones up front.
//! - [`request`]: the header prefix, then header and body decoded with the kafka-protocol crate.
//! - [`response`]: response frames with the header version each API demands (KIP-511 fallback).
//! - [`api_table`]: the APIs and versions a broker advertises, built from what it implements.
//! - [`fetch`]: Fetch responses as parts, so record batches reach the socket uncopied.
//! - [`client`]: request frames out and response frames in, for the CLI and tests.
//! - [`batch`]: the magic-2 record batch header: parsing, validation, offset patching.
//! - [`records`]: records inside uncompressed batches the broker builds or reads itself.

pub mod api_table;
pub mod batch;
pub mod client;
pub mod fetch;
pub mod frame;
pub mod records;
pub mod request;
pub mod response;

pub use kafka_protocol;
