//! Replication: how a write becomes committed, and the cluster image every node serves.
//!
//! - [`image`]: brokers, topics, partitions and configs, and the commands that change them (the
//!   future metadata Raft group's state machine).
//! - [`partition`]: a partition replica and the leader's append path (acks, high watermark).
//! - [`metadata`]: the metadata Raft group (`__cluster_metadata-0`), whose committed commands
//!   every node applies to its image; its leader is the controller.
//! - [`raft`]: Raft per partition (openraft) over the segment log; not yet wired into the
//!   broker.
//!
//! Today a node is its own single replica; openraft groups slot in behind these two modules.

pub mod image;
pub mod metadata;
pub mod partition;
pub mod raft;
