//! Consumer-group membership turned into the engine's `Assignment`, and a runner that keeps one
//! supervised partition worker per assigned partition.
//!
//! The group's consumer is only a membership token: it subscribes so that Kafka's group protocol
//! spreads partitions over the worker processes (cooperative-sticky, so a rebalance moves only
//! the partitions that must move), pauses what it is given, and never reads records. Workers read
//! through `KafkaLog` from their checkpoints' offsets.
//!
//! Offsets are never committed to Kafka, not even advisorily: the checkpoints are the only
//! positions, and a committed offset that lagged or led them would mislead anyone reading it.
//!
//! **Invariant:** exactness never depends on the group. Two members may both believe they own a
//! partition for a moment during a rebalance; the store's generation fencing rejects the older
//! owner's writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adclick_core::ids::PartitionId;
use adclick_core::operator::AggregatorConfig;
use adclick_engine::supervisor::Supervision;
use adclick_engine::worker::{Assignment, SupervisorExit, WorkerConfig, WorkerEnv, supervise};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use super::context::log_to_tracing;
use super::{KafkaConfig, KafkaSetupError};

/// How often the membership thread polls; it also bounds how long `leave` takes to notice.
const GROUP_POLL_MS: u64 = 100;
/// How often the runner looks for supervisors that exited on their own.
const RUNNER_REAP_MS: u64 = 200;

/// Group timing unless the config's properties say otherwise. librdkafka's defaults (45 s
/// session, 300 s poll interval, which the broker also uses as the rebalance timeout) leave a
/// crashed worker's partitions unread for most of a minute, and make every rebalance wait that
/// long for members that are gone. The membership thread polls every `GROUP_POLL_MS`, so a short
/// poll interval costs nothing.
const GROUP_TIMING_DEFAULTS: [(&str, &str); 2] = [
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
];

struct GroupContext {
    topic: String,
    assigned: watch::Sender<BTreeSet<PartitionId>>,
}

impl GroupContext {
    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<PartitionId> {
        list.elements()
            .iter()
            .filter(|element| element.topic() == self.topic && element.partition() >= 0)
            .map(|element| PartitionId(element.partition() as u32))
            .collect()
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_to_tracing(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "librdkafka group consumer error");
    }
}

impl ConsumerContext for GroupContext {
    /// Revocations take effect before librdkafka gives the partitions up, so that a worker stops
    /// as early as possible; the new owner's claim fences it anyway.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked = self.partitions_of(list);
                tracing::info!(?revoked, "partitions revoked");
                self.assigned.send_modify(|assigned| {
                    for partition in &revoked {
                        assigned.remove(partition);
                    }
                });
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    /// With cooperative-sticky, `list` holds only the newly added partitions.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // The membership consumer must not fetch: workers read the partitions themselves.
            if let Err(error) = consumer.pause(list) {
                tracing::warn!(%error, "cannot pause the membership consumer's partitions");
            }
            let added = self.partitions_of(list);
            tracing::info!(?added, "partitions assigned");
            self.assigned
                .send_modify(|assigned| assigned.extend(added.iter().copied()));
        }
    }
}

