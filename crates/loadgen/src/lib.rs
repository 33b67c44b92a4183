//! `sluice-loadgen`: a Kafka load generator for `scripts/bench`, for the loads one
//! `rdkafka_performance` process cannot drive hard enough on a small machine.
//!
//! - [`wire`]: one-at-a-time requests: ApiVersions negotiation, CreateTopics, the Metadata wait.
//! - [`produce`]: N connections of pipelined Produce requests built once before the clock starts.
//! - [`fetch`]: one consumer's Fetch loop, records counted from batch headers.
//! - [`histogram`]: the log-linear latency histogram behind the percentiles.
//! - [`args`]: the hand-written `--flag value` parser of the binary.

pub mod args;
pub mod fetch;
pub mod histogram;
pub mod produce;
pub mod wire;
