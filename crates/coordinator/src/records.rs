//! The key and value schemas of `__consumer_offsets`, byte for byte as Kafka writes them, so Kafka
//! tooling can read a Sluice offsets topic and Sluice can replay one written by Kafka.
//!
//! Every key and value starts with a big-endian `i16` version. Keys: versions 0 and 1 are an
//! offset commit `(group, topic, partition)`, version 2 is group metadata `(group)`. Values are
//! `OffsetCommitValue` (written as v3, or v1 when a legacy expire timestamp is set; v0-v4 read)
//! and `GroupMetadataValue` (written as v3; v0-v4 read). Version 4 of both is "flexible": compact
//! strings and arrays, and tagged fields, which are skipped.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CoordinatorError;

/// Key version written for offset commits.
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
/// Key version of group metadata.
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value version written for offset commits without an expire timestamp.
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Value version written for group metadata.
pub const GROUP_METADATA_VALUE_VERSION: i16 = 3;

/// A decoded `__consumer_offsets` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    /// An offset commit (key version 0 or 1).
    OffsetCommit {
        /// Group id.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
    },
    /// Group metadata (key version 2).
    GroupMetadata {
        /// Group id.
        group: String,
    },
}

impl RecordKey {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            RecordKey::OffsetCommit { group, .. } | RecordKey::GroupMetadata { group } => group,
        }
    }

    /// Encodes the key at the version Kafka writes (1 for offsets, 2 for group metadata).
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::default();
        match self {
            RecordKey::OffsetCommit {
                group,
                topic,
                partition,
            } => {
                w.i16(OFFSET_COMMIT_KEY_VERSION);
                w.string(group);
                w.string(topic);
                w.i32(*partition);
            }
            RecordKey::GroupMetadata { group } => {
                w.i16(GROUP_METADATA_KEY_VERSION);
                w.string(group);
            }
        }
        w.finish()
    }

    /// Decodes a key of any version Kafka has written.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoordinatorError> {
        let mut r = Reader::new(bytes, "key");
        let version = r.i16()?;
        match version {
            0 | 1 => Ok(RecordKey::OffsetCommit {
                group: r.string()?,
                topic: r.string()?,
                partition: r.i32()?,
            }),
            2 => Ok(RecordKey::GroupMetadata { group: r.string()? }),
            v => Err(CoordinatorError::UnknownKeyVersion(v)),
        }
    }
}

/// A committed offset as stored (`OffsetCommitValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    /// The committed offset.
    pub offset: i64,
    /// Leader epoch of the last consumed record, -1 when unknown (v3+).
    pub leader_epoch: i32,
    /// The client's metadata string ("" when none).
    pub metadata: String,
    /// When the commit was made, in ms.
    pub commit_timestamp: i64,
    /// Legacy per-commit expiry (OffsetCommit v2-v4 `retention_time_ms`); stored only in v1.
    pub expire_timestamp: Option<i64>,
}

impl OffsetCommitValue {
    /// Encodes as v3 (or v1 when an expire timestamp must be kept, as Kafka does).
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::default();
        match self.expire_timestamp {
            Some(expire) => {
                w.i16(1);
                w.i64(self.offset);
                w.string(&self.metadata);
                w.i64(self.commit_timestamp);
                w.i64(expire);
            }
            None => {
                w.i16(OFFSET_COMMIT_VALUE_VERSION);
                w.i64(self.offset);
                w.i32(self.leader_epoch);
                w.string(&self.metadata);
                w.i64(self.commit_timestamp);
            }
        }
        w.finish()
    }

    /// Decodes versions 0 to 4.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoordinatorError> {
        let mut r = Reader::new(bytes, "offset commit value");
        let version = r.i16()?;
        let mut value = OffsetCommitValue {
            offset: 0,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp: 0,
            expire_timestamp: None,
        };
        match version {
            0..=3 => {
                value.offset = r.i64()?;
                if version >= 3 {
                    value.leader_epoch = r.i32()?;
                }
                value.metadata = r.string()?;
                value.commit_timestamp = r.i64()?;
                if version == 1 {
                    // -1 is the schema's default: no expiry recorded.
                    let expire = r.i64()?;
                    value.expire_timestamp = (expire != -1).then_some(expire);
                }
            }
            4 => {
                value.offset = r.i64()?;
                value.leader_epoch = r.i32()?;
                value.metadata = r.compact_string()?;
                value.commit_timestamp = r.i64()?;
                r.skip_tagged_fields()?;
            }
            v => {
                return Err(CoordinatorError::UnsupportedValueVersion {
                    what: "offset commit",
                    version: v,
                });
            }
        }
        Ok(value)
    }
}

