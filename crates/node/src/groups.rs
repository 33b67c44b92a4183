//! The runtime around the sans-IO group coordinator: one task owns the [`GroupCoordinator`],
//! feeds it requests and time, and performs its effects (replies, appends to
//! `__consumer_offsets`).
//!
//! Appends are made by the task itself, in the order the coordinator emits them (so one
//! partition's records keep their order); waiting for them to be durable happens off the task,
//! which hears back through its own queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use sluice_coordinator::{
    AppendId, Effect, GroupConfig, GroupCoordinator, ReplyToken, Request, Response, codes,
};
use sluice_protocol::records::{NewRecord, ProducerInfo, build_batch, read_records};
use sluice_replication::partition::Acks;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

use crate::broker::{Completion, RequestContext};
use crate::cluster::{Cluster, OFFSETS_TOPIC};
use crate::config::BrokerConfig;
use crate::handlers::now_ms;
use sluice_replication::partition::Partition;
use sluice_replication::raft::replica::leads;

/// Requests queued for the coordinator task; a full queue pushes back on connections.
const QUEUE: usize = 1024;

enum Command {
    Request {
        request: Box<Request>,
        version: i16,
        client_id: String,
        client_host: String,
        reply: oneshot::Sender<Response>,
    },
    AppendDone {
        id: AppendId,
        result: Result<(), i16>,
    },
    TopicsDeleted(Vec<String>),
    /// This node now leads the offsets partition: its groups are loading.
    Gained(i32),
    /// The partition's records, read after gaining it.
    Loaded {
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
    },
    /// This node no longer leads the offsets partition.
    Lost(i32),
    Stop,
}

/// Consumer groups on this node.
pub struct Groups {
    tx: mpsc::Sender<Command>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    partitions: i32,
    /// Tasks following the leadership of the offsets partitions (multi-node).
    followers: Vec<JoinHandle<()>>,
}

