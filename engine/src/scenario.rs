//! The scenario file: one TOML format for the runner, the simulator and the load generator.
//!
//! ```toml
//! version = 1
//! name = "quickstart"
//! seed = 42
//! [traffic]      # rate, duration, campaigns, ads, Zipf exponent, countries
//! [anomalies]    # duplicates, late events, bots, a viral campaign
//! [faults]       # worker crashes, store errors, log outages and empty reads
//! [engine]       # partitions, epoch, window, lateness, dedup horizon, buffer
//! [expect]       # which invariants must hold
//! ```
//!
//! Unknown keys are errors (a typo must not silently mean "default"). Every check names the key,
//! the bad value and the rule it broke.

use std::path::Path;

use adclick_core::dedup::DedupConfig;
use adclick_core::operator::AggregatorConfig;
use adclick_core::window::WindowConfig;
use serde::{Deserialize, Serialize};

use crate::ingest::IngestConfig;
use crate::limits;
use crate::worker::WorkerConfig;

pub const SCENARIO_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: u64,
    pub traffic: Traffic,
    #[serde(default)]
    pub anomalies: Anomalies,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default)]
    pub expect: Expect,
    #[serde(default)]
    pub sim: SimSettings,
}

/// How the simulator runs the scenario in virtual time: smaller traffic than a real-time run, so
/// that hundreds of seeds fit in CI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    pub rate_per_s: u64,
    pub duration_s: f64,
    /// Seeds CI sweeps for this scenario.
    pub seeds: u64,
    /// Ingest nodes; each batch of clicks goes to one picked at random (seeded), so a resend
    /// often reaches another node than its original did.
    pub ingest_nodes: u32,
    /// The log is the file log (segment files in a scratch directory) instead of the in-memory
    /// one; the oracle reads it back from disk after the run.
    pub file_log: bool,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            rate_per_s: 2_000,
            duration_s: 20.0,
            seeds: 25,
            ingest_nodes: 1,
            file_log: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    pub rate_per_s: u64,
    pub duration_s: f64,
    pub campaigns: u64,
    pub ads_per_campaign: u64,
    #[serde(default = "default_zipf")]
    pub zipf_exponent: f64,
    #[serde(default = "default_countries")]
    pub countries: Vec<String>,
    #[serde(default = "default_users")]
    pub users: u64,
    #[serde(default = "default_ips")]
    pub ips: u64,
    /// Events per request the generator submits.
    #[serde(default = "default_batch")]
    pub batch_events: usize,
}

