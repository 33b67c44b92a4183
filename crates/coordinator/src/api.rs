//! What goes into the coordinator (requests, tokens) and what comes out (effects).

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, RequestKind, ResponseKind,
    SyncGroupRequest, SyncGroupResponse,
};

/// Identifies one request to the runtime; chosen by the runtime and echoed in its `Reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyToken(pub u64);

/// Identifies one `Append` effect; the runtime passes it back to `append_done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppendId(pub u64);

/// A `__consumer_offsets` record: key and value, `None` being a tombstone.
pub type OffsetsRecord = (Bytes, Option<Bytes>);

/// The APIs the coordinator answers, with the version ranges it implements: the broker
/// advertises these (clamped to what the kafka-protocol crate decodes) in ApiVersions.
/// OffsetCommit v10 and OffsetFetch v10 name topics by id; the crate does not decode those
/// request versions, so they are not listed.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

macro_rules! group_apis {
    ($($name:ident($req:ty, $resp:ty)),* $(,)?) => {
        /// A request the coordinator handles.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $(
                #[doc = concat!("A ", stringify!($name), " request.")]
                $name($req),
            )*
        }

        /// A response the coordinator produced.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Response {
            $(
                #[doc = concat!("A ", stringify!($name), " response.")]
                $name($resp),
            )*
        }

        impl Request {
            /// The request's API key.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $(Request::$name(_) => ApiKey::$name,)*
                }
            }
        }

        impl TryFrom<RequestKind> for Request {
            type Error = RequestKind;

            /// Picks out the requests the coordinator handles; hands back any other.
            fn try_from(kind: RequestKind) -> Result<Self, RequestKind> {
                match kind {
                    $(RequestKind::$name(r) => Ok(Request::$name(r)),)*
                    other => Err(other),
                }
            }
        }

        impl From<Response> for ResponseKind {
            fn from(response: Response) -> Self {
                match response {
                    $(Response::$name(r) => ResponseKind::$name(r),)*
                }
            }
        }
    };
}

group_apis! {
    JoinGroup(JoinGroupRequest, JoinGroupResponse),
    SyncGroup(SyncGroupRequest, SyncGroupResponse),
    Heartbeat(HeartbeatRequest, HeartbeatResponse),
    LeaveGroup(LeaveGroupRequest, LeaveGroupResponse),
    OffsetCommit(OffsetCommitRequest, OffsetCommitResponse),
    OffsetFetch(OffsetFetchRequest, OffsetFetchResponse),
    OffsetDelete(OffsetDeleteRequest, OffsetDeleteResponse),
    ListGroups(ListGroupsRequest, ListGroupsResponse),
    DescribeGroups(DescribeGroupsRequest, DescribeGroupsResponse),
    DeleteGroups(DeleteGroupsRequest, DeleteGroupsResponse),
}

/// Something the runtime must do on the coordinator's behalf, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `response`, encoded at `api_version` (the version of the request), as the answer
    /// to the request identified by `token`.
    Reply {
        /// The request being answered.
        token: ReplyToken,
        /// The request's API version, which the response must be encoded at.
        api_version: i16,
        /// The response body.
        response: Response,
    },
    /// Append `records`, in order, to partition `partition` of `__consumer_offsets`, then call
    /// `append_done(id, ..)` once the append is durable (or has failed).
    Append {
        /// Passed back to `append_done`.
        id: AppendId,
        /// The `__consumer_offsets` partition.
        partition: i32,
        /// Keys and values (`None` = tombstone).
        records: Vec<OffsetsRecord>,
    },
}
