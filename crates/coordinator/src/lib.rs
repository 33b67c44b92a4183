//! Sluice's group coordinator: Kafka's classic consumer-group protocol as a sans-IO state machine.
//!
//! - [`coordinator`]: the [`GroupCoordinator`] state, its entry points, timers, append completions.
//! - `membership`: JoinGroup/SyncGroup/Heartbeat/LeaveGroup and rebalances; `group`: one group.
//! - `offsets`: OffsetCommit/Fetch/Delete and retention; `admin`: List/Describe/DeleteGroups.
//! - `load`: replaying and dropping `__consumer_offsets` partitions; [`records`]: their schemas.
//! - [`api`]: requests in, [`Effect`]s out; [`config`], [`error`], [`placement`]; `timers`.

pub mod api;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod placement;
pub mod records;

mod admin;
mod group;
mod load;
mod membership;
mod offsets;
mod timers;

pub use api::{AppendId, Effect, OffsetsRecord, ReplyToken, Request, Response, SUPPORTED_APIS};
pub use config::GroupConfig;
pub use coordinator::GroupCoordinator;
pub use error::{CoordinatorError, codes};
pub use group::GroupState;
pub use placement::partition_for;

#[cfg(test)]
mod admin_test;
#[cfg(test)]
mod harness;
#[cfg(test)]
mod load_test;
#[cfg(test)]
mod membership_test;
#[cfg(test)]
mod offsets_test;
#[cfg(test)]
mod prop_test;
