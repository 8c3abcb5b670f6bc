//! The `adclick` command: run scenarios on the embedded engine, and aggregate click files.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "adclick",
    version,
    about = "Counts ad clicks exactly once, fast, and provably"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario end to end on embedded defaults (no services) and checks every invariant.
    Run {
        /// The scenario file, e.g. scenarios/quickstart.toml.
        scenario: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Hide the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Keep the log in segment files under this directory (it must be empty or absent)
        /// instead of in memory.
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Write the report (JSON, Markdown, HTML with plots) into this directory.
        #[arg(long)]
        report_dir: Option<PathBuf>,
    },
    /// Runs the engine as a service: HTTP ingest and query, and the workers. With no config,
    /// every role in one process on embedded defaults (no services needed).
    Serve {
        /// The server config (adclick.toml); README.md has an example for Kafka + Redis + S3.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `http.listen`, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Take unsigned clicks (sets security.allow_unsigned): for demos only, and the start-up
        /// log says so loudly. Without a config file this is already the case.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Drives the engine at a scenario's rate, open loop, and reports the achieved rate, the ack
    /// latency (from the intended send time, and raw), freshness and lag. `--target inproc` runs
    /// the whole engine in this process (checking every invariant) and writes the HTML report;
    /// `--target http://HOST:PORT` drives a running `adclick serve`.
    Load(LoadArgs),
    /// Bills a closed period exactly from the Parquet archive into PostgreSQL or SQLite, in one
    /// transaction, once every partition's archive has caught up past the period's end plus
    /// the grace. A period billed already gets a correction run (adclick_bill_adjustments);
    /// billed rows are never rewritten.
    Bill(cli::billing::BillArgs),
    /// Compares the fast path's hour totals (Redis) with billing, per (campaign, hour), and
    /// names the cause of every difference. Exit 1 if any difference is unexplained.
    Reconcile(cli::billing::ReconcileArgs),
    /// Replays the log into the real-time store through the workers' aggregator and writes
    /// every series whose window or hour starts in [--from, --to): after a store loss, or a
    /// logic fix. Reads the whole retained log; safe against running workers (it claims each
    /// partition, and they take it back). README.md, "Rebuilding the store".
    Rebuild {
        /// The server config (adclick.toml): the same log, store, checkpoints, [engine] and
        /// [fraud] list as `adclick serve --config`.
        #[arg(long)]
        config: PathBuf,
        /// The first series start to write, ms since the epoch.
        #[arg(long)]
        from: u64,
        /// Write only series that start before this, ms since the epoch (default: no end).
        #[arg(long)]
        to: Option<u64>,
        /// Judge every click with the config's current `[fraud] list` (to apply today's list to
        /// history), instead of the version the workers' checkpoints name for its offset.
        #[arg(long)]
        current_fraud_list: bool,
    },
    /// Aggregates a file of JSON clicks (one per line) through the same operator chain and prints
    /// per-window counts as CSV. Event time comes from the file; the end of input closes every window.
    Aggregate {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: cli::aggregate::InputFormat,
        /// A fraud list file (`version N`, then `ip ...` / `ua ...` lines).
        #[arg(long)]
        fraud_list: Option<PathBuf>,
        /// The processing time the input is judged at, in ms since the epoch: it bounds the
        /// watermark, and records whose event time ingest could not have accepted then are
        /// quarantined. Default: the largest event time read so far (a replay of history).
        #[arg(long)]
        now_ms: Option<u64>,
    },
}

#[derive(clap::Args)]
struct LoadArgs {
    scenario: PathBuf,
    #[arg(long, default_value = "inproc")]
    target: String,
    /// Where the inproc report goes (JSON, Markdown, HTML with plots).
    #[arg(long, default_value = "target/adclick-reports")]
    report_dir: PathBuf,
    /// Inproc: bisect for the highest rate that holds (rate, ack p99 bound, invariants).
    #[arg(long)]
    max_rate_search: bool,
    /// Length of each max-rate-search trial.
    #[arg(long, default_value_t = 5.0)]
    trial_s: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// `adclick load`: the max-rate search, an in-process run, or a run against a target.
fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let LoadArgs {
        scenario,
        target,
        report_dir,
        max_rate_search,
        trial_s,
        connections,
        json,
    } = args;
    if max_rate_search {
        let search_target = if target == "inproc" {
            adclick_loadgen::search::SearchTarget::Inproc
        } else if target.starts_with("http://") {
            adclick_loadgen::search::SearchTarget::Http {
                base: target.trim_end_matches('/').to_owned(),
                connections,
            }
        } else {
            return Ok(fail(
                "--max-rate-search runs with --target inproc or http://HOST:PORT",
            ));
        };
        let scenario = adclick_engine::scenario::Scenario::load(&scenario)?;
        adclick_loadgen::search::main(&scenario, search_target, trial_s, 8, json.as_deref())
    } else if target == "inproc" {
        cli::run::main(&scenario, json.as_deref(), true, None, Some(&report_dir))
    } else {
        let json = json.as_deref();
        cli::load::main(&scenario, &target, connections, json, Some(&report_dir))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match args.command {
        Command::Run {
            scenario,
            json,
            no_progress,
            log_dir,
            report_dir,
        } => cli::run::main(
            &scenario,
            json.as_deref(),
            !no_progress,
            log_dir,
            report_dir.as_deref(),
        ),
        Command::Bill(args) => cli::billing::bill(args),
        Command::Reconcile(args) => cli::billing::reconcile_command(args),
        Command::Serve {
            config,
            listen,
            allow_unsigned,
        } => cli::serve::main(config.as_deref(), listen, allow_unsigned),
        Command::Load(args) => load(args),
        Command::Rebuild {
            config,
            from,
            to,
            current_fraud_list,
        } => cli::rebuild::main(&config, from, to, current_fraud_list),
        Command::Aggregate {
            input,
            format,
            fraud_list,
            now_ms,
        } => cli::aggregate::main(&input, format, fraud_list.as_deref(), now_ms),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
