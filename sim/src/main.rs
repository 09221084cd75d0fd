//! `fedval-sim`: run a simulated federation and report contributions.
//!
//! With no arguments it runs the demo: 10 clients on digits with Dirichlet label skew,
//! one client with shuffled labels, one with very little data, 20 rounds, on an
//! embedded server; then prints the per-client table and writes `fedval-out/`.
//! `--scenario FILE` (e.g. `sim/scenarios/sign_flip.toml`) runs a scenario file and adds
//! standalone accuracy, test accuracy and removal round to the table, then a summary of
//! honest accuracy, fairness and attack success. A vertical scenario (a `[vertical]` table,
//! e.g. `sim/scenarios/vertical_digits.toml`, or `--vertical SPLIT`) prints each party's
//! columns, behaviour and VerFedSV value, then the balance and the vertical vs centralised
//! test accuracy. A bandit scenario (a `[bandit]` table, e.g.
//! `sim/scenarios/bandit_linear.toml`) prints each client's rounds, true cost, payment and
//! utility, then steps, communication rounds, regret / sqrt(t) and the run's checks; with
//! `--bandit-sweep` (or a `[bandit.sweep]` table) also the truthful-vs-misreport tables.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fedval_sim::defense::Defense;
use fedval_sim::scenario::{ModelChoice, Partition, VerticalSim, dataset_columns};
use fedval_sim::{SimConfig, SimOptions};

#[derive(Debug, Parser)]
#[command(
    name = "fedval-sim",
    version,
    about = "Simulate a federation and value its clients"
)]
struct Args {
    /// Connect to this server instead of starting an embedded one (e.g. http://127.0.0.1:50051).
    #[arg(long)]
    server: Option<String>,
    /// Admin token of the server.
    #[arg(long, env = "FEDVAL_ADMIN_TOKEN", default_value = "sim-admin-token")]
    admin_token: String,
    /// Output directory for report.json, rounds.csv, clients.csv, values.csv and report.html
    /// (a self-contained page with charts).
    #[arg(long, default_value = "fedval-out")]
    out: PathBuf,
    /// Write the scenario's data (client CSVs, validation.csv, server.toml) into this
    /// directory and exit, to run the federation as separate processes.
    #[arg(long, value_name = "DIR")]
    export_csv: Option<PathBuf>,
    /// Scenario file (JSON or TOML, the fields of SimConfig); flags below override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Shipped data set: digits, breast_cancer, wine, iris.
    #[arg(long)]
    dataset: Option<String>,
    /// Number of clients.
    #[arg(long)]
    clients: Option<usize>,
    /// Number of rounds.
    #[arg(long)]
    rounds: Option<u64>,
    /// Clients with shuffled labels.
    #[arg(long)]
    noisy: Option<usize>,
    /// Clients with very little data.
    #[arg(long)]
    tiny: Option<usize>,
    /// Dirichlet alpha of the label skew (use --iid for an IID split).
    #[arg(long)]
    alpha: Option<f64>,
    /// Split the data IID instead of with label skew.
    #[arg(long)]
    iid: bool,
    /// Split the labels IID but the client sizes by Dir(ALPHA) (size skew).
    #[arg(long, value_name = "ALPHA")]
    quantity_skew: Option<f64>,
    /// Train an MLP with this many hidden units instead of logistic regression.
    #[arg(long)]
    mlp: Option<usize>,
    /// Valuation method: auto, exact, permutation, none.
    #[arg(long)]
    valuation: Option<String>,
    /// Utility evaluations per round for the permutation estimator.
    #[arg(long)]
    budget: Option<u64>,
    /// Utility of the valuation game: accuracy or neg_log_loss.
    #[arg(long)]
    utility: Option<String>,
    /// SGD learning rate of local training.
    #[arg(long)]
    lr: Option<f32>,
    /// Local epochs per round.
    #[arg(long)]
    epochs: Option<u32>,
    /// Aggregator: fedavg, median, trimmed_mean:TRIM, krum:BYZANTINE,
    /// multi_krum:BYZANTINE:SELECTED, norm_clip:MAX_NORM, or RFFL reputations:
    /// rffl:GAMMA (ALGORITHMS.md 4) or rffl_reference:GAMMA (reward-only client models).
    #[arg(long, value_parser = Defense::parse)]
    aggregator: Option<Defense>,
    /// Master seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run a vertical federation with this column split: digits_quadrants,
    /// breast_cancer_groups or contiguous:K (the scenario's [vertical] table otherwise).
    #[arg(long, value_name = "SPLIT")]
    vertical: Option<String>,
    /// Vertical: extra parties holding seeded Gaussian noise.
    #[arg(long)]
    noise_parties: Option<usize>,
    /// Vertical: extra parties holding a copy of party 0's columns.
    #[arg(long)]
    duplicate_parties: Option<usize>,
    /// Bandit: total steps of the run (overrides the scenario's `bandit.horizon`).
    #[arg(long)]
    horizon: Option<u64>,
    /// Bandit: after the run, rerun it with client 0 reporting 0.5 .. 2 x its true cost under
    /// truth_fedban and the baseline (unless the scenario has its own `[bandit.sweep]`).
    #[arg(long)]
    bandit_sweep: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run the attack table instead of one simulation: every scenario of
    /// --table-scenarios against every aggregator of --table-aggregators, over --seeds;
    /// writes attack-table.md and attack-table.csv into --out. The flags above (except
    /// --scenario, --aggregator and --seed) override every scenario.
    #[arg(long)]
    attack_table: bool,
    /// Shipped scenarios (sim/scenarios/NAME.toml, compiled in) the attack table runs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,free_riders,label_flip,sign_flip,scaled_noise,sybil"
    )]
    table_scenarios: Vec<String>,
    /// Aggregators (same syntax as --aggregator) the attack table compares.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = Defense::parse,
        default_value = "fedavg,median,trimmed_mean:2,krum:2,multi_krum:2:6,rffl:0.5,rffl_reference:0.5,fair_reward:150:0.4:11:0.3"
    )]
    table_aggregators: Vec<Defense>,
    /// Seeds of the attack table (each cell averages over them).
    #[arg(long, value_delimiter = ',', default_value = "42")]
    seeds: Vec<u64>,
}

