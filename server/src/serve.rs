//! `adclick serve`: builds the seams the config names, starts the roles, and shuts down
//! gracefully: stop taking requests, drain the producer buffer into the log, then let every
//! worker take a final checkpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use adclick_archive::{Archiver, ArchiverConfig};
use adclick_core::fraud::FraudRegistry;
use adclick_core::ids::PartitionId;
use adclick_engine::checkpoint::CheckpointStore;
use adclick_engine::clock::SystemClock;
use adclick_engine::embedded::{FileLog, MemoryBlobStore, MemoryLog, MemoryRealtimeStore};
use adclick_engine::fraud_lists::FraudListStore;
use adclick_engine::ingest::{DurablePlans, IngestConfig, IngestCore, SaltingStart};
use adclick_engine::salt_plans::SaltPlanStore;
use adclick_engine::seams::{BlobStore, Clock, Log, RealtimeStore};
use adclick_engine::supervisor::Supervision;
use adclick_engine::worker::{WorkerEnv, assigned_forever, supervise};
use adclick_io::blobs::{BlobConfig, ObjectBlobStore};
use adclick_io::kafka::{GroupWorkerConfig, KafkaLog, run_group_worker};
use adclick_io::redis_store::{KeySpace, RedisStore};
use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{AppState, HttpCounters, router};
use crate::config::{LogConfig, Role, ServeConfig, StoreConfig};
use crate::listener::ListenerLimits;

use adclick_core::limits::SALTS_MAX;

/// The seams a server runs on.
pub struct Seams {
    pub log: Arc<dyn Log>,
    pub store: Arc<dyn RealtimeStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub clock: Arc<dyn Clock>,
    pub fraud: Arc<RwLock<FraudRegistry>>,
}

impl Seams {
    pub async fn from_config(config: &ServeConfig) -> anyhow::Result<Seams> {
        let partitions = config.engine.partitions;
        let log: Arc<dyn Log> = match &config.log {
            LogConfig::Memory => Arc::new(MemoryLog::new(partitions)),
            LogConfig::File { dir } => Arc::new(
                FileLog::open(dir, partitions, Default::default())
                    .with_context(|| format!("log.dir {}", dir.display()))?,
            ),
            LogConfig::Kafka(kafka) => {
                // Convenient for a first deployment; where ACLs forbid it, ops creates the
                // topic and this only warns. Connecting checks the partition count either way.
                // A topic created here keeps what a rebuild of the store needs.
                let retention_ms = retention_needed_ms(config);
                if let Err(error) =
                    adclick_io::kafka::create_topic_retaining(kafka, 1, retention_ms).await
                {
                    tracing::warn!(%error, topic = kafka.topic, "could not create the topic");
                }
                let log = KafkaLog::connect(kafka.clone()).await?;
                check_log_retention(config, kafka).await?;
                Arc::new(log)
            }
        };
        let store: Arc<dyn RealtimeStore> = match &config.store {
            StoreConfig::Memory => Arc::new(MemoryRealtimeStore::new()),
            StoreConfig::Redis(redis) => {
                let keys = KeySpace {
                    partitions,
                    window_ms: config.engine.window_ms,
                    salts_max: SALTS_MAX,
                };
                Arc::new(RedisStore::connect(redis.clone(), keys).await?)
            }
        };
        let blobs: Arc<dyn BlobStore> = match config.checkpoints.blob_config() {
            None => Arc::new(MemoryBlobStore::new()),
            Some(blob_config) => Arc::new(ObjectBlobStore::open(&blob_config)?),
        };
        // The configured list is published (stored, then made current) by `start`.
        let registry = FraudRegistry::new();
        Ok(Seams {
            log,
            store,
            blobs,
            clock: Arc::new(SystemClock),
            fraud: Arc::new(RwLock::new(registry)),
        })
    }
}

/// How long the log must keep records for a rebuild to recount everything the store keeps:
/// the store's longest-lived series (Redis's hour rollups, `hour_ttl_ms`) plus one dedup
/// horizon before them, so the replay's dedup is warm. `None` for the embedded store, which
/// lives no longer than its process.
pub fn retention_needed_ms(config: &ServeConfig) -> Option<u64> {
    match &config.store {
        StoreConfig::Redis(redis) => Some(
            redis
                .hour_ttl_ms
                .saturating_add(config.engine.dedup_horizon_ms),
        ),
        StoreConfig::Memory => None,
    }
}

