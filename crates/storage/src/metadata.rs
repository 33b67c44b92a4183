//! [`MetadataStore`]: small broker metadata in sled (cluster id, topics, producer id blocks, a
//! generic key/value for other crates). Never bulk data; every change is flushed before the
//! call returns.
//!
//! sled 0.34 can be left unopenable by a crash, so a store that refuses to open is moved aside
//! (`meta.damaged-<unix-ms>`) and replaced by an empty one; the broker then rediscovers topics
//! from the partition directories. Partition data never depends on this store.
//!
//! Values use a tiny length-prefixed binary encoding led by a format byte, so no serialization
//! crate is needed and old records stay readable when the format grows.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checkpoint::Reader;
use crate::error::StorageError;

const FORMAT: u8 = 1;
const CLUSTER_ID: &[u8] = b"cluster_id";
const NEXT_PRODUCER_ID: &[u8] = b"next_producer_id";
const TOPIC_PREFIX: &str = "topic/";
const KV_PREFIX: &str = "kv/";

/// A topic as the metadata store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Kafka topic id (a UUID).
    pub id: [u8; 16],
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i16,
    /// Topic-level config overrides, as the client sent them.
    pub configs: BTreeMap<String, String>,
}

/// Small metadata in sled.
pub struct MetadataStore {
    db: sled::Db,
    damaged: Option<PathBuf>,
}

fn sled_err(what: &str) -> impl FnOnce(sled::Error) -> StorageError + '_ {
    move |e| match e {
        sled::Error::Io(io) => StorageError::io(format!("metadata {what}"), io),
        other => StorageError::Corrupt(format!("metadata {what}: {other}")),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut Reader<'_>) -> Option<String> {
    let n = r.u32()? as usize;
    let mut bytes = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        bytes.push(r.u8()?);
    }
    String::from_utf8(bytes).ok()
}

impl TopicRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        put_str(&mut out, &self.name);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.partitions.to_be_bytes());
        out.extend_from_slice(&self.replication_factor.to_be_bytes());
        out.extend_from_slice(&(self.configs.len() as u32).to_be_bytes());
        for (k, v) in &self.configs {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out
    }

    fn decode(buf: &[u8]) -> Option<TopicRecord> {
        let (&format, rest) = buf.split_first()?;
        if format != FORMAT {
            return None;
        }
        let mut r = Reader::new(rest);
        let name = get_str(&mut r)?;
        let mut id = [0u8; 16];
        for b in &mut id {
            *b = r.u8()?;
        }
        let partitions = r.i32()?;
        let replication_factor = r.i16()?;
        let n = r.u32()?;
        let mut configs = BTreeMap::new();
        for _ in 0..n {
            let k = get_str(&mut r)?;
            let v = get_str(&mut r)?;
            configs.insert(k, v);
        }
        r.is_empty().then_some(TopicRecord {
            name,
            id,
            partitions,
            replication_factor,
            configs,
        })
    }
}

