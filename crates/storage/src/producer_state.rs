//! Idempotent-producer state of one partition: per producer id, its epoch and its last five
//! batches, checked the way Kafka's `ProducerStateManager` checks them. Pure logic, no I/O.

use std::collections::{BTreeMap, VecDeque};

use sluice_protocol::batch::BatchHeader;

use crate::error::AppendError;

/// How many recent batches per producer are remembered for duplicate detection (Kafka's 5).
pub(crate) const BATCHES_PER_PRODUCER: usize = 5;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    /// The batch's max timestamp as stored (the append time for LogAppendTime topics).
    pub(crate) timestamp: i64,
}

/// What the partition knows about one producer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    pub(crate) batches: VecDeque<BatchMeta>,
    /// Last time (ms) the producer wrote: append time, or the batch timestamp when replayed.
    pub(crate) last_ms: i64,
}

/// The verdict on an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Append it.
    Append,
    /// Already written: answer with these original offsets.
    Duplicate(BatchMeta),
}

/// Per-partition producer state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerState {
    pub(crate) producers: BTreeMap<i64, ProducerEntry>,
}

fn in_sequence(last: i32, next: i32) -> bool {
    next as i64 == last as i64 + 1 || (next == 0 && last == i32::MAX)
}

impl ProducerState {
    /// Checks a batch against the producer's state as of `now_ms`.
    pub(crate) fn check(
        &self,
        h: &BatchHeader,
        now_ms: i64,
        expiration_ms: i64,
    ) -> Result<Check, AppendError> {
        if !h.has_producer_id() {
            return Ok(Check::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return Ok(Check::Append);
        };
        if now_ms.saturating_sub(entry.last_ms) >= expiration_ms {
            // Expired producers are unknown again: any sequence is accepted.
            return Ok(Check::Append);
        }
        let first_seq = h.base_sequence;
        let last_seq = h.last_sequence();
        if h.producer_epoch == entry.epoch
            && let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Check::Duplicate(*dup));
        }
        if h.producer_epoch < entry.epoch {
            return Err(AppendError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            if first_seq != 0 {
                return Err(AppendError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq,
                    expected: 0,
                });
            }
            return Ok(Check::Append);
        }
        match entry.batches.back() {
            Some(last) if !in_sequence(last.last_seq, first_seq) => {
                Err(AppendError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq,
                    expected: if last.last_seq == i32::MAX {
                        0
                    } else {
                        last.last_seq + 1
                    },
                })
            }
            None if first_seq != 0 => Err(AppendError::OutOfOrderSequence {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                first_seq,
                expected: 0,
            }),
            _ => Ok(Check::Append),
        }
    }

    /// Records a written batch (append or replay). `h` carries the assigned offsets.
    pub(crate) fn record(&mut self, h: &BatchHeader, now_ms: i64) {
        if !h.has_producer_id() {
            return;
        }
        let meta = BatchMeta {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            timestamp: h.max_timestamp,
        };
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_ms: now_ms,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_ms = entry.last_ms.max(now_ms);
    }

    /// Drops producers idle for `expiration_ms`, bounding memory.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_ms) < expiration_ms);
        before - self.producers.len()
    }

    /// Serializes for the checkpoint: count u32, then per producer id, epoch, last_ms, n and
    /// the batches.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (pid, e) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
    }

    /// Inverse of [`ProducerState::encode`].
    pub(crate) fn decode(r: &mut crate::checkpoint::Reader<'_>) -> Option<ProducerState> {
        let n = r.u32()?;
        let mut producers = BTreeMap::new();
        for _ in 0..n {
            let pid = r.i64()?;
            let epoch = r.i16()?;
            let last_ms = r.i64()?;
            let count = r.u8()? as usize;
            if count > BATCHES_PER_PRODUCER {
                return None;
            }
            let mut batches = VecDeque::with_capacity(count);
            for _ in 0..count {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                    timestamp: r.i64()?,
                });
            }
            producers.insert(
                pid,
                ProducerEntry {
                    epoch,
                    batches,
                    last_ms,
                },
            );
        }
        Some(ProducerState { producers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 49,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    const EXP: i64 = 86_400_000;

    #[test]
    fn kafka_sequence_rules() {
        let mut s = ProducerState::default();
        // Unknown producer: any sequence.
        assert_eq!(
            s.check(&header(1, 0, 7, 2, 0), 0, EXP).ok(),
            Some(Check::Append)
        );
        s.record(&header(1, 0, 7, 2, 0), 0);
        // Next in sequence.
        assert_eq!(
            s.check(&header(1, 0, 9, 1, 2), 0, EXP).ok(),
            Some(Check::Append)
        );
        // Gap.
        assert!(matches!(
            s.check(&header(1, 0, 10, 1, 2), 0, EXP),
            Err(AppendError::OutOfOrderSequence { expected: 9, .. })
        ));
        // Duplicate of the cached batch gets the original offsets.
        match s.check(&header(1, 0, 7, 2, 99), 0, EXP) {
            Ok(Check::Duplicate(m)) => assert_eq!((m.first_offset, m.last_offset), (0, 1)),
            other => panic!("{other:?}"),
        }
        // Fenced epoch.
        s.record(&header(1, 2, 0, 1, 5), 0);
        assert!(matches!(
            s.check(&header(1, 1, 1, 1, 6), 0, EXP),
            Err(AppendError::InvalidProducerEpoch { current: 2, .. })
        ));
        // New epoch must start at 0.
        assert!(matches!(
            s.check(&header(1, 3, 5, 1, 6), 0, EXP),
            Err(AppendError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            s.check(&header(1, 3, 0, 1, 6), 0, EXP).ok(),
            Some(Check::Append)
        );
        // Expired producer is unknown again.
        assert_eq!(
            s.check(&header(1, 2, 77, 1, 6), EXP, EXP).ok(),
            Some(Check::Append)
        );
        assert_eq!(s.expire(EXP, EXP), 1);
        assert!(s.producers.is_empty());
    }

    #[test]
    fn sequence_wraps_and_only_five_batches_are_kept() {
        let mut s = ProducerState::default();
        s.record(&header(1, 0, i32::MAX - 1, 2, 0), 0);
        assert_eq!(
            s.check(&header(1, 0, 0, 1, 2), 0, EXP).ok(),
            Some(Check::Append)
        );
        let mut s = ProducerState::default();
        for i in 0..7 {
            s.record(&header(9, 0, i, 1, i as i64), 0);
        }
        assert_eq!(s.producers[&9].batches.len(), BATCHES_PER_PRODUCER);
        // Batch 0 and 1 fell out of the cache: no longer a duplicate, so it is out of order.
        assert!(s.check(&header(9, 0, 1, 1, 0), 0, EXP).is_err());
        assert!(matches!(
            s.check(&header(9, 0, 2, 1, 0), 0, EXP),
            Ok(Check::Duplicate(_))
        ));
    }

    #[test]
    fn encoding_round_trips() {
        let mut s = ProducerState::default();
        s.record(&header(3, 1, 0, 4, 10), 55);
        s.record(&header(4, 0, 9, 1, 20), 66);
        let mut buf = Vec::new();
        s.encode(&mut buf);
        let mut r = crate::checkpoint::Reader::new(&buf);
        assert_eq!(ProducerState::decode(&mut r), Some(s));
    }
}
