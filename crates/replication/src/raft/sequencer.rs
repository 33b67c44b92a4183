//! The leader's idempotent-producer checks on a replicated partition.
//!
//! A single node checks a producer's sequence numbers as it appends. A Raft leader proposes
//! instead, and its batch reaches the log a moment later, while the producer may already have
//! sent the next one (up to five in flight), so the log's producer state alone lags. The
//! sequencer keeps what the leader has proposed in its current term on top of the log's state:
//! a duplicate of something in the log is answered with the original offsets, a duplicate of
//! something still in flight is answered "retry", a gap or a stale epoch is refused. Followers
//! never check (expiry depends on clocks, which differ between nodes); they store what the
//! leader proposed. A new term starts from the log's state alone.

use std::collections::{HashMap, VecDeque};

use sluice_protocol::batch::BatchHeader;
use sluice_storage::{AppendError, PartitionLog, ProducerCheck};

/// Batches remembered per producer (Kafka's five in flight).
const RECENT: usize = 5;
/// Producers tracked at once; beyond it the in-flight view is dropped and rebuilt from the log.
const MAX_PRODUCERS: usize = 100_000;

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Propose it.
    Propose,
    /// Already in the log: answer with these offsets once they are committed.
    Duplicate {
        /// First offset of the original.
        base_offset: i64,
        /// Last offset of the original.
        last_offset: i64,
        /// Its stored max timestamp.
        timestamp: i64,
    },
    /// The same batch was proposed in this term and is not in the log yet: the producer
    /// should retry, and will then find it in the log.
    InFlight,
}

#[derive(Debug)]
struct Proposed {
    epoch: i16,
    last_seq: i32,
    recent: VecDeque<(i32, i32)>,
}

/// Sequence numbers proposed by this leader in its current term, per producer id.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    term: u64,
    producers: HashMap<i64, Proposed>,
}

fn in_sequence(last: i32, next: i32) -> bool {
    next as i64 == last as i64 + 1 || (next == 0 && last == i32::MAX)
}

