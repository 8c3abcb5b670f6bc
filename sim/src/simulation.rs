//! The deterministic simulator: the production ingest core, partition workers and checkpoint
//! protocol under madsim, in virtual time, with injected faults, judged by the oracle.
//!
//! One seed fixes everything: the traffic, which faults fire when (in swarm mode, even which
//! faults are on and how hard), and madsim's scheduling. A run has a *safety phase* (traffic
//! with faults) and a *liveness phase* (faults healed, every killed node restarted, the pipeline
//! must drain and close every window within the scenario's timeout). Every run ends with a trace
//! hash over the final store, the partitions' state and the fault trace: the same seed must give
//! the same hash.
//!
//! The cluster: the main node runs the traffic generator and the ingest core; each worker node
//! runs supervised workers for the partitions it owns. Faults: worker node kills (dropping every
//! task at whatever await point it was), pauses, partition takeovers (a new generation while the
//! old owner is paused; it is fenced when it wakes), store errors (before or after the write is
//! applied) and latency, log outages (before or after an append, so the idempotent retry path
//! runs), non-idempotent duplicate appends, and checkpoint store errors.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use adclick_core::fraud::{FraudList, FraudRegistry};
use adclick_core::ids::*;
use adclick_core::operator::Series;
use adclick_core::window::Lane;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::{MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::ingest::{Ack, IngestConfig, IngestCore, IngestError};
use adclick_engine::salt_plans::SaltPlanStore;
use adclick_engine::scenario::{Invariant, Scenario};
use adclick_engine::seams::*;
use adclick_engine::supervisor::Supervision;
use adclick_engine::worker::{WorkerEnv, supervise};
use adclick_traffic::{GeneratedBatch, Generator};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use adclick_harness::faults::{
    FaultCounts, FaultRates, Faults, FaultyBlobs, FaultyLog, FaultyStore,
};
use adclick_harness::file_log_faults::{self, BaseLog};
use adclick_harness::history::{RecordingLog, RecordingStore, StatusHistory};
use adclick_harness::oracle::{self, Ledger, Verdict};

#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    pub seed: u64,
    #[cfg(feature = "canaries")]
    pub canary: Option<adclick_engine::worker::Canary>,
}