/// The decision: a retention of -1 keeps records forever; any other must reach `needed_ms`,
/// unless the config accepts a short one (`log.allow_short_retention`).
pub fn check_retention(
    topic: &str,
    retention_ms: i64,
    needed_ms: u64,
    allow_short: bool,
) -> Result<(), String> {
    let covers =
        retention_ms < 0 || u64::try_from(retention_ms).is_ok_and(|kept| kept >= needed_ms);
    if covers || allow_short {
        return Ok(());
    }
    Err(format!(
        "kafka topic {topic:?} keeps records for retention.ms = {retention_ms}, shorter than the          {needed_ms} ms a rebuild of the store needs (store.hour_ttl_ms plus          engine.dedup_horizon_ms): raise the topic's retention.ms (or -1), shorten          store.hour_ttl_ms, or set log.allow_short_retention = true to accept that the oldest          series the store keeps cannot be rebuilt from the log"
    ))
}

/// Checks the topic's retention where the broker reports it; a broker that does not answer
/// DescribeConfigs is let through with a warning, the retention then being the operator's to
/// check.
async fn check_log_retention(
    config: &ServeConfig,
    kafka: &adclick_io::kafka::KafkaConfig,
) -> anyhow::Result<()> {
    let Some(needed_ms) = retention_needed_ms(config) else {
        return Ok(());
    };
    match adclick_io::kafka::topic_retention_ms(kafka).await {
        Ok(Some(retention_ms)) => check_retention(
            &kafka.topic,
            retention_ms,
            needed_ms,
            kafka.allow_short_retention,
        )
        .map_err(anyhow::Error::msg),
        Ok(None) => {
            tracing::warn!(
                topic = kafka.topic,
                needed_ms,
                "the broker reports no retention.ms; make sure the log keeps records that long"
            );
            Ok(())
        }
        Err(error) => {
            tracing::warn!(%error, topic = kafka.topic, needed_ms, "cannot read the topic's retention.ms; make sure the log keeps records that long");
            Ok(())
        }
    }
}

/// A running server. Dropping it does not stop it; call `shutdown`.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub state: AppState,
    http_stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    flusher: Option<JoinHandle<()>>,
    worker_stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// The salt plans of earlier runs, loaded before the first click is taken (a resend must be
/// routed as its original was), and the checkpoint blob store as the place new plans are stored
/// before they route anything.
async fn salting_start(config: &ServeConfig, seams: &Seams) -> anyhow::Result<SaltingStart> {
    let plans = SaltPlanStore::new(seams.blobs.clone(), config.engine.ingest_nodes);
    let loaded_at_ms = seams.clock.now_ms();
    let table = plans
        .load()
        .await
        .context("loading the salt plans of earlier runs (checkpoints.url)")?;
    // An earlier run accepted no event time past its clock plus the allowed skew. On an empty
    // log nothing was accepted, and a hot campaign can be split at once.
    let mut log_is_empty = true;
    for partition in (0..seams.log.partitions()).map(PartitionId) {
        let end = seams
            .log
            .end_offset(partition)
            .await
            .with_context(|| format!("reading the end offset of partition {partition}"))?;
        log_is_empty &= end.0 == 0;
    }
    let accepted_event_time_floor_ms = if log_is_empty {
        0
    } else {
        seams.clock.now_ms() + adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX
    };
    if !table.is_empty() {
        tracing::info!(plans = table.len(), "loaded the salt plans of earlier runs");
    }
    Ok(SaltingStart {
        table: Arc::new(std::sync::Mutex::new(table)),
        accepted_event_time_floor_ms,
        durable: Some(DurablePlans {
            store: plans,
            loaded_at_ms,
        }),
    })
}

pub async fn start(config: ServeConfig, seams: Seams) -> anyhow::Result<RunningServer> {
    let (http_stop, http_stop_receiver) = watch::channel(false);
    let (worker_stop, worker_stop_receiver) = watch::channel(false);
    if config.checkpoints.url.is_none() && !matches!(config.log, LogConfig::Memory) {
        tracing::warn!(
            "checkpoints.url is not set: checkpoints and salt plans are kept in memory, so a \
             restart recounts from the log's start and forgets which campaigns were split"
        );
    }
    let (ingest, flusher) = match config.runs(Role::Ingest) {
        true => {
            let (core, flusher) = start_ingest(&config, &seams).await?;
            (Some(core), Some(flusher))
        }
        false => (None, None),
    };
    let mut workers = Vec::new();
    let supervision = config.runs(Role::Worker).then(Supervision::new);
    if let Some(supervision) = &supervision {
        let stop = &worker_stop_receiver;
        workers.extend(start_workers(&config, &seams, supervision, stop).await?);
    }
    if config.runs(Role::Archiver) {
        workers.extend(start_archivers(&config, &seams, &worker_stop_receiver).await?);
    }
    let state = AppState {
        http: config.http.clone(),
        window_ms: config.engine.window_ms,
        ingest,
        store: seams.store.clone(),
        log: seams.log.clone(),
        clock: seams.clock.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        counters: Arc::new(HttpCounters::default()),
        signing_keys: signing_keys(&config)?,
        tokens: tokens(&config)?,
        client_rate: crate::security::ClientRateLimit::new(
            config.http.requests_per_s_per_client,
            config.http.request_burst_per_client,
        ),
        supervision: supervision.clone(),
    };
    let (local_addr, http) = start_http(&config, state.clone(), http_stop_receiver).await?;
    state.ready.store(true, Ordering::Release);
    tracing::info!(%local_addr, roles = ?config.roles, "adclick serving");
    Ok(RunningServer {
        local_addr,
        state,
        http_stop,
        http,
        flusher,
        worker_stop,
        workers,
    })
}