impl Sequencer {
    /// Checks `h` (a validated batch) as the leader of `term` and, if it is to be proposed,
    /// records it as in flight.
    pub(crate) fn check(
        &mut self,
        term: u64,
        log: &PartitionLog,
        h: &BatchHeader,
        now_ms: i64,
    ) -> Result<Verdict, AppendError> {
        if !h.has_producer_id() {
            return Ok(Verdict::Propose);
        }
        if term != self.term || self.producers.len() >= MAX_PRODUCERS {
            self.producers.clear();
            self.term = term;
        }
        let (first, last) = (h.base_sequence, h.last_sequence());
        let proposed = self.producers.get(&h.producer_id);
        match log.check_producer(h, now_ms) {
            Ok(ProducerCheck::Duplicate {
                base_offset,
                last_offset,
                timestamp,
            }) => {
                return Ok(Verdict::Duplicate {
                    base_offset,
                    last_offset,
                    timestamp,
                });
            }
            Ok(ProducerCheck::Append) => {}
            // The log lags what this leader proposed: the in-flight view decides the sequence.
            Err(AppendError::OutOfOrderSequence { .. })
                if proposed.is_some_and(|p| p.epoch == h.producer_epoch) => {}
            Err(e) => return Err(e),
        }
        if let Some(p) = proposed {
            if h.producer_epoch == p.epoch {
                if p.recent.contains(&(first, last)) {
                    return Ok(Verdict::InFlight);
                }
                if !in_sequence(p.last_seq, first) {
                    return Err(AppendError::OutOfOrderSequence {
                        producer_id: h.producer_id,
                        epoch: h.producer_epoch,
                        first_seq: first,
                        expected: if p.last_seq == i32::MAX {
                            0
                        } else {
                            p.last_seq + 1
                        },
                    });
                }
            } else if h.producer_epoch < p.epoch {
                return Err(AppendError::InvalidProducerEpoch {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    current: p.epoch,
                });
            } else if first != 0 {
                return Err(AppendError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq: first,
                    expected: 0,
                });
            }
        }
        let p = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| Proposed {
                epoch: h.producer_epoch,
                last_seq: last,
                recent: VecDeque::new(),
            });
        if p.epoch != h.producer_epoch {
            p.epoch = h.producer_epoch;
            p.recent.clear();
        }
        if p.recent.len() == RECENT {
            p.recent.pop_front();
        }
        p.recent.push_back((first, last));
        p.last_seq = last;
        Ok(Verdict::Propose)
    }

    /// A proposal of `producer_id` failed: its later batches are checked against the log
    /// alone (which then shows the gap, and the producer recovers as Kafka's does).
    pub(crate) fn forget(&mut self, producer_id: i64) {
        self.producers.remove(&producer_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_protocol::batch::validate_producer_batch;
    use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch};
    use sluice_storage::LogConfig;

    const PID: i64 = 42;

    fn batch(epoch: i16, first_seq: i32, records: usize) -> Bytes {
        let values: Vec<Vec<u8>> = (0..records).map(|i| vec![i as u8; 8]).collect();
        let new: Vec<NewRecord<'_>> = values
            .iter()
            .map(|v| NewRecord {
                value: Some(v),
                timestamp: 1,
                ..NewRecord::default()
            })
            .collect();
        Bytes::from(build_batch(
            &new,
            ProducerInfo {
                producer_id: PID,
                producer_epoch: epoch,
                base_sequence: first_seq,
            },
        ))
    }

    fn header(b: &Bytes) -> BatchHeader {
        validate_producer_batch(b).expect("valid batch")
    }

    #[test]
    fn in_flight_batches_keep_sequence_and_duplicates_are_found_in_flight_or_in_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = PartitionLog::open(&dir.path().join("t-0"), "t", 0, LogConfig::default())
            .expect("open log");
        let mut s = Sequencer::default();
        let (b0, b1, b2) = (batch(0, 0, 3), batch(0, 3, 2), batch(0, 5, 1));
        // Pipelined: the log has none of them yet, the sequence still follows.
        assert_eq!(
            s.check(1, &log, &header(&b0), 10).ok(),
            Some(Verdict::Propose)
        );
        assert_eq!(
            s.check(1, &log, &header(&b1), 10).ok(),
            Some(Verdict::Propose)
        );
        // A retry of something still in flight: retry later.
        assert_eq!(
            s.check(1, &log, &header(&b0), 10).ok(),
            Some(Verdict::InFlight)
        );
        // A gap is refused, expecting what follows the last proposed.
        match s.check(1, &log, &header(&batch(0, 9, 1)), 10) {
            Err(AppendError::OutOfOrderSequence { expected: 5, .. }) => {}
            other => panic!("gap accepted: {other:?}"),
        }
        // Once the log holds the batches, a retry gets the original offsets.
        log.append_entry(b0.clone(), 1, 10).expect("append");
        log.append_entry(b1.clone(), 1, 10).expect("append");
        assert_eq!(
            s.check(1, &log, &header(&b1), 10).ok(),
            Some(Verdict::Duplicate {
                base_offset: 3,
                last_offset: 4,
                timestamp: 1
            })
        );
        assert_eq!(
            s.check(1, &log, &header(&b2), 10).ok(),
            Some(Verdict::Propose)
        );
        // A new term starts from the log alone: b2 never reached it, so it may come again,
        // and the batch after it is a gap.
        assert_eq!(
            s.check(2, &log, &header(&b2), 10).ok(),
            Some(Verdict::Propose)
        );
        s.forget(PID);
        assert!(matches!(
            s.check(2, &log, &header(&batch(0, 6, 1)), 10),
            Err(AppendError::OutOfOrderSequence { expected: 5, .. })
        ));
        // A bumped epoch restarts at 0; the old epoch is fenced from then on.
        assert_eq!(
            s.check(2, &log, &header(&batch(1, 0, 1)), 10).ok(),
            Some(Verdict::Propose)
        );
        assert!(matches!(
            s.check(2, &log, &header(&batch(0, 5, 1)), 10),
            Err(AppendError::InvalidProducerEpoch { current: 1, .. })
        ));
        // Batches without a producer id are never checked.
        let plain = Bytes::from(build_batch(
            &[NewRecord {
                value: Some(b"x"),
                timestamp: 1,
                ..NewRecord::default()
            }],
            ProducerInfo::NONE,
        ));
        assert_eq!(
            s.check(2, &log, &header(&plain), 10).ok(),
            Some(Verdict::Propose)
        );
    }
}