/// One member inside `GroupMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadataValue {
    /// Member id.
    pub member_id: String,
    /// Static membership instance id (v3+).
    pub group_instance_id: Option<String>,
    /// Client id of the member's last JoinGroup.
    pub client_id: String,
    /// Client host of the member's last JoinGroup.
    pub client_host: String,
    /// Rebalance timeout (v1+; v0 records use the session timeout).
    pub rebalance_timeout: i32,
    /// Session timeout.
    pub session_timeout: i32,
    /// The member's metadata for the group's protocol.
    pub subscription: Bytes,
    /// The member's assignment.
    pub assignment: Bytes,
}

/// A group's metadata as stored (`GroupMetadataValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    /// Protocol type ("consumer", "connect", ...); "" for none.
    pub protocol_type: String,
    /// Generation.
    pub generation: i32,
    /// Selected protocol (assignor), null for an Empty group.
    pub protocol: Option<String>,
    /// Leader member id, null for an Empty group.
    pub leader: Option<String>,
    /// When the group entered its current state (v2+), -1 when unknown.
    pub current_state_timestamp: i64,
    /// Members with their assignments.
    pub members: Vec<MemberMetadataValue>,
}

impl GroupMetadataValue {
    /// Encodes as v3.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::default();
        w.i16(GROUP_METADATA_VALUE_VERSION);
        w.string(&self.protocol_type);
        w.i32(self.generation);
        w.nullable_string(self.protocol.as_deref());
        w.nullable_string(self.leader.as_deref());
        w.i64(self.current_state_timestamp);
        w.i32(i32::try_from(self.members.len()).unwrap_or(i32::MAX));
        for m in &self.members {
            w.string(&m.member_id);
            w.nullable_string(m.group_instance_id.as_deref());
            w.string(&m.client_id);
            w.string(&m.client_host);
            w.i32(m.rebalance_timeout);
            w.i32(m.session_timeout);
            w.bytes(&m.subscription);
            w.bytes(&m.assignment);
        }
        w.finish()
    }

    /// Decodes versions 0 to 4.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoordinatorError> {
        let mut r = Reader::new(bytes, "group metadata value");
        let version = r.i16()?;
        if !(0..=4).contains(&version) {
            return Err(CoordinatorError::UnsupportedValueVersion {
                what: "group metadata",
                version,
            });
        }
        let flexible = version >= 4;
        let protocol_type = r.str_v(flexible)?;
        let generation = r.i32()?;
        let protocol = r.nullable_str_v(flexible)?;
        let leader = r.nullable_str_v(flexible)?;
        let current_state_timestamp = if version >= 2 { r.i64()? } else { -1 };
        let count = if flexible {
            r.compact_array_len()?
        } else {
            r.array_len()?
        };
        let mut members = Vec::new();
        for _ in 0..count {
            let member_id = r.str_v(flexible)?;
            let group_instance_id = if version >= 3 {
                r.nullable_str_v(flexible)?
            } else {
                None
            };
            let client_id = r.str_v(flexible)?;
            let client_host = r.str_v(flexible)?;
            let rebalance_timeout = if version >= 1 { Some(r.i32()?) } else { None };
            let session_timeout = r.i32()?;
            let subscription = r.bytes_v(flexible)?;
            let assignment = r.bytes_v(flexible)?;
            if flexible {
                r.skip_tagged_fields()?;
            }
            members.push(MemberMetadataValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout: rebalance_timeout.unwrap_or(session_timeout),
                session_timeout,
                subscription,
                assignment,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        Ok(GroupMetadataValue {
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp,
            members,
        })
    }
}

/// The topics of a `ConsumerProtocolSubscription` (the member metadata of protocol type
/// "consumer"). Like Kafka, it reads only the v0 prefix (version, topics), which every later
/// version keeps, so new subscription versions still parse.
pub fn subscription_topics(metadata: &[u8]) -> Result<Vec<String>, CoordinatorError> {
    let mut r = Reader::new(metadata, "consumer subscription");
    let version = r.i16()?;
    if version < 0 {
        return Err(r.corrupt(format!("negative subscription version {version}")));
    }
    let count = r.array_len()?;
    let mut topics = Vec::new();
    for _ in 0..count {
        topics.push(r.string()?);
    }
    Ok(topics)
}