/// The ingest core, with a producer id of this run's own: after a restart on a file log, the old
/// id's sequence numbers would make the log take the first new batches for retries.
async fn start_ingest(
    config: &ServeConfig,
    seams: &Seams,
) -> anyhow::Result<(IngestCore, JoinHandle<()>)> {
    let salting = salting_start(config, seams).await?;
    let producer_id = seams
        .log
        .new_producer_id()
        .await
        .context("asking the log for a producer id")?;
    let ingest_config = IngestConfig {
        producer_id,
        ..config.ingest_config()
    };
    let log = seams.log.clone();
    Ok(IngestCore::start_with(
        log,
        seams.clock.clone(),
        ingest_config,
        salting,
    ))
}

/// The fraud-list watcher and a supervised worker per partition: every partition on a file or
/// memory log, the consumer group's assignment on Kafka.
async fn start_workers(
    config: &ServeConfig,
    seams: &Seams,
    supervision: &Arc<Supervision>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let fraud_lists = FraudListStore::new(seams.blobs.clone());
    if let Some(path) = &config.fraud.list {
        crate::fraud_watch::publish_file(path, &fraud_lists, &seams.fraud).await?;
        tasks.push(tokio::spawn(crate::fraud_watch::follow(
            path.clone(),
            fraud_lists.clone(),
            seams.fraud.clone(),
            std::time::Duration::from_millis(config.fraud.reload_interval_ms),
            stop.clone(),
        )));
    }
    let env = WorkerEnv::new(
        seams.log.clone(),
        seams.store.clone(),
        CheckpointStore::new(seams.blobs.clone()),
        seams.clock.clone(),
        seams.fraud.clone(),
    )
    .with_fraud_lists(fraud_lists);
    if let LogConfig::Kafka(kafka) = &config.log {
        let group_config = GroupWorkerConfig {
            worker: config.worker_config(),
            aggregator: config.aggregator_config(),
        };
        let (kafka, stop, supervision) = (kafka.clone(), stop.clone(), supervision.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(error) = run_group_worker(&kafka, group_config, env, stop, supervision).await
            {
                tracing::error!(%error, "the consumer group worker stopped");
            }
        }));
        return Ok(tasks);
    }
    for partition in (0..config.engine.partitions).map(PartitionId) {
        let supervisor = supervise(
            partition,
            config.worker_config(),
            config.aggregator_config(),
            env.clone(),
            stop.clone(),
            supervision.clone(),
            assigned_forever(),
        );
        tasks.push(tokio::spawn(async move {
            supervisor.await;
        }));
    }
    Ok(tasks)
}

/// An archiver per partition, into `[archive] url`.
async fn start_archivers(
    config: &ServeConfig,
    seams: &Seams,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let archive = &config.archive;
    let blobs: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::open(&BlobConfig {
        url: archive.url.clone().expect("runs(Archiver) checked the url"),
        options: archive.options.clone(),
    })?);
    let archiver_config = ArchiverConfig {
        roll_bytes: archive.roll_bytes,
        roll_interval_ms: archive.roll_interval_ms,
        ..ArchiverConfig::default()
    };
    let mut tasks = Vec::new();
    for partition in (0..config.engine.partitions).map(PartitionId) {
        let archiver = Archiver::open(
            partition,
            seams.log.clone(),
            blobs.clone(),
            seams.clock.clone(),
            archiver_config,
        )
        .await
        .with_context(|| format!("archiver of partition {partition}"))?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = archiver.run(stop).await {
                tracing::error!(%error, partition = partition.0, "archiver stopped");
            }
        }));
    }
    Ok(tasks)
}

/// The signing keys clicks must carry, or none when unsigned clicks are allowed (said loudly).
fn signing_keys(
    config: &ServeConfig,
) -> anyhow::Result<Option<Arc<adclick_core::signing::SigningKeys>>> {
    let ingests = config.runs(Role::Ingest);
    if config.security.allow_unsigned {
        if ingests {
            tracing::warn!(
                "SECURITY: accepting UNSIGNED clicks (security.allow_unsigned): anyone who can \
                 reach this port can add clicks that advertisers pay for. For demos only."
            );
        }
        return Ok(None);
    }
    let keys = crate::security::load_signing_keys(&config.security)?;
    anyhow::ensure!(
        !keys.is_empty() || !ingests,
        "security: no signing keys were loaded (security.signing_keys_file, {}), and unsigned clicks are not allowed",
        crate::security::SIGNING_KEYS_ENV
    );
    if ingests {
        tracing::info!(key_ids = ?keys.key_ids().collect::<Vec<_>>(), "verifying signed clicks");
    }
    Ok(Some(Arc::new(keys)))
}