fn config(args: &Args) -> anyhow::Result<SimConfig> {
    let mut c = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            } else {
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
        }
        None => SimConfig::default(),
    };
    override_config(args, &mut c);
    if let Some(v) = &args.aggregator {
        v.apply(&mut c);
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    override_bandit(args, &mut c)?;
    Ok(c)
}

/// Applies `--horizon` and `--bandit-sweep`, which only a bandit scenario accepts.
fn override_bandit(args: &Args, c: &mut SimConfig) -> anyhow::Result<()> {
    let Some(b) = c.bandit.as_mut() else {
        if args.horizon.is_some() || args.bandit_sweep {
            anyhow::bail!("--horizon and --bandit-sweep need a bandit scenario ([bandit] table)");
        }
        return Ok(());
    };
    if let Some(h) = args.horizon {
        b.horizon = h;
    }
    if args.bandit_sweep && b.sweep.is_none() {
        b.sweep = Some(fedval_sim::bandit::SweepSpec::default());
    }
    Ok(())
}

/// Applies the flags that describe the federation (not the scenario, aggregator or seed).
fn override_config(args: &Args, c: &mut SimConfig) {
    if let Some(v) = &args.dataset {
        c.dataset = v.clone();
    }
    if let Some(v) = args.clients {
        c.clients = v;
    }
    if let Some(v) = args.rounds {
        c.rounds = v;
    }
    if let Some(v) = args.noisy {
        c.noisy = v;
    }
    if let Some(v) = args.tiny {
        c.tiny = v;
    }
    if let Some(alpha) = args.alpha {
        c.partition = Partition::Dirichlet { alpha };
    }
    if args.iid {
        c.partition = Partition::Iid;
    }
    if let Some(alpha) = args.quantity_skew {
        c.partition = Partition::Quantity { alpha };
    }
    if let Some(hidden) = args.mlp {
        c.model = ModelChoice::Mlp { hidden };
    }
    if let Some(v) = &args.valuation {
        c.valuation = v.clone();
    }
    if let Some(v) = args.budget {
        c.valuation_budget = v;
    }
    if let Some(v) = &args.utility {
        c.utility = v.clone();
    }
    if let Some(v) = args.lr {
        c.learning_rate = v;
    }
    if let Some(v) = args.epochs {
        c.local_epochs = v;
    }
    override_vertical(args, c);
}

