//! InitProducerId for idempotent producers. Transactions are not implemented: a transactional
//! id gets a clear, non-retriable error instead of a coordinator that never answers.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use tracing::warn;

use crate::broker::Broker;

pub(crate) async fn init_producer_id(
    broker: &Broker,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    response.ongoing_txn_producer_id = ProducerId(-1);
    response.ongoing_txn_producer_epoch = -1;
    match req.transactional_id.as_ref().map(|t| t.0.as_str()) {
        None => {}
        Some("") => {
            response.error_code = ResponseError::InvalidRequest.code();
            return response;
        }
        Some(_) => {
            response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            return response;
        }
    }
    // As Kafka does for idempotent (non-transactional) producers: always a fresh id at epoch 0,
    // also when the client asks to bump the epoch of the id it has.
    match broker.cluster.allocate_producer_id().await {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(e) => {
            warn!("cannot allocate a producer id: {e}");
            response.error_code = ResponseError::CoordinatorNotAvailable.code();
        }
    }
    response
}