/// The query API's bearer tokens, or none (an open API, said loudly).
fn tokens(config: &ServeConfig) -> anyhow::Result<Option<Arc<crate::security::Tokens>>> {
    let tokens = crate::security::load_tokens(&config.security)?.map(Arc::new);
    if tokens.is_none() && config.runs(Role::Query) {
        tracing::warn!("SECURITY: the query API is open to anyone (no security.tokens_file)");
    }
    Ok(tokens)
}

/// Binds `http.listen` and serves the API with the request timeout and the listener's limits.
async fn start_http(
    config: &ServeConfig,
    state: AppState,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen {}", config.http.listen))?;
    let local_addr = listener.local_addr()?;
    let timeout = std::time::Duration::from_millis(config.http.request_timeout_ms);
    let app = router(state, config).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        timeout,
    ));
    let limits = ListenerLimits {
        connections_max: config.http.connections_max,
        header_read_timeout: std::time::Duration::from_millis(config.http.header_read_timeout_ms),
        drain_timeout: timeout,
    };
    let http = tokio::spawn(crate::listener::serve(listener, app, limits, stop));
    Ok((local_addr, http))
}

/// `shutdown` returns within this bound, whatever state the workers are in: a worker stuck on an
/// unreachable store, or one that keeps failing, is abandoned, and the next owner recovers from
/// the last complete checkpoint (losing and doubling nothing, as after a crash).
pub const SHUTDOWN_MS_MAX: u64 = 15_000;

impl RunningServer {
    /// Stops taking requests, drains the producer buffer into the log, and lets every worker
    /// take a final checkpoint, all within `SHUTDOWN_MS_MAX`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(SHUTDOWN_MS_MAX);
        self.state.ready.store(false, Ordering::Release);
        // HTTP first: in-flight requests finish, new ones are refused.
        let _ = self.http_stop.send(true);
        match tokio::time::timeout_at(deadline, self.http).await {
            Ok(joined) => joined.context("http task")??,
            Err(_) => tracing::warn!("shutdown: the HTTP listener did not drain in time"),
        }
        if let (Some(ingest), Some(flusher)) = (&self.state.ingest, self.flusher)
            && tokio::time::timeout_at(deadline, ingest.close(flusher))
                .await
                .is_err()
        {
            tracing::error!(
                buffered = ingest.buffered(),
                "shutdown: the producer buffer did not drain into the log in time; \
                 those clicks were answered 202 without ?ack=durable and are lost"
            );
        }
        let _ = self.worker_stop.send(true);
        let mut abandoned = 0;
        for mut worker in self.workers {
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                bound_ms = SHUTDOWN_MS_MAX,
                "shutdown: workers that did not stop in time were abandoned; their partitions \
                 recover from their last checkpoint"
            );
        }
        tracing::info!("adclick stopped");
        Ok(())
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_must_keep_what_a_rebuild_of_the_store_replays() {
        let mut config = ServeConfig::default();
        assert_eq!(retention_needed_ms(&config), None, "the embedded store");
        let redis = adclick_io::redis_store::RedisConfig::new("redis://127.0.0.1/");
        let hour_ttl_ms = redis.hour_ttl_ms;
        config.store = StoreConfig::Redis(redis);
        let needed_ms = retention_needed_ms(&config).unwrap();
        assert_eq!(needed_ms, hour_ttl_ms + config.engine.dedup_horizon_ms);

        assert_eq!(check_retention("clicks", -1, needed_ms, false), Ok(()));
        assert_eq!(
            check_retention("clicks", needed_ms as i64, needed_ms, false),
            Ok(())
        );
        let short = needed_ms as i64 - 1;
        let error = check_retention("clicks", short, needed_ms, false).unwrap_err();
        for named in [
            &format!("retention.ms = {short}"),
            &needed_ms.to_string(),
            "store.hour_ttl_ms",
            "engine.dedup_horizon_ms",
            "log.allow_short_retention",
        ] {
            assert!(error.contains(named), "{named}: {error}");
        }
        assert_eq!(check_retention("clicks", short, needed_ms, true), Ok(()));
        // Kafka's default, 7 days, is one dedup horizon short of the default store.
        let seven_days_ms = 7 * 24 * 3_600_000;
        assert!(check_retention("clicks", seven_days_ms, needed_ms, false).is_err());
    }
}