/// Applies `--vertical`, `--noise-parties` and `--duplicate-parties`; unless `--clients`
/// was given, a vertical run's client count becomes its number of parties.
fn override_vertical(args: &Args, c: &mut SimConfig) {
    if let Some(split) = &args.vertical {
        let v = c.vertical.get_or_insert_with(VerticalSim::default);
        v.split = split.clone();
    }
    let Some(v) = c.vertical.as_mut() else {
        return;
    };
    if let Some(n) = args.noise_parties {
        v.noise_parties = n;
    }
    if let Some(n) = args.duplicate_parties {
        v.duplicate_parties = n;
    }
    if args.clients.is_none()
        && let Some(blocks) = dataset_columns(&c.dataset)
            .and_then(|columns| v.column_split(columns).ok())
            .map(|s| s.num_parties())
    {
        c.clients = v.parties(blocks);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fedval-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.attack_table {
        return attack_table(&args).await;
    }
    let config = config(&args)?;
    if config.bandit.is_some() {
        return bandit(&args, config).await;
    }
    if let Some(dir) = &args.export_csv {
        let written = fedval_sim::export::export(&config, dir)
            .with_context(|| format!("exporting the scenario to {}", dir.display()))?;
        for path in written {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let opts = sim_options(&args, config);
    let report = fedval_sim::run(&opts).await.context("simulation failed")?;
    report
        .write(&args.out)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    // A scenario file (or a vertical run) gets the summary; the demo's output stays as it was.
    let detailed = args.scenario.is_some() || report.vertical.is_some();
    print!("{}", report.table(detailed));
    if detailed {
        print!("{}", report.summary());
    }
    println!(
        "final test accuracy {:.4} (loss {:.4}) after {} rounds; {:.1} s wall time; report in {}",
        report.final_test_accuracy,
        report.final_test_loss,
        report.rounds.len(),
        report.wall_time_s,
        args.out.display()
    );
    Ok(())
}

/// Where and how to run `config`, from the command line.
fn sim_options(args: &Args, config: SimConfig) -> SimOptions {
    SimOptions {
        config,
        server: args.server.clone(),
        admin_token: args.admin_token.clone(),
        progress: !args.quiet,
    }
}

/// A bandit scenario: runs it (and its sweep), writes the report, prints the tables.
async fn bandit(args: &Args, config: SimConfig) -> anyhow::Result<()> {
    if args.export_csv.is_some() {
        anyhow::bail!("--export-csv exports client data sets; a bandit scenario has none");
    }
    let opts = sim_options(args, config);
    let report = fedval_sim::bandit::run(&opts)
        .await
        .context("bandit simulation failed")?;
    report
        .write(&args.out)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    print!("{}", report.table());
    print!("{}", report.summary());
    println!(
        "{:.1} s wall time; report in {}",
        report.wall_time_s,
        args.out.display()
    );
    Ok(())
}

/// `--attack-table`: runs the table, prints it and writes it into `--out`.
async fn attack_table(args: &Args) -> anyhow::Result<()> {
    let mut scenarios = Vec::with_capacity(args.table_scenarios.len());
    for name in &args.table_scenarios {
        let mut c = fedval_sim::scenario::shipped(name).map_err(anyhow::Error::msg)?;
        override_config(args, &mut c);
        scenarios.push((name.clone(), c));
    }
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs, eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let table = fedval_sim::attack_table::run_table(
        &scenarios,
        &args.table_aggregators,
        &args.seeds,
        &args.admin_token,
        |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_string());
        },
    )
    .await
    .context("attack table")?;
    bar.finish_and_clear();
    let markdown = table.markdown();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, text) in [
        ("attack-table.md", markdown.clone()),
        ("attack-table.csv", table.csv()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{markdown}");
    println!("\nwritten: {}", args.out.join("attack-table.md").display());
    Ok(())
}
