//! The coordinator's settings, under Kafka's broker config names and with Kafka's defaults.

/// Group and offset settings. `Default` gives Apache Kafka's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`: shortest session timeout a member may ask for.
    pub group_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: longest session timeout a member may ask for.
    pub group_max_session_timeout_ms: i32,
    /// `group.max.size`: most members a classic group may have.
    pub group_max_size: usize,
    /// `group.initial.rebalance.delay.ms`: how long an Empty group waits for more members
    /// after its first join before completing the first rebalance.
    pub group_initial_rebalance_delay_ms: i32,
    /// `offset.metadata.max.bytes`: longest metadata string kept with a committed offset
    /// (counted as Java counts string length, in UTF-16 code units).
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`: how long offsets outlive an Empty group (or, for groups that
    /// only commit, their last commit).
    pub offsets_retention_minutes: i64,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are looked for.
    pub offsets_retention_check_interval_ms: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_max_size: i32::MAX as usize,
            group_initial_rebalance_delay_ms: 3_000,
            offset_metadata_max_bytes: 4_096,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
        }
    }
}

impl GroupConfig {
    /// `offsets.retention.minutes` in milliseconds.
    pub fn offsets_retention_ms(&self) -> i64 {
        self.offsets_retention_minutes.saturating_mul(60_000)
    }
}

/// How long a brand-new member may sit in a rebalance before it is dropped (Kafka's
/// `GroupCoordinator.NewMemberJoinTimeoutMs`): its socket is parked, so a vanished client would
/// otherwise hold the rebalance open until the rebalance timeout.
pub(crate) const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;