/// This process's membership in the workers' consumer group.
pub struct KafkaGroup {
    assigned: watch::Receiver<BTreeSet<PartitionId>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KafkaGroup {
    /// Joins the group; assignments arrive on `assigned()` once the group has rebalanced.
    pub fn join(config: &KafkaConfig) -> Result<KafkaGroup, KafkaSetupError> {
        config.validate()?;
        let (sender, receiver) = watch::channel(BTreeSet::new());
        let context = GroupContext {
            topic: config.topic.clone(),
            assigned: sender,
        };
        let mut client_config = config.client_config("member");
        for (key, value) in GROUP_TIMING_DEFAULTS {
            if !config.properties.contains_key(key) {
                client_config.set(key, value);
            }
        }
        let consumer: BaseConsumer<GroupContext> = client_config
            .set("group.id", &config.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Should a fetch slip in before the pause, start at the end: nothing is read twice.
            .set("auto.offset.reset", "latest")
            .create_with_context(context)
            .map_err(KafkaSetupError::client("create the group consumer"))?;
        consumer
            .subscribe(&[&config.topic])
            .map_err(KafkaSetupError::client(format!(
                "subscribe to topic {:?}",
                config.topic
            )))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("kafka-group-{}", config.group_id))
            .spawn({
                let stop = stop.clone();
                move || stay_in_group(consumer, &stop)
            })
            .expect("spawn the group membership thread");
        Ok(KafkaGroup {
            assigned: receiver,
            stop,
            thread: Some(thread),
        })
    }

    /// True iff the partition is assigned to this member right now.
    pub fn assignment(&self) -> Assignment {
        let assigned = self.assigned.clone();
        Arc::new(move |partition| assigned.borrow().contains(&partition))
    }

    /// The current assignment, updated on every rebalance.
    pub fn assigned(&self) -> watch::Receiver<BTreeSet<PartitionId>> {
        self.assigned.clone()
    }

    /// Leaves the group (its partitions go to the other members) and waits until it has.
    pub fn leave(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("the group membership thread does not panic");
        }
    }
}

impl Drop for KafkaGroup {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Polls the group consumer so that it heartbeats and runs rebalances, until told to stop; then
/// closes it, which leaves the group at once instead of after a session timeout.
fn stay_in_group(consumer: BaseConsumer<GroupContext>, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(GROUP_POLL_MS)) {
            None | Some(Ok(_)) => {}
            Some(Err(error)) => tracing::warn!(%error, "group consumer poll error"),
        }
    }
    let context = consumer.context().clone();
    drop(consumer);
    context.assigned.send_replace(BTreeSet::new());
}

/// How `run_group_worker` runs each partition.
#[derive(Clone, Copy, Debug)]
pub struct GroupWorkerConfig {
    pub worker: WorkerConfig,
    pub aggregator: AggregatorConfig,
}

struct Running {
    stop: watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<SupervisorExit>,
}

/// Joins the group and runs a supervised worker for every partition assigned to this process:
/// it starts one when a partition arrives and stops it when the partition is revoked (the worker
/// then takes a final barrier and stops writing). Returns once `stop` turns true and every
/// supervisor has exited; the group is left last.
pub async fn run_group_worker(
    kafka: &KafkaConfig,
    config: GroupWorkerConfig,
    env: WorkerEnv,
    mut stop: watch::Receiver<bool>,
    supervision: Arc<Supervision>,
) -> Result<(), KafkaSetupError> {
    let group = KafkaGroup::join(kafka)?;
    let assignment = group.assignment();
    let mut assigned = group.assigned();
    let mut running: BTreeMap<PartitionId, Running> = BTreeMap::new();
    let mut stopping: Vec<tokio::task::JoinHandle<SupervisorExit>> = Vec::new();
    while !*stop.borrow() {
        let current = assigned.borrow_and_update().clone();
        let finished_or_revoked: Vec<PartitionId> = running
            .iter()
            .filter(|(partition, run)| !current.contains(partition) || run.supervisor.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in finished_or_revoked {
            let run = running.remove(&partition).expect("listed above");
            let _ = run.stop.send(true);
            stopping.push(run.supervisor);
        }
        for partition in current.iter().copied() {
            running.entry(partition).or_insert_with(|| {
                let (stop_partition, stopped) = watch::channel(false);
                let supervisor = tokio::spawn(supervise(
                    partition,
                    config.worker,
                    config.aggregator,
                    env.clone(),
                    stopped,
                    supervision.clone(),
                    assignment.clone(),
                ));
                Running {
                    stop: stop_partition,
                    supervisor,
                }
            });
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = assigned.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(RUNNER_REAP_MS)) => {}
        }
        stopping.retain(|supervisor| !supervisor.is_finished());
    }
    for (_, run) in std::mem::take(&mut running) {
        let _ = run.stop.send(true);
        stopping.push(run.supervisor);
    }
    for supervisor in stopping {
        let _ = supervisor.await;
    }
    tokio::task::spawn_blocking(move || group.leave())
        .await
        .expect("leaving the group does not panic");
    Ok(())
}
