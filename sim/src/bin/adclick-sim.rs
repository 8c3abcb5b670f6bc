//! `adclick-sim`: the engine under the deterministic simulator. Build it with `ci/sim`, which
//! compiles with `--cfg madsim` into `target/madsim`.
//!
//! ```text
//! ci/sim run scenarios/worker-crash.toml --seed 7            # one seed
//! ci/sim run scenarios/*.toml --seeds 1..50                  # a sweep
//! ci/sim run scenarios/swarm.toml --seed 7 --check-determinism
//! ci/sim canary scenarios/worker-crash.toml --seeds 1..10    # exits 0 only if the bug is caught
//! ci/sim canaries                                            # every canary, by its own invariant
//! ```

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "adclick-sim runs only in a simulator build: use `ci/sim` (it builds with --cfg madsim)"
    );
    std::process::ExitCode::from(2)
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    sim_main::main()
}

#[cfg(madsim)]
mod sim_main {
    use std::ops::Range;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use adclick_engine::scenario::Scenario;
    use adclick_engine::worker::Canary;
    use adclick_sim::simulation::{SimOptions, SimReport, simulate};
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    #[command(
        name = "adclick-sim",
        about = "Runs adclick scenarios under the deterministic simulator"
    )]
    struct Args {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Args)]
    struct SeedArgs {
        /// Scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// One seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// A range of seeds, `A..B` (B excluded). Default: `1..` plus each scenario's `sim.seeds`.
        #[arg(long, value_parser = parse_range)]
        seeds: Option<Range<u64>>,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Runs seeds; exits 1 if any invariant fails.
        Run {
            #[command(flatten)]
            seeds: SeedArgs,
            /// Runs every seed twice and demands the same trace hash.
            #[arg(long)]
            check_determinism: bool,
            /// Prints every seed's report as JSON.
            #[arg(long)]
            verbose: bool,
        },
        /// Runs every canary of the suite against its scenario; exits 0 only if each is caught
        /// by its own invariant within the seed budget.
        Canaries,
        /// Runs a deliberately broken engine; exits 0 only if some seed catches it.
        Canary {
            #[command(flatten)]
            seeds: SeedArgs,
            #[arg(long, value_enum, default_value = "increments")]
            variant: Variant,
        },
    }

    /// Seeds each canary may take to be caught.
    const CANARY_SEED_BUDGET: u64 = 20;

    /// Each canary, the scenario chosen for it, and the invariant that must catch it: one rule
    /// each, so a check that stopped guarding its rule shows as a canary that survives. No
    /// generation check runs in the swarm: in `takeover` the per-key fence stops most of a
    /// zombie's writes anyway (defence in depth), and only the swarm's mix of pauses, takeovers
    /// and kills shows it within the budget.
    const CANARIES: [(Canary, &str, &str); 5] = [
        (
            Canary::UnfencedIncrements,
            "scenarios/sim-worker-kills.toml",
            "exactly_once",
        ),
        (
            Canary::SkipPendingReapply,
            "scenarios/store-faults.toml",
            "exactly_once",
        ),
        (
            Canary::NewestFraudListOnRestore,
            "scenarios/fraud-rotation.toml",
            "exactly_once",
        ),
        (
            Canary::NoGenerationCheck,
            "scenarios/swarm.toml",
            "exactly_once",
        ),
        (
            Canary::DedupHorizonShortByOneBucket,
            "scenarios/late-past-horizon.toml",
            "exactly_once",
        ),
    ];

    /// What one canary's seeds showed.
    enum Caught {
        By {
            seed: u64,
            invariants: Vec<&'static str>,
        },
        Survived,
    }

    /// Runs every canary against its scenario, one row each; exits 1 if one survives its budget
    /// or is caught only by another invariant than its own.
    fn canaries() -> ExitCode {
        println!(
            "{:<34} {:<28} {:<14} {:<10} seeds",
            "canary", "scenario", "target", "caught at"
        );
        let mut failed = 0;
        for (canary, path, target) in CANARIES {
            let scenario = match load(Path::new(path)) {
                Ok(scenario) => scenario,
                Err(code) => return code,
            };
            let (caught, tried) = hunt(&scenario, canary);
            let verdict = match &caught {
                Caught::By { invariants, .. } if invariants.contains(&target) => "caught",
                Caught::By { .. } => "CAUGHT BY ANOTHER INVARIANT",
                Caught::Survived => "SURVIVED",
            };
            if verdict != "caught" {
                failed += 1;
            }
            let (at, by) = match &caught {
                Caught::By { seed, invariants } => (seed.to_string(), invariants.join(",")),
                Caught::Survived => ("-".into(), "-".into()),
            };
            println!(
                "{:<34} {:<28} {target:<14} {at:<10} {tried:<5} {verdict} (by {by})",
                canary.name(),
                scenario.name,
            );
        }
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            println!(
                "{failed} canaries not caught by their own invariant within {CANARY_SEED_BUDGET} seeds"
            );
            ExitCode::FAILURE
        }
    }

    /// Seeds 1.. up to the budget, until one fails: the invariants that failed, and seeds tried.
    fn hunt(scenario: &Scenario, canary: Canary) -> (Caught, u64) {
        for seed in 1..=CANARY_SEED_BUDGET {
            let options = SimOptions {
                seed,
                canary: Some(canary),
            };
            let failed = match run_seed(scenario, options) {
                Ok(report) => report
                    .verdicts
                    .iter()
                    .filter(|verdict| !verdict.holds)
                    .map(|verdict| verdict.invariant)
                    .collect(),
                // A run the canary broke outright counts as caught by no invariant.
                Err(_) => vec!["(the run failed)"],
            };
            if !failed.is_empty() {
                return (
                    Caught::By {
                        seed,
                        invariants: failed,
                    },
                    seed,
                );
            }
        }
        (Caught::Survived, CANARY_SEED_BUDGET)
    }

    #[derive(Clone, Copy, clap::ValueEnum)]
    enum Variant {
        /// Writes increments instead of fenced absolute values.
        Increments,
    }

    fn parse_range(text: &str) -> Result<Range<u64>, String> {
        let (start, end) = text
            .split_once("..")
            .ok_or_else(|| format!("{text:?} is not A..B"))?;
        let start: u64 = start
            .parse()
            .map_err(|_| format!("{start:?} is not a number"))?;
        let end: u64 = end
            .parse()
            .map_err(|_| format!("{end:?} is not a number"))?;
        if end <= start {
            return Err(format!("{text:?} is empty"));
        }
        Ok(start..end)
    }

    fn seeds_for(args: &SeedArgs, scenario: &Scenario) -> Range<u64> {
        match (args.seed, &args.seeds) {
            (Some(seed), _) => seed..seed + 1,
            (None, Some(range)) => range.clone(),
            (None, None) => 1..1 + scenario.sim.seeds,
        }
    }

    /// Runs one seed on a fresh thread: std's hash maps draw their keys per thread and advance
    /// them per map, so a second run on the same thread would iterate them in another order.
    fn run_seed(scenario: &Scenario, options: SimOptions) -> anyhow::Result<SimReport> {
        let scenario = scenario.clone();
        let seed = options.seed;
        std::thread::spawn(move || {
            let mut runtime =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            let limit_s = scenario.sim.duration_s + scenario.expect.liveness_timeout_s + 600.0;
            runtime.set_time_limit(Duration::from_secs_f64(limit_s));
            runtime.block_on(async move { simulate(&scenario, options).await })
        })
        .join()
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            anyhow::anyhow!("the simulation panicked: {message}")
        })?
    }

    fn git_commit() -> String {
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    }

    fn write_trace(report: &SimReport) -> Option<PathBuf> {
        let dir = Path::new("target/sim-traces");
        std::fs::create_dir_all(dir).ok()?;
        let path = dir.join(format!("{}-{}.json", report.scenario, report.seed));
        std::fs::write(&path, serde_json::to_string_pretty(report).ok()?).ok()?;
        Some(path)
    }

    pub fn main() -> ExitCode {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
        let args = Args::parse();
        match args.command {
            Command::Run {
                seeds,
                check_determinism,
                verbose,
            } => run(&seeds, check_determinism, verbose),
            Command::Canary { seeds, variant } => canary(&seeds, variant),
            Command::Canaries => canaries(),
        }
    }

    fn load(path: &Path) -> Result<Scenario, ExitCode> {
        Scenario::load(path).map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(2)
        })
    }

    /// What a sweep got through.
    #[derive(Default)]
    struct Sweep {
        passed: u64,
        failed: u64,
        virtual_s: f64,
        events: u64,
    }

    fn run(args: &SeedArgs, check_determinism: bool, verbose: bool) -> ExitCode {
        let commit = git_commit();
        let started = Instant::now();
        let mut sweep = Sweep::default();
        for path in &args.scenarios {
            let scenario = match load(path) {
                Ok(scenario) => scenario,
                Err(code) => return code,
            };
            for seed in seeds_for(args, &scenario) {
                let replay = format!(
                    "ci/sim run {} --seed {seed}  (commit {commit})",
                    path.display()
                );
                run_one(
                    &scenario,
                    seed,
                    check_determinism,
                    verbose,
                    &replay,
                    &mut sweep,
                );
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let seeds = sweep.passed + sweep.failed;
        eprintln!(
            "simulated {:.0} virtual s and {} clicks in {elapsed:.1} real s: {:.0} clicks/s, {:.0} seeds/min",
            sweep.virtual_s,
            sweep.events,
            sweep.events as f64 / elapsed.max(1e-9),
            seeds as f64 * 60.0 / elapsed.max(1e-9)
        );
        println!("sim: {} passed, {} failed", sweep.passed, sweep.failed);
        if sweep.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// One seed (twice with `check_determinism`), its PASS or FAIL line with the replay command.
    fn run_one(
        scenario: &Scenario,
        seed: u64,
        check_determinism: bool,
        verbose: bool,
        replay: &str,
        sweep: &mut Sweep,
    ) {
        let options = || SimOptions {
            seed,
            ..SimOptions::default()
        };
        let report = match run_seed(scenario, options()) {
            Ok(report) => report,
            Err(error) => {
                sweep.failed += 1;
                println!(
                    "FAIL {} seed={seed}: {error:#}\n  replay: {replay}",
                    scenario.name
                );
                return;
            }
        };
        sweep.virtual_s += report.virtual_s;
        sweep.events += report.log_records;
        let mut problems: Vec<String> = report
            .verdicts
            .iter()
            .filter(|verdict| !verdict.holds)
            .map(|verdict| format!("{}: {}", verdict.invariant, verdict.detail))
            .collect();
        if check_determinism {
            match run_seed(scenario, options()) {
                Ok(again) if again.trace_hash == report.trace_hash => {}
                Ok(again) => problems.push(format!(
                    "determinism: trace hash {} then {}",
                    report.trace_hash, again.trace_hash
                )),
                Err(error) => problems.push(format!("determinism: second run failed: {error:#}")),
            }
        }
        if verbose {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        }
        if problems.is_empty() {
            sweep.passed += 1;
            let faults = &report.faults;
            println!(
                "PASS {} seed={seed} hash={} virtual={:.1}s clicks={} kills={} pauses={} takeovers={} store_errors={} log_errors={} dup_appends={}",
                scenario.name,
                report.trace_hash,
                report.virtual_s,
                report.log_records,
                faults.worker_kills,
                faults.node_pauses,
                faults.takeovers,
                faults.store_errors,
                faults.log_errors,
                faults.duplicate_appended_records,
            );
            return;
        }
        sweep.failed += 1;
        let trace = write_trace(&report).map_or(String::new(), |path| {
            format!("\n  trace: {}", path.display())
        });
        println!(
            "FAIL {} seed={seed} hash={}\n  {}\n  replay: {replay}{trace}",
            scenario.name,
            report.trace_hash,
            problems.join("\n  ")
        );
    }

    fn canary(args: &SeedArgs, variant: Variant) -> ExitCode {
        let canary = match variant {
            Variant::Increments => Canary::UnfencedIncrements,
        };
        for path in &args.scenarios {
            let scenario = match load(path) {
                Ok(scenario) => scenario,
                Err(code) => return code,
            };
            for seed in seeds_for(args, &scenario) {
                let options = SimOptions {
                    seed,
                    canary: Some(canary),
                };
                match run_seed(&scenario, options) {
                    Ok(report) if !report.passed => {
                        let caught: Vec<&str> = report
                            .verdicts
                            .iter()
                            .filter(|v| !v.holds)
                            .map(|v| v.invariant)
                            .collect();
                        println!(
                            "canary caught in {} at seed {seed} by {}",
                            scenario.name,
                            caught.join(", ")
                        );
                        return ExitCode::SUCCESS;
                    }
                    Ok(_) => println!("canary not caught in {} at seed {seed}", scenario.name),
                    Err(error) => {
                        println!(
                            "canary run failed in {} at seed {seed}: {error:#}",
                            scenario.name
                        );
                        return ExitCode::from(2);
                    }
                }
            }
        }
        println!("canary NOT caught");
        ExitCode::FAILURE
    }
}
