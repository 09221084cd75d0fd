//! `fedval-sim`: run a simulated federation and report contributions.
//!
//! With no arguments it runs the demo: 10 clients on digits with Dirichlet label skew,
//! one client with shuffled labels, one with very little data, 20 rounds, on an
//! embedded server; then prints the per-client table and writes `fedval-out/`.
//! `--scenario FILE` (e.g. `sim/scenarios/sign_flip.toml`) runs a scenario file and adds
//! standalone accuracy, test accuracy and removal round to the table, then a summary of
//! honest accuracy, fairness and attack success.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fedval_core::aggregate::AggregatorSpec;
use fedval_sim::scenario::{ModelChoice, Partition};
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
    /// multi_krum:BYZANTINE:SELECTED or norm_clip:MAX_NORM.
    #[arg(long, value_parser = parse_aggregator)]
    aggregator: Option<AggregatorSpec>,
    /// Master seed.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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
    if let Some(v) = &args.aggregator {
        c.aggregator = *v;
    }
    if let Some(v) = args.seed {
        c.seed = v;
    }
    Ok(c)
}

/// `kind[:param[:param]]`, e.g. `krum:2` or `multi_krum:2:6`; validated by the server.
fn parse_aggregator(text: &str) -> Result<AggregatorSpec, String> {
    let mut parts = text.split(':');
    let kind = parts.next().unwrap_or_default();
    let params: Vec<&str> = parts.collect();
    let int = |i: usize| -> Result<usize, String> {
        params
            .get(i)
            .ok_or_else(|| format!("{kind} needs {} parameter(s), e.g. krum:2", i + 1))?
            .parse()
            .map_err(|e| format!("{kind}: bad parameter {:?}: {e}", params[i]))
    };
    let spec = match kind {
        "fedavg" => AggregatorSpec::FedAvg,
        "median" => AggregatorSpec::Median,
        "trimmed_mean" => AggregatorSpec::TrimmedMean { trim: int(0)? },
        "krum" => AggregatorSpec::Krum { byzantine: int(0)? },
        "multi_krum" => AggregatorSpec::MultiKrum {
            byzantine: int(0)?,
            selected: int(1)?,
        },
        "norm_clip" => AggregatorSpec::NormClip {
            max_norm: params
                .first()
                .ok_or("norm_clip needs a bound, e.g. norm_clip:1.0")?
                .parse()
                .map_err(|e| format!("norm_clip: bad bound: {e}"))?,
        },
        other => {
            return Err(format!(
                "unknown aggregator {other:?}: use fedavg, median, trimmed_mean:K, krum:F, multi_krum:F:M or norm_clip:C"
            ));
        }
    };
    Ok(spec)
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
    let config = config(&args)?;
    if let Some(dir) = &args.export_csv {
        let written = fedval_sim::export::export(&config, dir)
            .with_context(|| format!("exporting the scenario to {}", dir.display()))?;
        for path in written {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let opts = SimOptions {
        config,
        server: args.server.clone(),
        admin_token: args.admin_token.clone(),
        progress: !args.quiet,
    };
    let report = fedval_sim::run(&opts).await.context("simulation failed")?;
    report
        .write(&args.out)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    // A scenario file gets the attack metrics; the demo's output stays as it was.
    let detailed = args.scenario.is_some();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregator_flags_parse() {
        assert_eq!(parse_aggregator("median"), Ok(AggregatorSpec::Median));
        assert_eq!(
            parse_aggregator("krum:2"),
            Ok(AggregatorSpec::Krum { byzantine: 2 })
        );
        assert_eq!(
            parse_aggregator("multi_krum:2:6"),
            Ok(AggregatorSpec::MultiKrum {
                byzantine: 2,
                selected: 6
            })
        );
        assert_eq!(
            parse_aggregator("norm_clip:0.5"),
            Ok(AggregatorSpec::NormClip { max_norm: 0.5 })
        );
        assert!(
            parse_aggregator("krum")
                .unwrap_err()
                .contains("needs 1 parameter")
        );
        assert!(
            parse_aggregator("mean")
                .unwrap_err()
                .contains("unknown aggregator")
        );
    }
}