#[derive(Debug, Serialize)]
pub struct SimReport {
    pub scenario: String,
    pub seed: u64,
    pub trace_hash: String,
    pub virtual_s: f64,
    pub accepted: u64,
    pub log_records: u64,
    pub unique_billable_clicks: u64,
    pub rates: FaultRates,
    pub faults: FaultCounts,
    pub worker_restarts: u64,
    pub verdicts: Vec<Verdict>,
    pub passed: bool,
    /// Fault events in virtual time (ms since the epoch), for the trace file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

/// Who runs which partition, and the nodes.
struct Cluster {
    nodes: Vec<madsim::runtime::NodeHandle>,
    owners: Arc<Mutex<Vec<usize>>>,
}

const WORKER_NODES_MAX: u32 = 3;

/// Runs one seed of a scenario. Call inside a madsim runtime seeded with `options.seed`.
///
/// Build the seams, start the workers and ingest nodes, drive traffic under the faults, heal
/// and drain, judge. The seed's random draws happen in one order, so a seed replays exactly.
pub async fn simulate(scenario: &Scenario, options: SimOptions) -> anyhow::Result<SimReport> {
    let mut rng = Pcg64Mcg::seed_from_u64(options.seed);
    let rates = FaultRates::draw(scenario, &mut rng);
    let faults = Arc::new(Faults::new(rates, rng.random()));
    let traffic_scenario = traffic_scenario(scenario, options.seed, &mut rng, &faults);
    let mut generator = Generator::new(&traffic_scenario);
    let seams = SimSeams::build(scenario, &options, &faults, &generator.fraud_list_text())?;
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let restarts = Supervision::new();
    let cluster = start_workers(scenario, &seams.env, &stop, &restarts);
    let ingest_config = traffic_scenario.ingest_config();
    let (ingest_slots, ingest_nodes) = start_ingest_nodes(scenario, &seams, ingest_config);
    let started_ms = SystemClock.now_ms();
    let losses = Arc::new(Mutex::new(oracle::CrashLosses::default()));
    let chaos = tokio::spawn(run_chaos(Chaos {
        faults: faults.clone(),
        log: seams.log.clone(),
        losses: losses.clone(),
        memory_store: seams.memory_store.clone(),
        nodes: cluster.nodes.iter().map(|n| n.id()).collect(),
        owners: cluster.owners.clone(),
        ingest_nodes,
        ingest_slots: ingest_slots.clone(),
        env: seams.env.clone(),
        scenario: scenario.clone(),
        stop: stop.clone(),
        restarts: restarts.clone(),
        seed: rng.random(),
    }));
    let rotations = tokio::spawn(rotate_fraud_lists(
        seams.registry.clone(),
        faults.clone(),
        scenario.sim.duration_s,
        options.seed ^ 0x0f1a_715e,
    ));
    let accepted = drive_traffic(
        &traffic_scenario,
        &mut generator,
        &ingest_slots,
        // Its own stream, so that adding ingest nodes leaves every other draw of the seed alone.
        options.seed ^ 0x1a9e_57ed,
    )
    .await?;
    // Liveness phase: heal everything and demand a full drain.
    faults.heal();
    let _ = chaos.await;
    let _ = rotations.await;
    let drained = drain(scenario, &seams, &cluster, &ingest_slots, stop_sender).await?;
    let losses = std::mem::take(&mut *losses.lock().expect("losses lock"));
    let judged = Judged {
        accepted,
        drained,
        losses,
        started_ms,
        worker_restarts: restarts.restarts(),
        rates,
    };
    judge(scenario, options.seed, &seams, &faults, judged).await
}

/// The scenario as the simulator drives it: its `[sim]` rate and duration, this seed, and in
/// swarm mode the traffic dimensions drawn for it.
fn traffic_scenario(
    scenario: &Scenario,
    seed: u64,
    rng: &mut Pcg64Mcg,
    faults: &Faults,
) -> Scenario {
    let mut traffic_scenario = scenario.clone();
    traffic_scenario.seed = seed;
    traffic_scenario.traffic.rate_per_s = scenario.sim.rate_per_s;
    traffic_scenario.traffic.duration_s = scenario.sim.duration_s;
    traffic_scenario.anomalies =
        adclick_harness::faults::draw_swarm_anomalies(scenario, rng, faults);
    traffic_scenario
}

/// The seams one seed runs on, each behind its fault wrapper, as `adclick serve` wires them.
struct SimSeams {
    registry: Arc<RwLock<FraudRegistry>>,
    /// The log under the fault wrapper: in memory, or the file log in a scratch directory.
    base_log: Arc<dyn BaseLog>,
    file_log_dir: Option<std::path::PathBuf>,
    log: Arc<FaultyLog>,
    memory_store: Arc<MemoryRealtimeStore>,
    /// What the store took, under the faults (which strike around it).
    history: Arc<StatusHistory>,
    blobs: Arc<FaultyBlobs>,
    env: WorkerEnv,
}

impl SimSeams {
    fn build(
        scenario: &Scenario,
        options: &SimOptions,
        faults: &Arc<Faults>,
        fraud_list_text: &str,
    ) -> anyhow::Result<SimSeams> {
        let mut registry = FraudRegistry::new();
        registry.register(FraudList::parse(fraud_list_text)?)?;
        let registry = Arc::new(RwLock::new(registry));
        let partitions = scenario.engine.partitions;
        let file_log_dir = scenario
            .sim
            .file_log
            .then(|| file_log_faults::scratch_dir(&scenario.name, options.seed));
        let base_log: Arc<dyn BaseLog> = match &file_log_dir {
            Some(dir) => Arc::new(file_log_faults::open_faulty(
                dir,
                partitions,
                faults.clone(),
            )?),
            None => Arc::new(MemoryLog::new(partitions)),
        };
        let log = Arc::new(FaultyLog {
            inner: base_log.clone(),
            faults: faults.clone(),
            duplicates: Mutex::default(),
            in_flight: Mutex::default(),
        });
        let memory_store = Arc::new(MemoryRealtimeStore::new());
        let history = Arc::new(StatusHistory::default());
        let store = Arc::new(FaultyStore {
            inner: Arc::new(RecordingStore {
                inner: memory_store.clone(),
                history: history.clone(),
                config: scenario.aggregator_config(),
            }),
            faults: faults.clone(),
        });
        let blobs = Arc::new(FaultyBlobs {
            inner: MemoryBlobStore::new(),
            faults: faults.clone(),
        });
        #[allow(unused_mut)]
        let mut env = WorkerEnv::new(
            log.clone(),
            store,
            CheckpointStore::new(blobs.clone()),
            Arc::new(SystemClock),
            registry.clone(),
        );
        #[cfg(feature = "canaries")]
        {
            env.canary = options.canary;
        }
        Ok(SimSeams {
            registry,
            base_log,
            file_log_dir,
            log,
            memory_store,
            history,
            blobs,
            env,
        })
    }
}

impl SimSeams {
    /// The log the oracle reads: a file log as it is on disk, read back with no faults (it must
    /// hold what the workers read, at the same offsets); else the log itself.
    fn judged_log(&self, partitions: u32) -> anyhow::Result<Arc<dyn Log>> {
        Ok(match &self.file_log_dir {
            Some(dir) => Arc::new(file_log_faults::reopen(dir, partitions)?),
            None => self.base_log.clone(),
        })
    }
}

/// The ingest nodes, each appending through the history (which times each append for the
/// idle-advance check), salt plans in the checkpoint blob store with its faults.
fn start_ingest_nodes(
    scenario: &Scenario,
    seams: &SimSeams,
    ingest_config: IngestConfig,
) -> (Vec<IngestSlot>, Vec<madsim::task::NodeId>) {
    let ingest_log: Arc<dyn Log> = Arc::new(RecordingLog {
        inner: seams.log.clone(),
        history: seams.history.clone(),
    });
    let salt_plans = SaltPlanStore::new(seams.blobs.clone(), scenario.engine.ingest_nodes);
    let slots: Vec<IngestSlot> = (0..scenario.sim.ingest_nodes.max(1))
        .map(|_| IngestSlot::default())
        .collect();
    let nodes = slots
        .iter()
        .enumerate()
        .map(|(index, slot)| {
            let config = ingest_config;
            start_ingest(
                index,
                ingest_log.clone(),
                config,
                slot.clone(),
                salt_plans.clone(),
            )
            .id()
        })
        .collect();
    (slots, nodes)
}

/// The drained run: every node resumed, ingest closed, every partition caught up and every
/// window closed (or the liveness timeout), then the workers asked to stop.
struct Drained {
    statuses: Vec<PartitionStatus>,
    /// The clock reading the statuses are as of: liveness judges their watermarks against it.
    clock: oracle::WorkerClock,
    drain_ms: u64,
}

async fn drain(
    scenario: &Scenario,
    seams: &SimSeams,
    cluster: &Cluster,
    ingest_slots: &[IngestSlot],
    stop_sender: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<Drained> {
    let handle = madsim::runtime::Handle::current();
    for node in &cluster.nodes {
        handle.resume(node.id());
    }
    for slot in ingest_slots {
        let live_ingest = slot.lock().expect("ingest slot lock").take();
        if let Some((core, flusher)) = live_ingest {
            core.close(flusher).await;
        }
    }
    let timeout = Duration::from_secs_f64(scenario.expect.liveness_timeout_s);
    let drain_started_ms = SystemClock.now_ms();
    let epoch_ms = scenario.engine.epoch_ms;
    let statuses = oracle::wait_until_drained(
        seams.base_log.as_ref(),
        seams.memory_store.as_ref(),
        &scenario.aggregator_config(),
        epoch_ms,
        timeout,
    )
    .await?;
    let clock = oracle::WorkerClock::system(epoch_ms);
    let drain_ms = SystemClock.now_ms() - drain_started_ms;
    let _ = stop_sender.send(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Drained {
        statuses,
        clock,
        drain_ms,
    })
}

/// What the judge needs besides the seams.
struct Judged {
    accepted: Accepted,
    drained: Drained,
    losses: oracle::CrashLosses,
    started_ms: u64,
    worker_restarts: u64,
    /// The fault rates drawn for the seed (healing zeroes the live ones).
    rates: FaultRates,
}

/// Judges the drained seed against the oracle, as the workers judged fraud (the list each
/// partition's checkpoints name per offset), and writes the report.
async fn judge(
    scenario: &Scenario,
    seed: u64,
    seams: &SimSeams,
    faults: &Faults,
    judged: Judged,
) -> anyhow::Result<SimReport> {
    let Judged {
        accepted,
        drained,
        losses,
        started_ms,
        worker_restarts,
        rates,
    } = judged;
    let config = scenario.aggregator_config();
    let scan = seams.memory_store.scan().await?;
    let judged_log = seams.judged_log(scenario.engine.partitions)?;
    let checkpoints = CheckpointStore::new(seams.blobs.clone());
    let history = Some(seams.history.as_ref());
    let log = judged_log.as_ref();
    let (fraud, expected) =
        oracle::expected_as_judged(log, &checkpoints, &seams.registry, &config, true, history)
            .await?;
    let counts = *faults.counts.lock().expect("counts lock");
    let evidence = oracle::Evidence {
        expected: &expected,
        scan: &scan,
        drained: &drained.statuses,
        config: &config,
        drained_clock: drained.clock,
        drain_ms: drained.drain_ms,
    };
    let billing = match scenario
        .expect
        .invariants
        .contains(&Invariant::BillingEquality)
    {
        true => Some(oracle::check_billing_equality(log, &fraud, &config, &expected).await?),
        false => None,
    };
    let mut verdicts = seed_verdicts(scenario, seams, &evidence, &accepted, &losses, billing);
    verdicts.extend(forged_verdict(scenario, &accepted));
    let trace = std::mem::take(&mut *faults.trace.lock().expect("trace lock"));
    let statuses = &drained.statuses;
    let trace_hash = trace_hash(&scan, statuses, &expected.log, &counts, &trace);
    if let Some(dir) = &seams.file_log_dir {
        // A replay of the seed writes the same segments again.
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(SimReport {
        scenario: scenario.name.clone(),
        seed,
        trace_hash: format!("{trace_hash:016x}"),
        virtual_s: (SystemClock.now_ms() - started_ms) as f64 / 1000.0,
        accepted: accepted.ledger.count,
        log_records: expected.log.count,
        unique_billable_clicks: expected.unique_billable_clicks(),
        rates,
        faults: counts,
        worker_restarts,
        passed: verdicts.iter().all(|verdict| verdict.holds),
        verdicts,
        trace,
    })
}

/// Every invariant the scenario expects, judged on the drained seed. Billing equality is judged
/// before (it is async) and handed in.
fn seed_verdicts(
    scenario: &Scenario,
    seams: &SimSeams,
    evidence: &oracle::Evidence<'_>,
    accepted: &Accepted,
    losses: &oracle::CrashLosses,
    mut billing: Option<Verdict>,
) -> Vec<Verdict> {
    let appended_again = seams
        .log
        .duplicates
        .lock()
        .expect("duplicates lock")
        .clicks
        .clone();
    let invariants = &scenario.expect.invariants;
    oracle::verdicts(invariants, evidence, |invariant| match invariant {
        Invariant::NoLoss => oracle::check_no_loss_exact(
            &accepted.clicks,
            &appended_again,
            evidence.expected,
            losses,
        ),
        Invariant::BillingEquality => billing.take().expect("billing_equality is judged once"),
        _ => Verdict::skipped(
            "determinism",
            "checked by running the seed twice (--check-determinism)",
        ),
    })
}

/// With forged clicks in the traffic: every one was refused for its signature.
fn forged_verdict(scenario: &Scenario, accepted: &Accepted) -> Option<Verdict> {
    (scenario.anomalies.forged_fraction > 0.0).then(|| Verdict {
        invariant: "forged_refused",
        holds: accepted.forged_sent > 0 && accepted.forged_refused == accepted.forged_sent,
        checked: true,
        detail: format!(
            "{} forged clicks sent, {} refused for their signature (none can reach the log: no_loss checks the log holds exactly what was accepted)",
            accepted.forged_sent, accepted.forged_refused
        ),
    })
}

/// An ingest node's live incarnation (its core and flusher), or none while the node is down.
type IngestSlot = Arc<Mutex<Option<(IngestCore, tokio::task::JoinHandle<()>)>>>;

/// One ingest node: each (re)start is a new incarnation with a new idempotent producer id and an
/// empty buffer. Killing it loses whatever its buffer held that the log had not yet taken.
fn start_ingest(
    index: usize,
    log: Arc<dyn Log>,
    config: IngestConfig,
    slot: IngestSlot,
    salt_plans: SaltPlanStore,
) -> madsim::runtime::NodeHandle {
    let incarnations = Arc::new(AtomicU64::new(0));
    madsim::runtime::Handle::current()
        .create_node()
        .name(format!("ingest-{index}"))
        .init(move || {
            let (log, slot, incarnations, salt_plans) = (
                log.clone(),
                slot.clone(),
                incarnations.clone(),
                salt_plans.clone(),
            );
            async move {
                let incarnation =
                    incarnations.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                // A producer id of its own, from the log, as `adclick serve` takes one.
                let config = IngestConfig {
                    producer_id: log
                        .new_producer_id()
                        .await
                        .expect("the simulated log hands out producer ids without faults"),
                    ..config
                };
                // A restarted node cannot know what its predecessor accepted, only that those
                // event times were within the allowed skew of its clock.
                let accepted_event_time_floor_ms = if incarnation == 1 {
                    0
                } else {
                    SystemClock.now_ms() + adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX
                };
                // The salt table is durable state: each incarnation loads what its
                // predecessors stored, retrying through injected store errors as a supervisor
                // restarting `adclick serve` would.
                let (table, loaded_at_ms) = loop {
                    let loaded_at_ms = SystemClock.now_ms();
                    match salt_plans.load().await {
                        Ok(table) => break (table, loaded_at_ms),
                        Err(error) => {
                            tracing::debug!(%error, "loading salt plans failed, retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                let salting = adclick_engine::ingest::SaltingStart {
                    table: Arc::new(Mutex::new(table)),
                    accepted_event_time_floor_ms,
                    durable: Some(adclick_engine::ingest::DurablePlans {
                        store: salt_plans,
                        loaded_at_ms,
                    }),
                };
                let started = IngestCore::start_with(log, Arc::new(SystemClock), config, salting);
                *slot.lock().expect("ingest slot lock") = Some(started);
                std::future::pending::<()>().await;
            }
        })
        .build()
}

/// The owners table as one node's assignment.
fn assignment(
    owners: Arc<Mutex<Vec<usize>>>,
    node_index: usize,
) -> adclick_engine::worker::Assignment {
    Arc::new(move |partition: PartitionId| {
        owners.lock().expect("owners lock")[partition.0 as usize] == node_index
    })
}

/// One node per group of partitions; a node's init (re)starts a supervisor for every partition
/// it owns at that moment, so a restarted node picks up exactly its partitions.
fn start_workers(
    scenario: &Scenario,
    env: &WorkerEnv,
    stop: &tokio::sync::watch::Receiver<bool>,
    restarts: &Arc<Supervision>,
) -> Cluster {
    let partitions = scenario.engine.partitions;
    let node_count = partitions.min(WORKER_NODES_MAX) as usize;
    let owners = Arc::new(Mutex::new(
        (0..partitions as usize)
            .map(|p| p % node_count)
            .collect::<Vec<_>>(),
    ));
    let handle = madsim::runtime::Handle::current();
    let nodes = (0..node_count)
        .map(|node_index| {
            let env = env.clone();
            let stop = stop.clone();
            let restarts = restarts.clone();
            let owners = owners.clone();
            let worker_config = scenario.worker_config();
            let aggregator_config = scenario.aggregator_config();
            handle
                .create_node()
                .name(format!("worker-{node_index}"))
                .init(move || {
                    let owned: Vec<u32> = owners
                        .lock()
                        .expect("owners lock")
                        .iter()
                        .enumerate()
                        .filter(|(_, owner)| **owner == node_index)
                        .map(|(partition, _)| partition as u32)
                        .collect();
                    let (env, stop, restarts) = (env.clone(), stop.clone(), restarts.clone());
                    let assigned = assignment(owners.clone(), node_index);
                    async move {
                        for partition in owned {
                            tokio::spawn(supervise(
                                PartitionId(partition),
                                worker_config,
                                aggregator_config,
                                env.clone(),
                                stop.clone(),
                                restarts.clone(),
                                assigned.clone(),
                            ));
                        }
                        // A node whose init future returns counts as exited, and madsim drops
                        // its tasks, including owners spawned onto it later by a takeover.
                        std::future::pending::<()>().await;
                    }
                })
                .build()
        })
        .collect();
    Cluster { nodes, owners }
}

/// Publishes a new fraud-list version at random times (`faults.fraud_rotations_per_min`), as an
/// operator's rotation does: every worker swaps it in at its next barrier, wherever its epoch
/// stands. Its own random stream, so scenarios without rotations keep their seeds' schedules.
async fn rotate_fraud_lists(
    registry: Arc<RwLock<FraudRegistry>>,
    faults: Arc<Faults>,
    duration_s: f64,
    seed: u64,
) {
    let per_s = faults
        .rates
        .lock()
        .expect("rates lock")
        .fraud_rotations_per_min
        / 60.0;
    if per_s <= 0.0 {
        return;
    }
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let end_ms = SystemClock.now_ms() + (duration_s * 1000.0) as u64;
    loop {
        let wait_ms = (-(1.0 - rng.random::<f64>()).ln() / per_s * 1000.0) as u64;
        tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        if SystemClock.now_ms() >= end_ms {
            return;
        }
        let mut registry = registry.write().expect("fraud registry lock");
        let version = registry.current().version().0 + 1;
        let list = FraudList::parse(&adclick_traffic::fraud_list_text(version))
            .expect("the generator's lists parse");
        registry.register(list).expect("a new version registers");
        drop(registry);
        faults.count(|counts| counts.fraud_rotations += 1);
        faults.note(format!("rotate the fraud list to version {version}"));
    }
}

/// Everything the chaos task may break.
struct Chaos {
    faults: Arc<Faults>,
    /// The log, for the appends a crashed ingest node had in flight.
    log: Arc<FaultyLog>,
    /// What ingest crashes lost for certain (buffered) and may have lost (in flight).
    losses: Arc<Mutex<oracle::CrashLosses>>,
    /// The store under every wrapper, to make it forget.
    memory_store: Arc<MemoryRealtimeStore>,
    nodes: Vec<madsim::task::NodeId>,
    owners: Arc<Mutex<Vec<usize>>>,
    ingest_nodes: Vec<madsim::task::NodeId>,
    ingest_slots: Vec<IngestSlot>,
    env: WorkerEnv,
    scenario: Scenario,
    stop: tokio::sync::watch::Receiver<bool>,
    restarts: Arc<Supervision>,
    seed: u64,
}

/// What a fault took down, brought back once its hold is over.
#[derive(Default)]
struct Outage {
    down: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    ingest_down: BTreeSet<usize>,
}

/// Fires node faults at the configured rates until the safety phase ends. Each fault holds for
/// a random while, then what it took down comes back, so that every outage is bounded by the
/// hold (a longer one would push resends past the dedup horizon, which is billing's to catch,
/// not the fast path's).
async fn run_chaos(chaos: Chaos) {
    let mut rng = Pcg64Mcg::seed_from_u64(chaos.seed);
    let rates = *chaos.faults.rates.lock().expect("rates lock");
    let per_s = (rates.worker_kills_per_min
        + rates.node_pauses_per_min
        + rates.takeovers_per_min
        + rates.ingest_crashes_per_min
        + rates.store_losses_per_min)
        / 60.0;
    if per_s <= 0.0 {
        // No node faults at all: nothing to schedule.
        return;
    }
    let end_ms = SystemClock.now_ms() + (chaos.scenario.sim.duration_s * 1000.0) as u64;
    let mut outage = Outage::default();
    loop {
        let wait_ms = (-(1.0 - rng.random::<f64>()).ln() / per_s * 1000.0) as u64;
        tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        if SystemClock.now_ms() >= end_ms {
            break;
        }
        let node = rng.random_range(0..chaos.nodes.len());
        let pick = rng.random::<f64>() * per_s * 60.0;
        chaos.fire(&mut rng, &rates, pick, node, &mut outage);
        let hold_ms = rng.random_range(100..2_000);
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        chaos.bring_back(&mut outage);
    }
    chaos.bring_back(&mut outage);
}

impl Chaos {
    /// The fault `pick` falls on, each taking its share of the summed rates.
    fn fire(
        &self,
        rng: &mut Pcg64Mcg,
        rates: &FaultRates,
        pick: f64,
        node: usize,
        outage: &mut Outage,
    ) {
        let kills = rates.worker_kills_per_min;
        let crashes = kills + rates.ingest_crashes_per_min;
        let pauses = crashes + rates.node_pauses_per_min;
        let losses = pauses + rates.store_losses_per_min;
        let handle = madsim::runtime::Handle::current();
        if pick < kills {
            handle.kill(self.nodes[node]);
            outage.down.insert(node);
            self.faults.count(|counts| counts.worker_kills += 1);
            self.faults.note(format!("kill worker-{node}"));
        } else if pick < crashes {
            self.crash_ingest(rng, outage);
        } else if pick < pauses {
            handle.pause(self.nodes[node]);
            outage.paused.insert(node);
            self.faults.count(|counts| counts.node_pauses += 1);
            self.faults.note(format!("pause worker-{node}"));
        } else if pick < losses {
            self.memory_store.forget_everything();
            self.faults.count(|counts| counts.store_losses += 1);
            self.faults
                .note("the real-time store forgets everything".to_owned());
        } else if self.nodes.len() > 1 {
            self.take_over(rng, outage);
        }
    }

    /// Clients see the node go away at once; its unflushed buffer is lost. Drawn only with
    /// several nodes, so one-node scenarios keep their seeds' schedules.
    fn crash_ingest(&self, rng: &mut Pcg64Mcg, outage: &mut Outage) {
        let ingest = if self.ingest_nodes.len() > 1 {
            rng.random_range(0..self.ingest_nodes.len())
        } else {
            0
        };
        let live = self.ingest_slots[ingest]
            .lock()
            .expect("ingest slot lock")
            .take();
        if let Some((core, _flusher)) = live {
            let in_flight = self.log.take_in_flight(core.producer_id());
            let mut losses = self.losses.lock().expect("losses lock");
            losses.record(&core.buffered_records(), &in_flight);
        }
        madsim::runtime::Handle::current().kill(self.ingest_nodes[ingest]);
        outage.ingest_down.insert(ingest);
        self.faults.count(|counts| counts.ingest_crashes += 1);
        self.faults.note(format!("kill ingest-{ingest}"));
    }

    /// Pauses a partition's owner and starts a new owner for it elsewhere; the old one, woken
    /// later, is fenced.
    fn take_over(&self, rng: &mut Pcg64Mcg, outage: &mut Outage) {
        let handle = madsim::runtime::Handle::current();
        let nodes = &self.nodes;
        let partition = rng.random_range(0..self.scenario.engine.partitions) as usize;
        let old_owner = self.owners.lock().expect("owners lock")[partition];
        let new_owner = (old_owner + 1 + rng.random_range(0..nodes.len() - 1)) % nodes.len();
        handle.pause(nodes[old_owner]);
        outage.paused.insert(old_owner);
        self.owners.lock().expect("owners lock")[partition] = new_owner;
        if let Some(node) = handle.get_node(nodes[new_owner]) {
            node.spawn(supervise(
                PartitionId(partition as u32),
                self.scenario.worker_config(),
                self.scenario.aggregator_config(),
                self.env.clone(),
                self.stop.clone(),
                self.restarts.clone(),
                assignment(self.owners.clone(), new_owner),
            ));
        }
        self.faults.count(|counts| counts.takeovers += 1);
        self.faults.note(format!(
            "takeover p{partition} worker-{old_owner} -> worker-{new_owner}"
        ));
    }

    fn bring_back(&self, outage: &mut Outage) {
        let handle = madsim::runtime::Handle::current();
        for node in std::mem::take(&mut outage.down) {
            handle.restart(self.nodes[node]);
            self.faults.note(format!("restart worker-{node}"));
        }
        for node in std::mem::take(&mut outage.paused) {
            handle.resume(self.nodes[node]);
            self.faults.note(format!("resume worker-{node}"));
        }
        for ingest in std::mem::take(&mut outage.ingest_down) {
            handle.restart(self.ingest_nodes[ingest]);
            self.faults.note(format!("restart ingest-{ingest}"));
        }
    }
}

/// What the clients were told was accepted.
struct Accepted {
    ledger: Ledger,
    clicks: oracle::ClickMultiset,
    /// Forged clicks sent, and how many of them ingest refused for their signature.
    forged_sent: u64,
    forged_refused: u64,
}

/// The signing key of the simulated ad server. Forgers don't have it.
const AD_SERVER_KEY: &[u8] = b"the ad server's signing key, 32 b";
const FORGER_KEY: &[u8] = b"a key nobody gave out, 32 bytes!";

/// Signed clients: the batch goes out as an NDJSON body of signed clicks, a seeded fraction of
/// them forged three ways, and comes back through the ingest body parser, which must refuse
/// exactly the forged ones. Returns the clicks the parser took.
fn through_signed_body(
    events: &[adclick_core::event::ClickEvent],
    forged_fraction: f64,
    rng: &mut rand_pcg::Pcg64Mcg,
    accepted: &mut Accepted,
) -> anyhow::Result<Vec<adclick_core::event::ClickEvent>> {
    use adclick_core::signing::{SigningKeys, signed_message};
    use rand::Rng;
    let mut keys = SigningKeys::default();
    keys.insert("ad-server-1", AD_SERVER_KEY.to_vec());
    let mut forgers = SigningKeys::default();
    forgers.insert("ad-server-1", FORGER_KEY.to_vec());
    let mut body = Vec::with_capacity(events.len() * 320);
    let mut forged = 0u64;
    for event in events {
        let mut wire = adclick_core::event::WireClick::from(event);
        let message = signed_message(
            event.click_id.0,
            event.campaign_id.0,
            event.ad_id.0,
            event.event_time_ms.0,
        );
        wire.key_id = Some("ad-server-1".into());
        wire.signature = keys.sign("ad-server-1", &message);
        if rng.random_bool(forged_fraction) {
            forged += 1;
            match rng.random_range(0..3) {
                0 => wire.signature = None,
                1 => wire.signature = forgers.sign("ad-server-1", &message),
                _ => wire.campaign_id = wire.campaign_id.map(|campaign| campaign + 1),
            }
        }
        serde_json::to_writer(&mut body, &wire)?;
        body.push(b'\n');
    }
    let parsed = adclick_core::body::parse_body(
        &body,
        adclick_core::body::BodyFormat::NdJson,
        adclick_core::event::TimeBound::None,
        usize::MAX,
        Some(&keys),
    )?;
    let refused = parsed
        .rejected
        .iter()
        .filter(|error| error.reasons.iter().any(|reason| reason.is_signature()))
        .count() as u64;
    accepted.forged_sent += forged;
    accepted.forged_refused += refused;
    Ok(parsed.clicks)
}

/// The live ingest core of the node a client picked, waiting while that node is down (clients
/// retry it: a load balancer that moved them elsewhere would only make resends reach other
/// nodes more often, which the random pick per batch already does).
async fn live_ingest(slot: &IngestSlot) -> IngestCore {
    loop {
        if let Some((core, _)) = slot.lock().expect("ingest slot lock").as_ref() {
            return core.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open-loop traffic in virtual time: every 10 ms, the clicks that are due.
async fn drive_traffic(
    scenario: &Scenario,
    generator: &mut Generator,
    ingest_slots: &[IngestSlot],
    seed: u64,
) -> anyhow::Result<Accepted> {
    let mut pick_rng = Pcg64Mcg::seed_from_u64(seed);
    let rate = scenario.traffic.rate_per_s as f64;
    let total = (rate * scenario.traffic.duration_s) as u64;
    let started_ms = SystemClock.now_ms();
    let mut batch = GeneratedBatch::default();
    let mut accepted = Accepted {
        ledger: Ledger::default(),
        clicks: oracle::ClickMultiset::default(),
        forged_sent: 0,
        forged_refused: 0,
    };
    let forged_fraction = scenario.anomalies.forged_fraction;
    let mut forger_rng =
        <rand_pcg::Pcg64Mcg as rand::SeedableRng>::seed_from_u64(scenario.seed ^ 0xf0f0);
    let mut sent = 0u64;
    while sent < total {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_ms = SystemClock.now_ms();
        let elapsed_ms = now_ms - started_ms;
        let due = ((rate * elapsed_ms as f64 / 1000.0) as u64).min(total);
        while sent < due {
            let count = ((due - sent) as usize).min(scenario.traffic.batch_events);
            batch.clear();
            generator.next_batch(now_ms, elapsed_ms, count, &mut batch);
            if forged_fraction > 0.0 {
                batch.events = through_signed_body(
                    &batch.events,
                    forged_fraction,
                    &mut forger_rng,
                    &mut accepted,
                )?;
            }
            let ingest = &ingest_slots[pick_rng.random_range(0..ingest_slots.len())];
            let outcome = loop {
                match live_ingest(ingest)
                    .await
                    .submit(&batch.events, Ack::Buffered)
                    .await
                {
                    Ok(outcome) => break outcome,
                    Err(error) if error.retry_after_ms().is_some() => {
                        let retry_after_ms = error.retry_after_ms().expect("checked");
                        tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                    }
                    Err(IngestError::ShuttingDown) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => anyhow::bail!("ingest failed: {error}"),
                }
            };
            let mut rejected = outcome.rejected.iter().map(|(index, _)| *index).peekable();
            for (index, event) in batch.events.iter().enumerate() {
                if rejected.next_if_eq(&index).is_none() {
                    let view = event.view(Salt(0));
                    accepted.ledger.add(&view);
                    accepted.clicks.add(&view);
                }
            }
            sent += count as u64;
        }
    }
    Ok(accepted)
}

/// A hash of everything a run produced. Equal seeds must give equal hashes.
fn trace_hash(
    scan: &[(Series, Lane, StoredCounts)],
    statuses: &[PartitionStatus],
    log: &Ledger,
    counts: &FaultCounts,
    trace: &[String],
) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x7ace).build_hasher();
    for (series, lane, stored) in scan {
        (
            series,
            lane,
            stored.counts.clicks,
            stored.counts.unique,
            stored.counts.fraud,
            stored.is_final,
        )
            .hash(&mut hasher);
        (stored.fence.generation, stored.fence.epoch).hash(&mut hasher);
    }
    for status in statuses {
        (
            status.partition,
            status.generation,
            status.epoch,
            status.next_offset,
            status.watermark.watermark_ms,
        )
            .hash(&mut hasher);
    }
    (log.count, log.fingerprint, counts, trace).hash(&mut hasher);
    hasher.finish()
}
