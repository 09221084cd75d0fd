//! `fedval-bench`: benchmark fedval's valuation estimators (see docs/valuation-benchmark.md).

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fedval_bench::runner::parse_estimators;
use fedval_bench::table::{TableConfig, run_table};
use fedval_core::valuation::{GameFile, GameSpec};

/// Accuracy and overhead of fedval's Shapley (and other value) estimators.
#[derive(Parser, Debug)]
#[command(name = "fedval-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run estimators on one JSON game file (soum, weighted_voting, glove, airport).
    Game {
        /// The game file.
        file: PathBuf,
        /// Utility evaluations per estimate.
        #[arg(long, default_value_t = 4096)]
        budget: u64,
        /// Seeds 0..SEEDS; results are averaged over them.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// `all` or a comma-separated list of names, e.g. `permutation,beta_shapley(16,1)`.
        #[arg(long, default_value = "all")]
        estimators: String,
    },
    /// Write the table's seeded SOUM and weighted-voting games as JSON files (to run
    /// another library, e.g. bench/shapiq/compare.py, on exactly the same games).
    ExportGames {
        /// Players.
        #[arg(long, default_value_t = 14)]
        n: usize,
        /// Games 0..SEEDS of each kind (the table pairs game s with seed s).
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the full table and write <OUT>.csv and <OUT>.md.
    Table {
        /// Player counts (each at most 20: exact values come from the utility table).
        #[arg(long, value_delimiter = ',', default_value = "10,14,20")]
        ns: Vec<usize>,
        /// Budgets.
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024,4096")]
        budgets: Vec<u64>,
        /// Seeds 0..SEEDS per cell.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// `all` or a comma-separated list of estimator names.
        #[arg(long, default_value = "all")]
        estimators: String,
        /// Output path without extension.
        #[arg(long, default_value = "docs/valuation-benchmark")]
        out: PathBuf,
        /// Also compare Stratified SVARM with shapiq's figures (n = 14, budgets 200/1000/4000).
        #[arg(long)]
        compare_shapiq: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::ExportGames { n, seeds, dir } => {
            std::fs::create_dir_all(&dir)?;
            for seed in 0..seeds {
                for (kind, game) in [
                    ("soum", GameSpec::random_soum(n, seed)),
                    ("weighted_voting", GameSpec::random_weighted_voting(n, seed)),
                ] {
                    let file = GameFile {
                        game,
                        exact_shapley_values: None,
                    };
                    let path = dir.join(format!("{kind}-{n}-{seed}.json"));
                    std::fs::write(&path, serde_json::to_string(&file)?)?;
                    // A closed pipe (`| head`) is not an error worth a panic.
                    let _ = writeln!(std::io::stdout(), "{}", path.display());
                }
            }
        }
        Command::Game {
            file,
            budget,
            seeds,
            estimators,
        } => {
            let estimators = parse_estimators(&estimators)?;
            print!(
                "{}",
                fedval_bench::game_cmd::run_game(&file, budget, seeds, &estimators)?
            );
        }
        Command::Table {
            ns,
            budgets,
            seeds,
            estimators,
            out,
            compare_shapiq,
        } => {
            if let Some(&n) = ns.iter().find(|&&n| n == 0 || n > 20) {
                anyhow::bail!(
                    "--ns must be between 1 and 20 (exact values are tabulated), got {n}"
                );
            }
            let config = TableConfig {
                ns,
                budgets,
                seeds,
                estimators: parse_estimators(&estimators)?,
                compare_shapiq,
            };
            run_table(&config, &out)?;
        }
    }
    Ok(())
}