fn default_zipf() -> f64 {
    1.1
}
fn default_countries() -> Vec<String> {
    ["US", "DE", "GB", "FR", "IN", "BR", "JP"]
        .iter()
        .map(|c| c.to_string())
        .collect()
}
fn default_users() -> u64 {
    1_000_000
}
fn default_ips() -> u64 {
    500_000
}
fn default_batch() -> usize {
    500
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Anomalies {
    /// Fraction of clicks the client sends again (same click id).
    pub duplicate_fraction: f64,
    /// How long after the original a resend goes out.
    pub duplicate_delay_ms: u64,
    /// Fraction of clicks whose event time lags processing time by `late_lag_ms`.
    pub late_fraction: f64,
    pub late_lag_ms: u64,
    /// Fraction of clicks from IPs on the fraud list.
    pub bot_fraction: f64,
    /// Fraction of clicks from a few IPs that click far above the rate rule.
    pub high_rate_ip_fraction: f64,
    /// How many high-rate IPs share that fraction.
    pub high_rate_ips: u64,
    /// Share of all traffic that goes to one viral campaign at the end of its ramp.
    pub viral_campaign_share: f64,
    pub viral_ramp_s: f64,
    /// Client clock skew: event times are off by up to this much either way, at most
    /// `EVENT_TIME_FUTURE_MS_MAX` (ingest refuses clicks further in the future).
    pub clock_skew_ms: u64,
    /// Simulator: clients send signed clicks through the ingest body parser, and this fraction
    /// of them is forged (unsigned, signed with a key nobody gave out, or altered after signing).
    pub forged_fraction: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Kill a partition's worker at these times (seconds from the start).
    pub worker_crashes: Vec<WorkerCrash>,
    /// Kill random workers at this rate.
    pub worker_crashes_per_min: f64,
    /// Fraction of real-time store writes that fail.
    pub store_error_rate: f64,
    /// Simulator only: store calls take up to this long (latency spikes).
    pub store_latency_ms_max: u64,
    /// Simulator only: fraction of log appends and reads that fail (outages).
    pub log_error_rate: f64,
    /// Simulator only, with `sim.file_log`: fraction of the file log's segment writes, syncs
    /// and cuts that fail (a write writes part of its frame first: a torn write).
    pub log_io_error_rate: f64,
    /// Simulator only: fraction of appends a non-idempotent producer retry writes twice.
    pub duplicate_append_rate: f64,
    /// Simulator only: fraction of checkpoint store calls that fail.
    pub checkpoint_error_rate: f64,
    /// Fraction of log reads that return no records although the log holds records past the
    /// read offset, as a Kafka consume that times out does, or a broker whose high watermark
    /// lags (Tansu). Applies in the simulator and in `adclick run`.
    pub log_empty_read_rate: f64,
    /// Simulator only: the ingest node crashes (losing its unflushed buffer) this often.
    pub ingest_crashes_per_min: f64,
    /// Simulator only: worker nodes paused (and resumed) per minute.
    pub node_pauses_per_min: f64,
    /// Simulator only: partitions taken over by another worker per minute (generation bump;
    /// the old owner, paused meanwhile, is fenced when it wakes).
    pub takeovers_per_min: f64,
    /// Simulator only: the real-time store forgets everything (a Redis restart without
    /// persistence) this often.
    pub store_losses_per_min: f64,
    /// Simulator only: a new fraud-list version is published this often (an operator's
    /// rotation); workers swap it in at their next barrier.
    pub fraud_rotations_per_min: f64,
    /// Simulator only: each seed draws its own fault rates, up to the ones above.
    pub swarm: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerCrash {
    pub at_s: f64,
    pub partition: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Engine {
    pub partitions: u32,
    pub epoch_ms: u64,
    pub window_ms: u64,
    pub allowed_lateness_ms: u64,
    pub max_out_of_orderness_ms: u64,
    pub idle_timeout_ms: u64,
    pub dedup_horizon_ms: u64,
    pub dedup_bucket_ms: u64,
    pub dedup_ids_per_partition_max: usize,
    pub clicks_per_ip_per_minute_max: u32,
    pub producer_buffer_events_max: usize,
    pub producer_linger_ms: u64,
    pub full_checkpoint_every_epochs: u64,
    /// Split a campaign above this share of ingest traffic into salted keys (0: never).
    pub hot_campaign_share: f64,
    pub hot_campaign_salts: u16,
    /// `"one"` or `"several"` ingest nodes: whether salt plans are shared (`adclick serve`).
    pub ingest_nodes: crate::ingest::PlanSharing,
}

impl Default for Engine {
    fn default() -> Self {
        let window = WindowConfig::default();
        let dedup = DedupConfig::default();
        let aggregator = AggregatorConfig::default();
        Engine {
            partitions: 8,
            epoch_ms: limits::EPOCH_MS_DEFAULT,
            window_ms: window.window_ms,
            allowed_lateness_ms: window.allowed_lateness_ms,
            max_out_of_orderness_ms: window.max_out_of_orderness_ms,
            idle_timeout_ms: window.idle_timeout_ms,
            dedup_horizon_ms: dedup.horizon_ms,
            dedup_bucket_ms: dedup.bucket_ms,
            dedup_ids_per_partition_max: dedup.ids_max,
            clicks_per_ip_per_minute_max: aggregator.clicks_per_ip_per_minute_max,
            producer_buffer_events_max: limits::PRODUCER_BUFFER_EVENTS_MAX_DEFAULT,
            producer_linger_ms: limits::PRODUCER_LINGER_MS_DEFAULT,
            full_checkpoint_every_epochs: aggregator.full_checkpoint_every_epochs,
            hot_campaign_share: 0.0,
            hot_campaign_salts: 4,
            ingest_nodes: Default::default(),
        }
    }
}

impl Engine {
    /// The worker settings these keys set: the epoch length.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            epoch_ms: self.epoch_ms,
            ..WorkerConfig::default()
        }
    }

    /// The ingest settings these keys set: the buffer, the linger, hot-campaign splitting.
    pub fn ingest_config(&self) -> IngestConfig {
        IngestConfig {
            producer_buffer_events_max: self.producer_buffer_events_max,
            producer_linger_ms: self.producer_linger_ms,
            hot_campaigns: self.hot_campaigns(),
            ..IngestConfig::default()
        }
    }

    /// The bounds of the engine keys themselves. The aggregator's window and dedup rules are
    /// `AggregatorConfig::validate`'s; both callers check those too.
    pub fn validate(&self) -> Result<(), EngineInvalid> {
        if self.partitions == 0 || self.partitions > 1024 {
            return refuse(
                "engine.partitions",
                self.partitions,
                "must be between 1 and 1024",
            );
        }
        if self.epoch_ms < 10 {
            return refuse("engine.epoch_ms", self.epoch_ms, "must be at least 10");
        }
        if self.producer_buffer_events_max == 0 {
            return refuse(
                "engine.producer_buffer_events_max",
                "0",
                "must be at least 1",
            );
        }
        if !(0.0..=1.0).contains(&self.hot_campaign_share) {
            return refuse(
                "engine.hot_campaign_share",
                self.hot_campaign_share,
                "must be between 0 and 1",
            );
        }
        let salts_max = adclick_core::limits::SALTS_MAX;
        if self.hot_campaign_share > 0.0 && !(2..=salts_max).contains(&self.hot_campaign_salts) {
            return refuse(
                "engine.hot_campaign_salts",
                self.hot_campaign_salts,
                format!("must be between 2 and {salts_max} when hot_campaign_share is on"),
            );
        }
        Ok(())
    }

    /// The aggregator's settings; `dedup_ids_expected` pre-sizes the dedup table.
    pub fn aggregator_config(&self, dedup_ids_expected: usize) -> AggregatorConfig {
        AggregatorConfig {
            window: WindowConfig {
                window_ms: self.window_ms,
                allowed_lateness_ms: self.allowed_lateness_ms,
                max_out_of_orderness_ms: self.max_out_of_orderness_ms,
                idle_timeout_ms: self.idle_timeout_ms,
                late_retention_ms: adclick_core::limits::LATE_RETENTION_MS_DEFAULT,
            },
            dedup: DedupConfig {
                horizon_ms: self.dedup_horizon_ms,
                bucket_ms: self.dedup_bucket_ms,
                ids_max: self.dedup_ids_per_partition_max,
                ids_expected: dedup_ids_expected,
            },
            clicks_per_ip_per_minute_max: self.clicks_per_ip_per_minute_max,
            full_checkpoint_every_epochs: self.full_checkpoint_every_epochs,
        }
    }

    /// The hot-campaign detector's settings, when salting is on.
    pub fn hot_campaigns(&self) -> Option<adclick_core::salt::HotCampaignConfig> {
        (self.hot_campaign_share > 0.0).then_some(adclick_core::salt::HotCampaignConfig {
            share_min: self.hot_campaign_share,
            period_clicks_min: 1_000,
            salts: self.hot_campaign_salts,
            period_ms: 1_000,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    ExactlyOnce,
    NoLoss,
    Liveness,
    Determinism,
    BillingEquality,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    pub invariants: Vec<Invariant>,
    /// After traffic stops, every window must be final and lag zero within this time.
    pub liveness_timeout_s: f64,
    /// The run must sustain at least this fraction of the scenario's rate.
    pub min_rate_fraction: f64,
    /// The load generator's bound on the ack latency p99 (from the intended send time), in ms;
    /// 0: no bound. The max-rate search only counts rates that keep it.
    pub ack_p99_ms_max: f64,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            invariants: vec![
                Invariant::ExactlyOnce,
                Invariant::NoLoss,
                Invariant::Liveness,
            ],
            liveness_timeout_s: 30.0,
            min_rate_fraction: 0.0,
            ack_p99_ms_max: 0.0,
        }
    }
}

/// An `[engine]` key out of its bounds: the one set of rules that scenarios and `adclick serve`
/// both apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInvalid {
    pub key: &'static str,
    pub value: String,
    pub rule: String,
}

/// The refusal of a config value: its key, the value, and the rule it breaks.
pub fn refuse(
    key: &'static str,
    value: impl ToString,
    rule: impl Into<String>,
) -> Result<(), EngineInvalid> {
    Err(EngineInvalid {
        key,
        value: value.to_string(),
        rule: rule.into(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}` = {value}: {rule}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        rule: String,
    },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: display.clone(),
            source,
        })?;
        Scenario::parse(&text, &display)
    }

    /// Parses and validates. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|error| ScenarioError::Parse {
            path: origin.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        scenario.validate(origin)?;
        Ok(scenario)
    }

    /// Every table's rules, each failure naming the key, its value and the rule it broke.
    fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        self.validate_values()
            .map_err(|error| ScenarioError::Invalid {
                path: origin.to_owned(),
                key: error.key,
                value: error.value,
                rule: error.rule,
            })
    }

    fn validate_values(&self) -> Result<(), EngineInvalid> {
        if self.version != SCENARIO_FORMAT_VERSION {
            return refuse(
                "version",
                self.version,
                format!("this build reads version {SCENARIO_FORMAT_VERSION}"),
            );
        }
        self.traffic.validate()?;
        self.anomalies.validate()?;
        self.faults.validate(self.engine.partitions)?;
        self.sim.validate()?;
        self.engine.validate()?;
        if self.engine.producer_buffer_events_max < self.traffic.batch_events {
            return refuse(
                "engine.producer_buffer_events_max",
                self.engine.producer_buffer_events_max,
                "must hold at least one request (traffic.batch_events)",
            );
        }
        self.aggregator_config()
            .validate()
            .map_err(|error| EngineInvalid {
                key: "engine",
                value: "(window and dedup settings)".into(),
                rule: error.to_string(),
            })
    }

    pub fn aggregator_config(&self) -> AggregatorConfig {
        let engine = &self.engine;
        // Size the dedup table for the scenario's rate over the horizon.
        let horizon_events = (self.traffic.rate_per_s as f64
            * (engine.dedup_horizon_ms as f64 / 1000.0)
            / f64::from(engine.partitions.max(1))) as usize;
        engine.aggregator_config(
            horizon_events
                .clamp(1024, engine.dedup_ids_per_partition_max.max(1024))
                .min(engine.dedup_ids_per_partition_max),
        )
    }

    pub fn worker_config(&self) -> WorkerConfig {
        self.engine.worker_config()
    }

    pub fn ingest_config(&self) -> IngestConfig {
        self.engine.ingest_config()
    }

    pub fn expects(&self, invariant: Invariant) -> bool {
        self.expect.invariants.contains(&invariant)
    }
}

fn fraction(key: &'static str, value: f64) -> Result<(), EngineInvalid> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        refuse(key, value, "must be between 0 and 1")
    }
}

fn at_least_one(key: &'static str, value: u64) -> Result<(), EngineInvalid> {
    if value == 0 {
        return refuse(key, 0, "must be at least 1");
    }
    Ok(())
}

impl Traffic {
    fn validate(&self) -> Result<(), EngineInvalid> {
        if self.rate_per_s == 0 || self.rate_per_s > 100_000_000 {
            return refuse(
                "traffic.rate_per_s",
                self.rate_per_s,
                "must be between 1 and 100000000",
            );
        }
        if !(self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return refuse(
                "traffic.duration_s",
                self.duration_s,
                "must be above 0 and at most 86400",
            );
        }
        at_least_one("traffic.campaigns", self.campaigns)?;
        at_least_one("traffic.ads_per_campaign", self.ads_per_campaign)?;
        if !(self.zipf_exponent >= 0.0 && self.zipf_exponent <= 5.0) {
            return refuse(
                "traffic.zipf_exponent",
                self.zipf_exponent,
                "must be between 0 and 5",
            );
        }
        let unparsable = self
            .countries
            .iter()
            .find(|country| adclick_core::ids::Country::parse(country).is_none());
        if let Some(bad) = unparsable {
            return refuse(
                "traffic.countries",
                format!("{bad:?}"),
                "each must be two uppercase letters",
            );
        }
        if self.countries.is_empty() {
            return refuse("traffic.countries", "[]", "must list at least one country");
        }
        if self.users == 0 || self.ips == 0 {
            return refuse("traffic.ips", self.ips, "users and ips must be at least 1");
        }
        let batch_max = limits::INGEST_RECORDS_PER_REQUEST_MAX;
        if self.batch_events == 0 || self.batch_events > batch_max {
            return refuse(
                "traffic.batch_events",
                self.batch_events,
                format!("must be between 1 and {batch_max}"),
            );
        }
        Ok(())
    }
}

impl Anomalies {
    fn validate(&self) -> Result<(), EngineInvalid> {
        fraction("anomalies.duplicate_fraction", self.duplicate_fraction)?;
        fraction("anomalies.late_fraction", self.late_fraction)?;
        fraction("anomalies.bot_fraction", self.bot_fraction)?;
        fraction("anomalies.forged_fraction", self.forged_fraction)?;
        fraction(
            "anomalies.high_rate_ip_fraction",
            self.high_rate_ip_fraction,
        )?;
        fraction("anomalies.viral_campaign_share", self.viral_campaign_share)?;
        let age_max = adclick_core::limits::EVENT_AGE_MS_MAX;
        if self.late_lag_ms > age_max {
            return refuse(
                "anomalies.late_lag_ms",
                self.late_lag_ms,
                format!("must be at most {age_max} (older clicks are rejected at ingest)"),
            );
        }
        if self.high_rate_ip_fraction > 0.0 && self.high_rate_ips == 0 {
            return refuse(
                "anomalies.high_rate_ips",
                0,
                "must be at least 1 when high_rate_ip_fraction is set",
            );
        }
        let future_max = adclick_core::limits::EVENT_TIME_FUTURE_MS_MAX;
        if self.clock_skew_ms > future_max {
            return refuse(
                "anomalies.clock_skew_ms",
                self.clock_skew_ms,
                format!(
                    "must be at most {future_max} (ingest refuses event times further in the future)"
                ),
            );
        }
        Ok(())
    }
}

impl Faults {
    fn validate(&self, partitions: u32) -> Result<(), EngineInvalid> {
        fraction("faults.store_error_rate", self.store_error_rate)?;
        fraction("faults.log_error_rate", self.log_error_rate)?;
        fraction("faults.log_io_error_rate", self.log_io_error_rate)?;
        fraction("faults.duplicate_append_rate", self.duplicate_append_rate)?;
        fraction("faults.checkpoint_error_rate", self.checkpoint_error_rate)?;
        fraction("faults.log_empty_read_rate", self.log_empty_read_rate)?;
        for (key, rate) in [
            ("faults.node_pauses_per_min", self.node_pauses_per_min),
            ("faults.takeovers_per_min", self.takeovers_per_min),
            ("faults.store_losses_per_min", self.store_losses_per_min),
            (
                "faults.fraud_rotations_per_min",
                self.fraud_rotations_per_min,
            ),
            ("faults.ingest_crashes_per_min", self.ingest_crashes_per_min),
        ] {
            if rate.is_nan() || !(0.0..=600.0).contains(&rate) {
                return refuse(key, rate, "must be between 0 and 600");
            }
        }
        if let Some(crash) = self
            .worker_crashes
            .iter()
            .find(|crash| crash.partition >= partitions)
        {
            return refuse(
                "faults.worker_crashes.partition",
                crash.partition,
                format!("must be below engine.partitions ({partitions})"),
            );
        }
        if self.worker_crashes_per_min.is_nan() || self.worker_crashes_per_min < 0.0 {
            return refuse(
                "faults.worker_crashes_per_min",
                self.worker_crashes_per_min,
                "must be at least 0",
            );
        }
        Ok(())
    }
}

impl SimSettings {
    fn validate(&self) -> Result<(), EngineInvalid> {
        if self.rate_per_s == 0 || self.rate_per_s > 1_000_000 {
            return refuse(
                "sim.rate_per_s",
                self.rate_per_s,
                "must be between 1 and 1000000",
            );
        }
        if !(self.duration_s > 0.0 && self.duration_s <= 3_600.0) {
            return refuse(
                "sim.duration_s",
                self.duration_s,
                "must be above 0 and at most 3600",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "version = 1\nname = \"t\"\nseed = 1\n[traffic]\nrate_per_s = 100\nduration_s = 1.0\ncampaigns = 3\nads_per_campaign = 2\n";

    #[test]
    fn a_minimal_scenario_takes_defaults() {
        let scenario = Scenario::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(scenario.engine.partitions, 8);
        assert!(scenario.expects(Invariant::ExactlyOnce));
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_value() {
        let typo = MINIMAL.replace("campaigns = 3", "campains = 3");
        let error = Scenario::parse(&typo, "t.toml").unwrap_err().to_string();
        assert!(error.starts_with("t.toml: "), "{error}");
        assert!(error.contains("campains"), "{error}");
        let bad = format!("{MINIMAL}[anomalies]\nlate_fraction = 1.5\n");
        let error = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert_eq!(
            error,
            "t.toml: `anomalies.late_fraction` = 1.5: must be between 0 and 1"
        );
        let bad = format!("{MINIMAL}[anomalies]\nclock_skew_ms = 300001\n");
        let error = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert_eq!(
            error,
            "t.toml: `anomalies.clock_skew_ms` = 300001: must be at most 300000 (ingest refuses event times further in the future)"
        );
        let bad = format!("{MINIMAL}[faults]\nlog_empty_read_rate = -0.1\n");
        let error = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert_eq!(
            error,
            "t.toml: `faults.log_empty_read_rate` = -0.1: must be between 0 and 1"
        );
        let bad = format!("{MINIMAL}[engine]\nwindow_ms = 7000\n");
        let error = Scenario::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(
            error.contains("window_ms 7000 must be at least 1000 and divide an hour"),
            "{error}"
        );
    }
}
