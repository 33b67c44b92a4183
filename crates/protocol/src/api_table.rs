//! The table of APIs and versions a broker advertises in ApiVersions.
//!
//! The broker builds it from the handlers it actually has, clamped to what the kafka-protocol
//! crate can decode, so it never advertises a version it cannot speak.

use std::collections::BTreeMap;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;

/// Supported version ranges by API key.
#[derive(Debug, Clone, Default)]
pub struct ApiTable {
    entries: BTreeMap<i16, (ApiKey, VersionRange)>,
}

impl ApiTable {
    /// Builds the table from `(api, min, max)` triples, each clamped to the crate's own range.
    pub fn new(apis: impl IntoIterator<Item = (ApiKey, i16, i16)>) -> Self {
        let mut entries = BTreeMap::new();
        for (key, min, max) in apis {
            let range = VersionRange { min, max }.intersect(&key.valid_versions());
            if !range.is_empty() {
                entries.insert(key as i16, (key, range));
            }
        }
        Self { entries }
    }

    /// The range advertised for `key`, if the API is implemented.
    pub fn range(&self, key: ApiKey) -> Option<VersionRange> {
        self.entries.get(&(key as i16)).map(|(_, r)| *r)
    }

    /// True when `version` of `key` is implemented.
    pub fn supports(&self, key: ApiKey, version: i16) -> bool {
        self.range(key)
            .is_some_and(|r| r.min <= version && version <= r.max)
    }

    /// The implemented APIs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (ApiKey, VersionRange)> + '_ {
        self.entries.values().copied()
    }

    /// An ApiVersions response body listing this table, with the given top-level error.
    ///
    /// It carries no supported or finalized features: tagged fields in ApiVersions trip up
    /// librdkafka before 2.2, which reads them wrongly.
    pub fn api_versions_response(&self, error_code: i16) -> ApiVersionsResponse {
        let mut response = ApiVersionsResponse::default();
        response.error_code = error_code;
        response.finalized_features_epoch = -1;
        response.api_keys = self
            .iter()
            .map(|(key, range)| {
                let mut v = ApiVersion::default();
                v.api_key = key as i16;
                v.min_version = range.min;
                v.max_version = range.max;
                v
            })
            .collect();
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_clamped_to_what_the_codec_speaks() {
        let t = ApiTable::new([(ApiKey::Produce, 0, 99), (ApiKey::Fetch, 4, 11)]);
        let produce = t.range(ApiKey::Produce).expect("present");
        assert_eq!(produce.min, ApiKey::Produce.valid_versions().min);
        assert_eq!(produce.max, ApiKey::Produce.valid_versions().max);
        assert!(t.supports(ApiKey::Fetch, 11));
        assert!(!t.supports(ApiKey::Fetch, 12));
        assert!(!t.supports(ApiKey::Metadata, 1));
    }
}