/// Kafka's cluster id form: a random UUID as 22 characters of unpadded base64url.
pub fn new_cluster_id() -> String {
    base64url(uuid::Uuid::new_v4().as_bytes())
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl MetadataStore {
    /// Opens `<data-dir>/meta`. If sled refuses (or panics), the directory is moved aside to
    /// `meta.damaged-<unix-ms>`, an error is logged, and an empty store is opened; see
    /// [`MetadataStore::damaged`].
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let attempt = |p: &Path| -> Result<sled::Db, String> {
            let config = sled::Config::new().path(p).mode(sled::Mode::LowSpace);
            match panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
                Ok(Ok(db)) => Ok(db),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("sled panicked while opening".into()),
            }
        };
        match attempt(path) {
            Ok(db) => Ok(MetadataStore { db, damaged: None }),
            Err(why) => {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let name = path
                    .file_name()
                    .map_or("meta".into(), |n| n.to_string_lossy().into_owned());
                let aside = path.with_file_name(format!("{name}.damaged-{ms}"));
                fs::rename(path, &aside).map_err(|e| {
                    StorageError::io(
                        format!("moving damaged metadata {} aside", path.display()),
                        e,
                    )
                })?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason = %why,
                    "metadata store could not be opened and was moved aside; starting with empty metadata. \
                     Topics are rediscovered from the partition directories with default configs; \
                     re-apply topic config overrides, then delete the damaged copy"
                );
                let db = attempt(path).map_err(|e| {
                    StorageError::Corrupt(format!(
                        "fresh metadata store at {}: {e}",
                        path.display()
                    ))
                })?;
                Ok(MetadataStore {
                    db,
                    damaged: Some(aside),
                })
            }
        }
    }

    /// Where a damaged store was moved at open, if it was.
    pub fn damaged(&self) -> Option<&Path> {
        self.damaged.as_deref()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(sled_err("flush"))
    }

    /// The cluster id, generated (Kafka style) and stored on first call.
    pub fn cluster_id(&self) -> Result<String, StorageError> {
        if let Some(v) = self.db.get(CLUSTER_ID).map_err(sled_err("read"))? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let id = new_cluster_id();
        let prev = self
            .db
            .compare_and_swap(CLUSTER_ID, None as Option<&[u8]>, Some(id.as_bytes()))
            .map_err(sled_err("write"))?;
        self.flush()?;
        match prev {
            Ok(()) => Ok(id),
            Err(cas) => Ok(cas
                .current
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or(id)),
        }
    }

    /// Stores (creates or replaces) a topic.
    pub fn put_topic(&self, topic: &TopicRecord) -> Result<(), StorageError> {
        self.db
            .insert(format!("{TOPIC_PREFIX}{}", topic.name), topic.encode())
            .map_err(sled_err("write"))?;
        self.flush()
    }

    /// One topic.
    pub fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>, StorageError> {
        let v = self
            .db
            .get(format!("{TOPIC_PREFIX}{name}"))
            .map_err(sled_err("read"))?;
        v.map(|v| {
            TopicRecord::decode(&v).ok_or_else(|| {
                StorageError::Corrupt(format!("topic record of {name} does not decode"))
            })
        })
        .transpose()
    }

    /// Removes a topic; true if it existed.
    pub fn delete_topic(&self, name: &str) -> Result<bool, StorageError> {
        let old = self
            .db
            .remove(format!("{TOPIC_PREFIX}{name}"))
            .map_err(sled_err("write"))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Every topic, by name. Records that do not decode are skipped with a warning.
    pub fn topics(&self) -> Result<Vec<TopicRecord>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(TOPIC_PREFIX) {
            let (k, v) = item.map_err(sled_err("scan"))?;
            match TopicRecord::decode(&v) {
                Some(t) => out.push(t),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), "skipping a topic record that does not decode")
                }
            }
        }
        Ok(out)
    }

    /// Reserves `count` producer ids and returns the first; blocks never overlap, also across
    /// restarts (the counter is flushed before returning).
    pub fn allocate_producer_ids(&self, count: i64) -> Result<i64, StorageError> {
        if count <= 0 {
            return Err(StorageError::Corrupt(format!(
                "cannot allocate {count} producer ids"
            )));
        }
        loop {
            let cur = self.db.get(NEXT_PRODUCER_ID).map_err(sled_err("read"))?;
            let first = match &cur {
                Some(v) if v.len() == 8 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(v);
                    i64::from_be_bytes(a)
                }
                Some(_) => {
                    return Err(StorageError::Corrupt(
                        "producer id counter does not decode".into(),
                    ));
                }
                None => 0,
            };
            let next = first
                .checked_add(count)
                .ok_or_else(|| StorageError::Corrupt("producer ids exhausted".into()))?;
            let swapped = self
                .db
                .compare_and_swap(NEXT_PRODUCER_ID, cur, Some(&next.to_be_bytes()[..]))
                .map_err(sled_err("write"))?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(first);
            }
        }
    }

    fn kv_key(prefix: &str, key: &str) -> String {
        format!("{KV_PREFIX}{prefix}/{key}")
    }

    /// Generic small value under `prefix` (e.g. a crate's name).
    pub fn get(&self, prefix: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .db
            .get(Self::kv_key(prefix, key))
            .map_err(sled_err("read"))?
            .map(|v| v.to_vec()))
    }

    /// Stores a small value under `prefix`, flushed before returning.
    pub fn put(&self, prefix: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db
            .insert(Self::kv_key(prefix, key), value)
            .map_err(sled_err("write"))?;
        self.flush()
    }

    /// Removes a value; true if it existed.
    pub fn delete(&self, prefix: &str, key: &str) -> Result<bool, StorageError> {
        let old = self
            .db
            .remove(Self::kv_key(prefix, key))
            .map_err(sled_err("write"))?;
        self.flush()?;
        Ok(old.is_some())
    }

    /// Every `(key, value)` under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let full = format!("{KV_PREFIX}{prefix}/");
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&full) {
            let (k, v) = item.map_err(sled_err("scan"))?;
            out.push((
                String::from_utf8_lossy(&k[full.len()..]).into_owned(),
                v.to_vec(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_is_kafka_shaped_and_stable() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", e))?;
        let path = dir.path().join("meta");
        let id = {
            let store = MetadataStore::open(&path)?;
            let id = store.cluster_id()?;
            assert_eq!(id.len(), 22);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(store.cluster_id()?, id);
            id
        };
        let store = MetadataStore::open(&path)?;
        assert_eq!(store.cluster_id()?, id);
        assert!(store.damaged().is_none());
        Ok(())
    }

    #[test]
    fn base64url_matches_known_values() {
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
        assert_eq!(base64url(b"Man"), "TWFu");
        assert_eq!(base64url(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
    }

    #[test]
    fn topics_producer_ids_and_kv_survive_reopen() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", e))?;
        let path = dir.path().join("meta");
        let topic = TopicRecord {
            name: "orders".into(),
            id: *uuid::Uuid::new_v4().as_bytes(),
            partitions: 4,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
        };
        {
            let store = MetadataStore::open(&path)?;
            store.put_topic(&topic)?;
            assert_eq!(store.allocate_producer_ids(1000)?, 0);
            assert_eq!(store.allocate_producer_ids(10)?, 1000);
            store.put("groups", "g1", b"state")?;
            store.put("groups", "g2", b"other")?;
            assert!(store.delete("groups", "g2")?);
        }
        let store = MetadataStore::open(&path)?;
        assert_eq!(store.get_topic("orders")?, Some(topic.clone()));
        assert_eq!(store.topics()?, vec![topic]);
        assert_eq!(store.allocate_producer_ids(1)?, 1010);
        assert_eq!(
            store.list("groups")?,
            vec![("g1".to_string(), b"state".to_vec())]
        );
        assert!(store.delete_topic("orders")?);
        assert_eq!(store.get_topic("orders")?, None);
        Ok(())
    }

    #[test]
    fn damaged_store_is_moved_aside() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io("tempdir", e))?;
        let path = dir.path().join("meta");
        {
            let store = MetadataStore::open(&path)?;
            store.put("x", "y", b"z")?;
        }
        // Overwrite sled's config file with garbage so it refuses to open.
        let conf = path.join("conf");
        fs::write(&conf, b"this is not a sled config").map_err(|e| StorageError::io("write", e))?;
        let store = MetadataStore::open(&path)?;
        let aside = store.damaged().map(Path::to_path_buf).expect("moved aside");
        assert!(
            aside
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("meta.damaged-"))
        );
        assert!(aside.join("conf").exists());
        assert_eq!(store.get("x", "y")?, None, "fresh store is empty");
        Ok(())
    }
}
