//! [`LogManager`]: every partition log of one data directory, opened in parallel at start-up,
//! plus the background thread that runs `flush.ms` flushes, periodic checkpoints and retention,
//! and the log cleaner thread (`log.cleaner.enable`) that compacts `cleanup.policy=compact` logs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cleaner::CleanOptions;
use crate::config::{BrokerLogConfig, LogConfig};
use crate::error::StorageError;
use crate::partition::{PartitionLog, RecoveryStats};

/// Directory name suffix of a deleted partition waiting for background removal.
const DELETE_SUFFIX: &str = ".delete";

type Logs = BTreeMap<(String, i32), Arc<PartitionLog>>;
type Opened = Result<(String, i32, PartitionLog), StorageError>;

/// All partitions of one data directory.
pub struct LogManager {
    data_dir: PathBuf,
    broker: BrokerLogConfig,
    logs: Arc<RwLock<Logs>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    background: Mutex<Option<JoinHandle<()>>>,
    cleaner: Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Splits `<topic>-<partition>`; topic names may themselves contain dashes.
fn parse_dir_name(name: &str) -> Option<(String, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    let p: i32 = partition.parse().ok()?;
    (!topic.is_empty() && p >= 0 && partition == p.to_string()).then(|| (topic.to_string(), p))
}

fn remove_in_background(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    let spawned = thread::Builder::new().name("sluice-log-delete".into()).spawn(move || {
        for d in dirs {
            if let Err(e) = fs::remove_dir_all(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "could not remove deleted partition directory");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the deletion thread");
    }
}

impl LogManager {
    /// Opens every partition directory in `data_dir` with the broker's default config,
    /// recovering them on `num.recovery.threads.per.data.dir` threads. Topic overrides are
    /// applied afterwards with [`PartitionLog::set_config`] (they live in the metadata store).
    pub fn open(data_dir: &Path, broker: BrokerLogConfig) -> Result<Self, StorageError> {
        let defaults = broker.log_config(&BTreeMap::new())?;
        Self::open_with(data_dir, broker, &|_| defaults.clone())
    }

    /// As [`LogManager::open`], with each topic's config from `config_for(topic)`.
    pub fn open_with(
        data_dir: &Path,
        broker: BrokerLogConfig,
        config_for: &(dyn Fn(&str) -> LogConfig + Sync),
    ) -> Result<Self, StorageError> {
        fs::create_dir_all(data_dir)
            .map_err(|e| StorageError::io(format!("creating {}", data_dir.display()), e))?;
        let mut todo = Vec::new();
        let mut doomed = Vec::new();
        let entries = fs::read_dir(data_dir)
            .map_err(|e| StorageError::io(format!("listing {}", data_dir.display()), e))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| StorageError::io(format!("listing {}", data_dir.display()), e))?;
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(DELETE_SUFFIX) {
                doomed.push(entry.path());
            } else if let Some((topic, partition)) = parse_dir_name(&name) {
                todo.push((topic, partition, entry.path()));
            }
        }
        remove_in_background(doomed);

        let threads = broker.recovery_threads().min(todo.len()).max(1);
        let next = Mutex::new(todo.into_iter());
        let opened: Mutex<Vec<Opened>> = Mutex::new(Vec::new());
        thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let job = next.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let Some((topic, partition, dir)) = job else {
                            break;
                        };
                        let result =
                            PartitionLog::open(&dir, &topic, partition, config_for(&topic)).map(
                                |log| {
                                    log.set_page_cache_tail(broker.cache_tail_bytes());
                                    (topic, partition, log)
                                },
                            );
                        opened
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(result);
                    }
                });
            }
        });
        let mut logs = BTreeMap::new();
        for r in opened.into_inner().unwrap_or_else(|p| p.into_inner()) {
            let (topic, partition, log) = r?;
            logs.insert((topic, partition), Arc::new(log));
        }
        let recovered: Vec<&RecoveryStats> = logs
            .values()
            .map(|l| l.recovery_stats())
            .filter(|r| !r.clean_shutdown)
            .collect();
        if logs.is_empty() {
            tracing::info!(dir = %data_dir.display(), "no partition logs yet");
        } else if recovered.is_empty() {
            tracing::info!(dir = %data_dir.display(), partitions = logs.len(), "opened logs after a clean shutdown");
        } else {
            // What an operator wants after a crash: how much was checked and what was cut.
            tracing::warn!(
                dir = %data_dir.display(),
                partitions = logs.len(),
                unclean = recovered.len(),
                batches_scanned = recovered.iter().map(|r| r.batches_scanned).sum::<u64>(),
                bytes_scanned = recovered.iter().map(|r| r.bytes_scanned).sum::<u64>(),
                bytes_truncated = recovered.iter().map(|r| r.bytes_truncated).sum::<u64>(),
                "opened logs after an unclean shutdown: recovered the tails after each recovery point"
            );
        }
        Ok(LogManager {
            data_dir: data_dir.to_path_buf(),
            broker,
            logs: Arc::new(RwLock::new(logs)),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            background: Mutex::new(None),
            cleaner: Mutex::new(None),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker-level settings.
    pub fn broker_config(&self) -> &BrokerLogConfig {
        &self.broker
    }

    /// The log of one partition, if it exists here.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<PartitionLog>> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Creates (or returns the existing) log of a partition.
    pub fn create(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
    ) -> Result<Arc<PartitionLog>, StorageError> {
        let mut logs = self.logs.write().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = logs.get(&(topic.to_string(), partition)) {
            return Ok(Arc::clone(log));
        }
        let dir = self.data_dir.join(format!("{topic}-{partition}"));
        let log = Arc::new(PartitionLog::open(&dir, topic, partition, config)?);
        log.set_page_cache_tail(self.broker.cache_tail_bytes());
        logs.insert((topic.to_string(), partition), Arc::clone(&log));
        Ok(log)
    }

    /// Removes every partition of `topic`: the directories are renamed to `*.delete` at once
    /// (so a restart never brings them back) and removed by a background thread.
    pub fn delete_topic(&self, topic: &str) -> Result<(), StorageError> {
        let removed: Vec<(i32, Arc<PartitionLog>)> = {
            let mut logs = self.logs.write().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<(String, i32)> =
                logs.keys().filter(|(t, _)| t == topic).cloned().collect();
            keys.into_iter()
                .filter_map(|k| logs.remove(&k).map(|l| (k.1, l)))
                .collect()
        };
        let mut doomed = Vec::new();
        let stamp = now_ms();
        for (partition, log) in removed {
            log.mark_closed_for_delete();
            let from = self.data_dir.join(format!("{topic}-{partition}"));
            let to = self
                .data_dir
                .join(format!("{topic}-{partition}.{stamp}{DELETE_SUFFIX}"));
            fs::rename(&from, &to).map_err(|e| {
                StorageError::io(format!("renaming {} for deletion", from.display()), e)
            })?;
            doomed.push(to);
        }
        if !doomed.is_empty() {
            fs::File::open(&self.data_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    StorageError::io(format!("fsync of {}", self.data_dir.display()), e)
                })?;
        }
        remove_in_background(doomed);
        Ok(())
    }

    /// Every partition: `(topic, partition, log)`.
    pub fn partitions(&self) -> Vec<(String, i32, Arc<PartitionLog>)> {
        self.logs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((t, p), l)| (t.clone(), *p, Arc::clone(l)))
            .collect()
    }

    /// Starts the background thread: `flush.ms` checks every `log.flush.scheduler.interval.ms`,
    /// checkpoints of changed logs every `log.flush.offset.checkpoint.interval.ms` (10 s), and
    /// retention every `log.retention.check.interval.ms`. Calling it twice does nothing.
    pub fn start_background(&self) {
        let mut bg = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if bg.is_some() {
            return;
        }
        let logs = Arc::clone(&self.logs);
        let stop = Arc::clone(&self.stop);
        let tick = self.broker.flush_scheduler_interval_ms().max(1) as u64;
        let checkpoint_every = self.broker.checkpoint_interval_ms().max(1);
        let retention_every = self.broker.retention_check_interval_ms().max(1);
        let handle = thread::Builder::new().name("sluice-log-background".into()).spawn(move || {
            let mut last_checkpoint = now_ms();
            let mut last_retention = now_ms();
            loop {
                {
                    let (flag, cv) = &*stop;
                    let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
                    let (guard, _) = cv.wait_timeout_while(guard, Duration::from_millis(tick), |s| !*s).unwrap_or_else(|p| p.into_inner());
                    if *guard {
                        return;
                    }
                }
                let now = now_ms();
                let all: Vec<Arc<PartitionLog>> = logs.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                for log in &all {
                    log.flush_if_due(now);
                }
                if now - last_checkpoint >= checkpoint_every {
                    last_checkpoint = now;
                    for log in &all {
                        if let Err(e) = log.checkpoint_if_changed() {
                            tracing::warn!(log = log.name(), error = %e, "periodic checkpoint failed");
                        }
                    }
                }
                if now - last_retention >= retention_every {
                    last_retention = now;
                    for log in &all {
                        if let Err(e) = log.apply_retention(now) {
                            tracing::warn!(log = log.name(), error = %e, "retention failed");
                        }
                    }
                }
            }
        });
        match handle {
            Ok(h) => *bg = Some(h),
            Err(e) => tracing::error!(error = %e, "could not start the log background thread"),
        }
        drop(bg);
        self.start_cleaner();
    }

    /// The log cleaner thread (Kafka's runs apart from retention too, so a long clean never
    /// delays flushes or checkpoints): it cleans every compacted log that is due, and sleeps
    /// `log.cleaner.backoff.ms` when none was.
    fn start_cleaner(&self) {
        if !self.broker.cleaner_enable() {
            tracing::info!("log cleaner disabled (log.cleaner.enable=false)");
            return;
        }
        let logs = Arc::clone(&self.logs);
        let stop = Arc::clone(&self.stop);
        let backoff = self.broker.cleaner_backoff_ms().max(1) as u64;
        let opts = CleanOptions::with_buffer(self.broker.cleaner_dedupe_buffer_size());
        let handle = thread::Builder::new()
            .name("sluice-log-cleaner".into())
            .spawn(move || {
                let stopped = || *stop.0.lock().unwrap_or_else(|p| p.into_inner());
                let mut cleaned_any = false;
                loop {
                    if !cleaned_any {
                        let (flag, cv) = &*stop;
                        let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
                        let (guard, _) = cv
                            .wait_timeout_while(guard, Duration::from_millis(backoff), |s| !*s)
                            .unwrap_or_else(|p| p.into_inner());
                        if *guard {
                            return;
                        }
                    }
                    cleaned_any = false;
                    let all: Vec<Arc<PartitionLog>> = logs
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    for log in all.iter().filter(|l| l.config().cleanup_policy.compacts()) {
                        if stopped() {
                            return;
                        }
                        match log.clean(now_ms(), opts) {
                            Ok(Some(_)) => cleaned_any = true,
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(log = log.name(), error = %e, "log cleaning failed")
                            }
                        }
                    }
                }
            });
        match handle {
            Ok(h) => *self.cleaner.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => tracing::error!(error = %e, "could not start the log cleaner thread"),
        }
    }

    /// Clean shutdown: stops the background thread, then flushes and checkpoints every log
    /// (marked clean, so the next start scans nothing). Returns the first failure.
    pub fn shutdown(&self) -> Result<(), StorageError> {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        for slot in [&self.background, &self.cleaner] {
            if let Some(h) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = h.join();
            }
        }
        let mut first = Ok(());
        for (_, _, log) in self.partitions() {
            if let Err(e) = log.close() {
                tracing::error!(log = log.name(), error = %e, "closing log failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names() {
        assert_eq!(parse_dir_name("orders-3"), Some(("orders".into(), 3)));
        assert_eq!(parse_dir_name("my-topic-12"), Some(("my-topic".into(), 12)));
        assert_eq!(parse_dir_name("meta"), None);
        assert_eq!(parse_dir_name("x-01"), None);
        assert_eq!(parse_dir_name("-1"), None);
    }
}
