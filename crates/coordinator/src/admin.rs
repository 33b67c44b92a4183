//! Group administration: ListGroups, DescribeGroups and DeleteGroups.

use std::collections::BTreeMap;

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::api::{OffsetsRecord, Response};
use crate::coordinator::{GroupCoordinator, PendingAppend};
use crate::error::append_error_to_client;
use crate::error::codes::*;
use crate::group::{GroupState, TopicPartition, Waiter};

/// The group type every classic group reports (ListGroups v5).
const CLASSIC_GROUP_TYPE: &str = "classic";

/// The ACL operations a group supports (READ=3, DELETE=6, DESCRIBE=8), all granted: the broker
/// has no authorizer, and Kafka then reports every supported operation.
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// A DeleteGroups request whose tombstones are being written.
#[derive(Debug)]
pub(crate) struct DeleteBatch {
    waiter: Waiter,
    results: IndexMap<String, i16>,
    remaining: usize,
}

impl GroupCoordinator {
    pub(crate) fn handle_list_groups(&mut self, w: Waiter, req: ListGroupsRequest) {
        let version = w.version;
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        // Every group here is a classic group: a types filter without "classic" matches none.
        let type_matches = version < 5
            || req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(CLASSIC_GROUP_TYPE));
        let mut r = ListGroupsResponse::default();
        r.error_code = if self.loading.is_empty() {
            NONE
        } else {
            COORDINATOR_LOAD_IN_PROGRESS
        };
        if type_matches {
            r.groups = self
                .groups
                .values()
                .filter(|g| states.is_empty() || states.contains(&g.state.as_str().to_lowercase()))
                .map(|g| {
                    let mut l = ListedGroup::default();
                    l.group_id = GroupId(StrBytes::from_string(g.group_id.clone()));
                    l.protocol_type =
                        StrBytes::from_string(g.protocol_type.clone().unwrap_or_default());
                    if version >= 4 {
                        l.group_state = StrBytes::from_static_str(g.state.as_str());
                    }
                    if version >= 5 {
                        l.group_type = StrBytes::from_static_str(CLASSIC_GROUP_TYPE);
                    }
                    l
                })
                .collect();
        }
        self.reply(w, Response::ListGroups(r));
    }

    pub(crate) fn handle_describe_groups(&mut self, w: Waiter, req: DescribeGroupsRequest) {
        let version = w.version;
        let mut r = DescribeGroupsResponse::default();
        for id in &req.groups {
            let group_id = id.0.to_string();
            let mut d = DescribedGroup::default();
            d.group_id = id.clone();
            d.authorized_operations = if version >= 3 && req.include_authorized_operations {
                GROUP_AUTHORIZED_OPERATIONS
            } else {
                i32::MIN
            };
            let status = if Self::invalid_group_id(&group_id, true) {
                Some(INVALID_GROUP_ID)
            } else {
                self.group_status(&group_id)
            };
            if let Some(code) = status {
                d.error_code = code;
            } else if let Some(group) = self.groups.get(&group_id) {
                d.group_state = StrBytes::from_static_str(group.state.as_str());
                d.protocol_type =
                    StrBytes::from_string(group.protocol_type.clone().unwrap_or_default());
                // Only a Stable group reports its protocol and the members' metadata and
                // assignments; mid-rebalance they are not settled.
                let stable_protocol = group
                    .is(GroupState::Stable)
                    .then(|| group.protocol_name.clone().unwrap_or_default());
                d.protocol_data =
                    StrBytes::from_string(stable_protocol.clone().unwrap_or_default());
                d.members = group
                    .members
                    .values()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = StrBytes::from_string(m.member_id.clone());
                        if version >= 4 {
                            dm.group_instance_id =
                                m.group_instance_id.clone().map(StrBytes::from_string);
                        }
                        dm.client_id = StrBytes::from_string(m.client_id.clone());
                        dm.client_host = StrBytes::from_string(m.client_host.clone());
                        if let Some(protocol) = &stable_protocol {
                            dm.member_metadata = m.metadata(protocol);
                            dm.member_assignment = m.assignment.clone();
                        } else {
                            dm.member_metadata = Bytes::new();
                            dm.member_assignment = Bytes::new();
                        }
                        dm
                    })
                    .collect();
            } else {
                d.group_state = StrBytes::from_static_str(GroupState::Dead.as_str());
                if version >= 6 {
                    d.error_code = GROUP_ID_NOT_FOUND;
                    d.error_message = Some(StrBytes::from_string(format!(
                        "Group {group_id} not found."
                    )));
                }
            }
            r.groups.push(d);
        }
        self.reply(w, Response::DescribeGroups(r));
    }

    pub(crate) fn handle_delete_groups(&mut self, w: Waiter, req: DeleteGroupsRequest) {
        let mut results: IndexMap<String, i16> = IndexMap::new();
        let mut by_partition: BTreeMap<i32, (Vec<OffsetsRecord>, Vec<String>)> = BTreeMap::new();
        for id in &req.groups_names {
            let group_id = id.0.to_string();
            if results.contains_key(&group_id) {
                continue;
            }
            let code = if Self::invalid_group_id(&group_id, true) {
                INVALID_GROUP_ID
            } else if let Some(code) = self.group_status(&group_id) {
                code
            } else {
                match self.groups.remove(&group_id) {
                    None => GROUP_ID_NOT_FOUND,
                    Some(group) if !group.is(GroupState::Empty) => {
                        self.put_group(group);
                        NON_EMPTY_GROUP
                    }
                    Some(mut group) => {
                        let mut partitions: Vec<TopicPartition> =
                            group.offsets.keys().cloned().collect();
                        partitions.extend(group.pending_commits.keys().cloned());
                        // Leaves the Empty group without offsets, so Dead: put_group drops it.
                        let records = self.remove_offsets(&mut group, &partitions);
                        self.put_group(group);
                        if !records.is_empty() {
                            let entry = by_partition
                                .entry(self.partition_for(&group_id))
                                .or_default();
                            entry.0.extend(records);
                            entry.1.push(group_id.clone());
                        }
                        NONE
                    }
                }
            };
            results.insert(group_id, code);
        }
        if by_partition.is_empty() {
            return self.reply_delete_groups(w, results);
        }
        let batch = self.new_batch_id();
        self.delete_batches.insert(
            batch,
            DeleteBatch {
                waiter: w,
                results,
                remaining: by_partition.len(),
            },
        );
        for (partition, (records, groups)) in by_partition {
            self.append(
                partition,
                records,
                PendingAppend::DeleteGroups { batch, groups },
            );
        }
    }

    pub(crate) fn delete_groups_append_done(
        &mut self,
        batch: u64,
        groups: Vec<String>,
        result: Result<(), i16>,
    ) {
        let Some(state) = self.delete_batches.get_mut(&batch) else {
            return;
        };
        if let Err(code) = result {
            for g in groups {
                state.results.insert(g, append_error_to_client(code));
            }
        }
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0
            && let Some(done) = self.delete_batches.remove(&batch)
        {
            self.reply_delete_groups(done.waiter, done.results);
        }
    }

    fn reply_delete_groups(&mut self, w: Waiter, results: IndexMap<String, i16>) {
        let mut r = DeleteGroupsResponse::default();
        r.results = results
            .into_iter()
            .map(|(group_id, code)| {
                let mut d = DeletableGroupResult::default();
                d.group_id = GroupId(StrBytes::from_string(group_id));
                d.error_code = code;
                d
            })
            .collect();
        self.reply(w, Response::DeleteGroups(r));
    }
}