/// Big-endian writer for the classic (non-flexible) schema types.
#[derive(Default)]
struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }
    fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }
    fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    /// A `string`: i16 length, UTF-8. Requests are checked against `MAX_STRING_BYTES` before
    /// anything reaches a record, so the cut below only guards against a panic.
    fn string(&mut self, s: &str) {
        let s = truncate_to_boundary(s, MAX_STRING_BYTES);
        self.buf.put_i16(s.len() as i16);
        self.buf.put_slice(s.as_bytes());
    }
    fn nullable_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.buf.put_i16(-1),
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.buf.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
        self.buf.put_slice(&b[..b.len().min(i32::MAX as usize)]);
    }
    fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// The longest string the classic schema's i16 length prefix can carry.
pub const MAX_STRING_BYTES: usize = i16::MAX as usize;

fn truncate_to_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bounds-checked big-endian reader; every failure is a `CorruptRecord`, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn corrupt(&self, reason: String) -> CoordinatorError {
        CoordinatorError::CorruptRecord {
            what: self.what,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CoordinatorError> {
        if self.buf.len() < n {
            return Err(self.corrupt(format!("needs {n} more bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CoordinatorError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16, CoordinatorError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, CoordinatorError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, CoordinatorError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn utf8(&self, raw: &[u8]) -> Result<String, CoordinatorError> {
        String::from_utf8(raw.to_vec()).map_err(|_| self.corrupt("string is not UTF-8".into()))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, CoordinatorError> {
        let len = self.i16()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| self.corrupt(format!("negative string length {len}")))?;
        let raw = self.take(len)?;
        self.utf8(raw).map(Some)
    }

    fn string(&mut self) -> Result<String, CoordinatorError> {
        self.nullable_string()?
            .ok_or_else(|| self.corrupt("null in a non-nullable string".into()))
    }

    fn bytes(&mut self) -> Result<Bytes, CoordinatorError> {
        let len = self.i32()?;
        let len =
            usize::try_from(len).map_err(|_| self.corrupt(format!("bad bytes length {len}")))?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn array_len(&mut self) -> Result<usize, CoordinatorError> {
        let len = self.i32()?;
        // Each element takes at least one byte, so a count beyond the bytes left is corrupt;
        // checking it here also keeps a hostile count from driving a long loop.
        usize::try_from(len)
            .ok()
            .filter(|n| *n <= self.buf.len())
            .ok_or_else(|| self.corrupt(format!("bad array length {len}")))
    }

    fn uvarint(&mut self) -> Result<u32, CoordinatorError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let [b] = self.array::<1>()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.corrupt("varint longer than 5 bytes".into()))
    }

    /// A compact length: varint N+1, 0 meaning null.
    fn compact_len(&mut self) -> Result<Option<usize>, CoordinatorError> {
        let n = self.uvarint()?;
        Ok(n.checked_sub(1).map(|n| n as usize))
    }

    fn compact_nullable_string(&mut self) -> Result<Option<String>, CoordinatorError> {
        match self.compact_len()? {
            None => Ok(None),
            Some(len) => {
                let raw = self.take(len)?;
                self.utf8(raw).map(Some)
            }
        }
    }

    fn compact_string(&mut self) -> Result<String, CoordinatorError> {
        self.compact_nullable_string()?
            .ok_or_else(|| self.corrupt("null in a non-nullable string".into()))
    }

    fn compact_bytes(&mut self) -> Result<Bytes, CoordinatorError> {
        let len = self
            .compact_len()?
            .ok_or_else(|| self.corrupt("null in non-nullable bytes".into()))?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn compact_array_len(&mut self) -> Result<usize, CoordinatorError> {
        self.compact_len()?
            .filter(|n| *n <= self.buf.len())
            .ok_or_else(|| self.corrupt("bad compact array length".into()))
    }

    fn skip_tagged_fields(&mut self) -> Result<(), CoordinatorError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }

    fn str_v(&mut self, flexible: bool) -> Result<String, CoordinatorError> {
        if flexible {
            self.compact_string()
        } else {
            self.string()
        }
    }

    fn nullable_str_v(&mut self, flexible: bool) -> Result<Option<String>, CoordinatorError> {
        if flexible {
            self.compact_nullable_string()
        } else {
            self.nullable_string()
        }
    }

    fn bytes_v(&mut self, flexible: bool) -> Result<Bytes, CoordinatorError> {
        if flexible {
            self.compact_bytes()
        } else {
            self.bytes()
        }
    }
}

#[cfg(test)]
#[path = "records_test.rs"]
mod records_test;