impl Groups {
    /// Creates `__consumer_offsets` if needed, replays it, and starts the coordinator task.
    pub async fn start(config: &BrokerConfig, cluster: Arc<Cluster>) -> anyhow::Result<Groups> {
        let mut topic_configs = BTreeMap::new();
        topic_configs.insert("cleanup.policy".to_string(), "compact".to_string());
        topic_configs.insert(
            "segment.bytes".to_string(),
            config.offsets_topic_segment_bytes.to_string(),
        );
        cluster
            .ensure_internal_topic(
                OFFSETS_TOPIC,
                config.offsets_topic_num_partitions,
                topic_configs,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create {OFFSETS_TOPIC}: {}", e.message))?;
        // The topic's partition count is fixed at creation; a later change of the setting must
        // not move groups away from their records.
        let partitions = cluster
            .image()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(config.offsets_topic_num_partitions, |t| {
                t.partitions.len() as i32
            });
        let group_config = GroupConfig {
            group_min_session_timeout_ms: config.group_setting("group.min.session.timeout.ms")
                as i32,
            group_max_session_timeout_ms: config.group_setting("group.max.session.timeout.ms")
                as i32,
            group_max_size: config.group_setting("group.max.size") as usize,
            group_initial_rebalance_delay_ms: config
                .group_setting("group.initial.rebalance.delay.ms")
                as i32,
            offset_metadata_max_bytes: config.group_setting("offset.metadata.max.bytes") as usize,
            offsets_retention_minutes: config.group_setting("offsets.retention.minutes"),
            offsets_retention_check_interval_ms: config
                .group_setting("offsets.retention.check.interval.ms"),
        };
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let mut coordinator = GroupCoordinator::new(group_config, partitions, seed);
        let clustered = cluster.is_clustered();
        let coordinator = if clustered {
            // Loaded partition by partition as this node comes to lead them.
            coordinator
        } else {
            let cluster = cluster.clone();
            let (coordinator, records) = tokio::task::spawn_blocking(move || {
                replay(&cluster, &mut coordinator, partitions).map(|n| (coordinator, n))
            })
            .await??;
            info!(
                partitions,
                records, "consumer groups loaded from {OFFSETS_TOPIC}"
            );
            coordinator
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let followers = if clustered {
            (0..partitions)
                .filter_map(|p| cluster.partition(OFFSETS_TOPIC, p))
                .map(|partition| tokio::spawn(follow_offsets_leadership(partition, tx.clone())))
                .collect()
        } else {
            Vec::new()
        };
        let runtime = Runtime {
            coordinator,
            cluster,
            waiting: HashMap::new(),
            next_token: 0,
            tx: tx.clone(),
        };
        let task = tokio::spawn(runtime.run(rx));
        Ok(Groups {
            tx,
            task: tokio::sync::Mutex::new(Some(task)),
            partitions,
            followers,
        })
    }

    /// Partitions of `__consumer_offsets` (for FindCoordinator).
    pub fn offsets_partitions(&self) -> i32 {
        self.partitions
    }

    /// Starts a group request; the answer comes when the coordinator replies.
    pub fn start_request(
        &self,
        body: RequestKind,
        version: i16,
        ctx: &RequestContext,
    ) -> Completion {
        let Ok(request) = Request::try_from(body) else {
            error!("a non-group request was routed to the group coordinator");
            return Completion::Ready(None);
        };
        let (reply, rx) = oneshot::channel();
        let command = Command::Request {
            request: Box::new(request),
            version,
            client_id: ctx.client_id.clone(),
            client_host: format!("/{}", ctx.peer.ip()),
            reply,
        };
        let tx = self.tx.clone();
        Completion::Later(Box::pin(async move {
            if tx.send(command).await.is_err() {
                return None;
            }
            rx.await.ok().map(|r| Box::new(ResponseKind::from(r)))
        }))
    }

    /// Drops the committed offsets of deleted topics from every group, as Kafka does.
    pub async fn topics_deleted(&self, topics: Vec<String>) {
        let _ = self.tx.send(Command::TopicsDeleted(topics)).await;
    }

    /// Stops the coordinator task; parked requests are dropped with their connections.
    pub async fn shutdown(&self) {
        for f in &self.followers {
            f.abort();
        }
        let _ = self.tx.send(Command::Stop).await;
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// Replays every partition of `__consumer_offsets` into the coordinator (a single node leads
/// them all). Returns the number of records read.
fn replay(
    cluster: &Cluster,
    coordinator: &mut GroupCoordinator,
    partitions: i32,
) -> anyhow::Result<usize> {
    let now = now_ms();
    let mut total = 0;
    for p in 0..partitions {
        let Some(partition) = cluster.partition(OFFSETS_TOPIC, p) else {
            anyhow::bail!("{OFFSETS_TOPIC}-{p} is missing");
        };
        coordinator.begin_load(p);
        total += read_offsets_partition(&partition, |offset, key, value| {
            if let Err(e) = coordinator.load_record(p, key, value) {
                warn!(partition = p, offset, "skipping record: {e}");
            }
        })?;
        // Nothing is waiting yet, so the effects of loading are empty.
        let _ = coordinator.finish_load(p, now);
    }
    Ok(total)
}

/// Reads a `__consumer_offsets` partition's committed records, key and value, in order.
/// Returns how many were read.
fn read_offsets_partition(
    partition: &Partition,
    mut each: impl FnMut(i64, &[u8], Option<&[u8]>),
) -> anyhow::Result<usize> {
    let p = partition.index();
    let mut total = 0;
    let mut offset = partition.log_start_offset();
    let end = partition.high_watermark();
    while offset < end {
        let chunk = partition
            .read(offset, 1 << 20, true)
            .map_err(|e| anyhow::anyhow!("reading {OFFSETS_TOPIC}-{p} at {offset}: {e}"))?;
        if chunk.is_empty() {
            break;
        }
        for batch in sluice_protocol::batch::iter_batches(&chunk) {
            let (header, bytes) = batch.map_err(|e| anyhow::anyhow!("{OFFSETS_TOPIC}-{p}: {e}"))?;
            offset = header.last_offset() + 1;
            let records = match read_records(bytes) {
                Ok((_, records)) => records,
                Err(e) => {
                    warn!(
                        partition = p,
                        offset = header.base_offset,
                        "skipping unreadable batch: {e}"
                    );
                    continue;
                }
            };
            for r in records {
                total += 1;
                let Some(key) = r.key else { continue };
                each(r.offset, key, r.value);
            }
        }
    }
    Ok(total)
}

/// In a multi-node cluster a node coordinates the groups of the `__consumer_offsets`
/// partitions it leads. One task per partition follows its leadership: on becoming leader it
/// waits until its high watermark covers its whole log (the new term's first commit), reads
/// the partition and hands the records to the coordinator; on losing it, the coordinator drops
/// the partition's groups.
async fn follow_offsets_leadership(partition: Arc<Partition>, tx: mpsc::Sender<Command>) {
    let Some(replica) = partition.replica().cloned() else {
        return;
    };
    let p = partition.index();
    let mut roles = replica.roles();
    let mut leading = false;
    loop {
        let now_leading = leads(&roles.borrow_and_update());
        if now_leading && !leading {
            leading = true;
            if tx.send(Command::Gained(p)).await.is_err() {
                return;
            }
            // Everything in a new leader's log is committed with its term's first entry; if
            // leadership goes again first, the next turn of the loop reports the loss.
            let mut hw = partition.subscribe();
            let caught_up = loop {
                if *hw.borrow_and_update() >= partition.log().log_end_offset() {
                    break true;
                }
                if !leads(&roles.borrow_and_update()) {
                    break false;
                }
                tokio::select! {
                    changed = hw.changed() => if changed.is_err() { return },
                    changed = roles.changed() => if changed.is_err() { return },
                }
            };
            if !caught_up {
                continue;
            }
            let read = Arc::clone(&partition);
            let loaded = tokio::task::spawn_blocking(move || {
                let mut records = Vec::new();
                read_offsets_partition(&read, |_, k, v| {
                    records.push((Bytes::copy_from_slice(k), v.map(Bytes::copy_from_slice)));
                })
                .map(|_| records)
            })
            .await;
            let records = match loaded {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    // Loading nothing would forget the groups' offsets: stay "loading"
                    // (clients retry) and read again in a second.
                    error!(
                        partition = p,
                        "cannot load {OFFSETS_TOPIC}-{p}: {e:#}; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    leading = false;
                    continue;
                }
                _ => return,
            };
            info!(
                partition = p,
                records = records.len(),
                "coordinating the groups of {OFFSETS_TOPIC}-{p} (this node leads it)"
            );
            if tx
                .send(Command::Loaded {
                    partition: p,
                    records,
                })
                .await
                .is_err()
            {
                return;
            }
        } else if !now_leading && leading {
            leading = false;
            info!(
                partition = p,
                "no longer leading {OFFSETS_TOPIC}-{p}: its groups move"
            );
            if tx.send(Command::Lost(p)).await.is_err() {
                return;
            }
        }
        if roles.changed().await.is_err() {
            return;
        }
    }
}

struct Runtime {
    coordinator: GroupCoordinator,
    cluster: Arc<Cluster>,
    waiting: HashMap<ReplyToken, oneshot::Sender<Response>>,
    next_token: u64,
    tx: mpsc::Sender<Command>,
}

impl Runtime {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let deadline = self.coordinator.next_deadline();
            let sleep_until = deadline
                .map(|d| Instant::now() + Duration::from_millis((d - now_ms()).max(0) as u64));
            let command = tokio::select! {
                c = rx.recv() => c,
                _ = async {
                    match sleep_until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    let effects = self.coordinator.tick(now_ms());
                    self.perform(effects);
                    continue;
                }
            };
            let effects = match command {
                None | Some(Command::Stop) => break,
                Some(Command::Request {
                    request,
                    version,
                    client_id,
                    client_host,
                    reply,
                }) => {
                    let token = ReplyToken(self.next_token);
                    self.next_token += 1;
                    self.waiting.insert(token, reply);
                    self.coordinator.handle(
                        token,
                        version,
                        *request,
                        &client_id,
                        &client_host,
                        now_ms(),
                    )
                }
                Some(Command::AppendDone { id, result }) => {
                    self.coordinator.append_done(id, result, now_ms())
                }
                Some(Command::TopicsDeleted(topics)) => {
                    self.coordinator.topics_deleted(&topics, now_ms())
                }
                Some(Command::Gained(p)) => self.coordinator.begin_load(p),
                Some(Command::Loaded { partition, records }) => {
                    if self.coordinator.is_loading(partition) {
                        let (effects, _) = self.coordinator.load_partition(
                            partition,
                            records.iter().map(|(k, v)| (&k[..], v.as_deref())),
                            now_ms(),
                        );
                        effects
                    } else {
                        Vec::new()
                    }
                }
                Some(Command::Lost(p)) => self.coordinator.unload_partition(p),
            };
            self.perform(effects);
        }
        debug!("group coordinator stopped");
    }

    fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Reply {
                    token, response, ..
                } => {
                    if let Some(reply) = self.waiting.remove(&token) {
                        // The client may have gone; nothing to do then.
                        let _ = reply.send(response);
                    }
                }
                Effect::Append {
                    id,
                    partition,
                    records,
                } => self.append(id, partition, records),
            }
        }
    }

    fn append(&mut self, id: AppendId, partition: i32, records: Vec<(Bytes, Option<Bytes>)>) {
        let now = now_ms();
        let new: Vec<NewRecord<'_>> = records
            .iter()
            .map(|(k, v)| NewRecord {
                key: Some(k),
                value: v.as_deref(),
                headers: &[],
                timestamp: now,
            })
            .collect();
        let batch = Bytes::from(build_batch(&new, ProducerInfo::NONE));
        let tx = self.tx.clone();
        let Some(target) = self.cluster.partition(OFFSETS_TOPIC, partition) else {
            let _ = tx.try_send(Command::AppendDone {
                id,
                result: Err(codes::NOT_LEADER_OR_FOLLOWER),
            });
            return;
        };
        match target.append(batch, Acks::All, now) {
            Ok(pending) => {
                tokio::spawn(async move {
                    let result = pending.acknowledged().await.map(|_| ()).map_err(|e| {
                        warn!(partition, "offsets append not acknowledged: {e}");
                        e.error_code()
                    });
                    let _ = tx.send(Command::AppendDone { id, result }).await;
                });
            }
            Err(e) => {
                warn!(partition, "offsets append refused: {e}");
                let code = e.error_code();
                tokio::spawn(async move {
                    let _ = tx
                        .send(Command::AppendDone {
                            id,
                            result: Err(code),
                        })
                        .await;
                });
            }
        }
    }
}
