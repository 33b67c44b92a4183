//! FindCoordinator: this node leads every `__consumer_offsets` partition (one-node cluster), so
//! it coordinates every group. Transactions are not implemented: their coordinator is refused.

use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use kafka_protocol::ResponseError;

use crate::broker::Broker;

/// FindCoordinator key types.
const GROUP: i8 = 0;

pub(crate) async fn find_coordinator(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let config = broker.config();
    let mut response = FindCoordinatorResponse::default();
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key.clone()]
    };
    for key in keys {
        let mut c = Coordinator::default();
        c.key = key;
        if req.key_type == GROUP {
            c.node_id = BrokerId(config.node_id);
            c.host = StrBytes::from_string(config.advertise_host.clone());
            c.port = config.advertise_port as i32;
        } else {
            c.node_id = BrokerId(-1);
            c.port = -1;
            c.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            c.error_message = Some(StrBytes::from_static_str(
                "transactions are not supported by this broker",
            ));
        }
        response.coordinators.push(c);
    }
    if version < 4 {
        if let Some(c) = response.coordinators.pop() {
            response.node_id = c.node_id;
            response.host = c.host;
            response.port = c.port;
            response.error_code = c.error_code;
            if version >= 1 {
                response.error_message = c.error_message;
            }
        }
        response.coordinators.clear();
    }
    response
}
