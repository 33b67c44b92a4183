//! Property test: random appends (random sizes, tiny segments so rolls are frequent), reads
//! (random offsets and limits), clean and unclean reopens, truncations and DeleteRecords agree
//! with a simple in-memory model of the log.

mod common;

use common::{batch_of, first_value};
use proptest::prelude::*;
use sluice_protocol::batch::iter_batches;
use sluice_storage::{LogConfig, PartitionLog};

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        size: usize,
    },
    Read {
        at: u16,
        max_bytes: u16,
        min_one: bool,
        hw_back: u8,
    },
    Reopen {
        clean: bool,
    },
    Truncate {
        at: u16,
    },
    DeleteRecords {
        at: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0usize..300).prop_map(|(records, size)| Op::Append { records, size }),
        4 => (any::<u16>(), 1u16..3000, any::<bool>(), 0u8..4).prop_map(|(at, max_bytes, min_one, hw_back)| Op::Read { at, max_bytes, min_one, hw_back }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u16>().prop_map(|at| Op::DeleteRecords { at }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelBatch {
    base: i64,
    last: i64,
    tag: u64,
    size: usize,
}

#[derive(Default)]
struct Model {
    batches: Vec<ModelBatch>,
    start: i64,
    end: i64,
}

impl Model {
    fn visible(&self) -> impl Iterator<Item = &ModelBatch> {
        self.batches.iter().filter(move |b| b.last >= self.start)
    }
    /// Maps a random number into [start, end].
    fn pick(&self, at: u16) -> i64 {
        self.start + (at as i64) % (self.end - self.start + 1)
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        index_interval_bytes: 64,
        flush_messages: u64::MAX,
        ..LogConfig::default()
    }
}

fn tag_of(value: &[u8]) -> u64 {
    String::from_utf8_lossy(value)
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

fn check_all(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_start_offset(), model.start);
    prop_assert_eq!(log.log_end_offset(), model.end);
    let mut got = Vec::new();
    let mut offset = model.start;
    loop {
        let r = log
            .read(offset, 1 << 16, i64::MAX, true)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if r.records.is_empty() {
            break;
        }
        for item in iter_batches(&r.records) {
            let (h, bytes) = item.map_err(|e| TestCaseError::fail(e.to_string()))?;
            got.push(ModelBatch {
                base: h.base_offset,
                last: h.last_offset(),
                tag: tag_of(&first_value(bytes)),
                size: bytes.len(),
            });
        }
        offset = r.next_offset;
    }
    let want: Vec<ModelBatch> = model.visible().cloned().collect();
    prop_assert_eq!(got, want);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let open = || {
        PartitionLog::open(dir.path(), "m", 0, config())
            .map_err(|e| TestCaseError::fail(e.to_string()))
    };
    let mut log = open()?;
    let mut model = Model::default();
    let mut tag = 0u64;
    for op in ops {
        match op {
            Op::Append { records, size } => {
                let batch = batch_of(records, size, tag, 0);
                let out = log
                    .append(batch.clone(), 0, 0)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(out.base_offset, model.end);
                model.batches.push(ModelBatch {
                    base: model.end,
                    last: out.last_offset,
                    tag,
                    size: batch.len(),
                });
                model.end = out.last_offset + 1;
                tag += 1;
                log.set_high_watermark(model.end);
            }
            Op::Read {
                at,
                max_bytes,
                min_one,
                hw_back,
            } => {
                let offset = model.pick(at);
                let max_offset = (model.end - hw_back as i64).max(model.start);
                let r = log
                    .read(offset, max_bytes as usize, max_offset, min_one)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got: Vec<ModelBatch> = iter_batches(&r.records)
                    .map(|b| {
                        b.map(|(h, bytes)| ModelBatch {
                            base: h.base_offset,
                            last: h.last_offset(),
                            tag: tag_of(&first_value(bytes)),
                            size: bytes.len(),
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                // A prefix of what the model holds from the batch containing `offset`, within
                // the limits (reads may stop at a segment boundary).
                let expect: Vec<&ModelBatch> = model
                    .visible()
                    .filter(|b| b.last >= offset && b.last < max_offset)
                    .collect();
                prop_assert!(got.len() <= expect.len());
                for (g, e) in got.iter().zip(&expect) {
                    prop_assert_eq!(g, *e);
                }
                let total: usize = got.iter().map(|b| b.size).sum();
                prop_assert!(total <= max_bytes as usize || (min_one && got.len() == 1));
                if let Some(first) = expect.first() {
                    let fits = first.size <= max_bytes as usize || min_one;
                    prop_assert_eq!(!got.is_empty(), fits, "first batch returned iff it fits");
                }
                prop_assert_eq!(r.next_offset, got.last().map_or(offset, |b| b.last + 1));
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close()
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                drop(log);
                log = open()?;
                prop_assert_eq!(log.recovery_stats().bytes_truncated, 0);
                log.set_high_watermark(model.end);
            }
            Op::Truncate { at } => {
                let offset = model.pick(at);
                log.truncate_to(offset)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if offset < model.end {
                    if offset <= model.start {
                        model.batches.clear();
                        model.start = offset;
                        model.end = offset;
                    } else {
                        let keep = model
                            .batches
                            .iter()
                            .position(|b| b.last >= offset)
                            .unwrap_or(model.batches.len());
                        match model.batches.get(keep) {
                            // The batch holding the offset also holds the log start.
                            Some(b) if b.base <= model.start => {
                                model.batches.clear();
                                model.end = model.start;
                            }
                            Some(b) => {
                                model.end = b.base;
                                model.batches.truncate(keep);
                            }
                            None => {}
                        }
                    }
                }
            }
            Op::DeleteRecords { at } => {
                let offset = model.pick(at);
                let start = log
                    .delete_records_before(offset)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.start = model.start.max(offset);
                prop_assert_eq!(start, model.start);
            }
        }
        check_all(&log, &model)?;
    }
    drop(log);
    let log = open()?;
    check_all(&log, &model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn log_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
