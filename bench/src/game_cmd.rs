//! `fedval-bench game FILE.json`: every chosen estimator on one game file, with the mean
//! estimate, the MSE against exact values (the file's, or computed for n <= 20) and the
//! time per call (utility included: the game is evaluated as the file describes it).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use fedval_core::valuation::{EstimatorSpec, GameFile, SpecGame, Tracked, utility_table_naive};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::runner::mse;

/// Largest game whose exact references are computed from the utility table.
pub const MAX_TABLE_PLAYERS: usize = 20;

/// Reads, parses and validates a game file.
pub fn load(path: &Path) -> anyhow::Result<GameFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: GameFile = serde_json::from_str(&text)
        .with_context(|| format!("parsing the game file {}", path.display()))?;
    file.validate()
        .with_context(|| format!("validating the game file {}", path.display()))?;
    Ok(file)
}

/// Exact values per estimator target, where known.
struct References {
    n: usize,
    table: Option<Vec<f64>>,
    shapley: Option<Vec<f64>>,
}

impl References {
    fn new(file: &GameFile, game: &mut SpecGame) -> anyhow::Result<Self> {
        let n = file.game.n_players();
        let table = if n <= MAX_TABLE_PLAYERS {
            Some(utility_table_naive(game)?)
        } else {
            None
        };
        let shapley = match (&file.exact_shapley_values, &table) {
            (Some(values), _) => Some(values.clone()),
            (None, Some(t)) => Some(EstimatorSpec::Exact.exact_reference(n, t)?),
            (None, None) => game.closed_form_shapley(),
        };
        Ok(Self { n, table, shapley })
    }

    fn of(&self, spec: &EstimatorSpec) -> anyhow::Result<Option<Vec<f64>>> {
        if spec.is_shapley() {
            return Ok(self.shapley.clone());
        }
        match &self.table {
            Some(t) => Ok(Some(spec.exact_reference(self.n, t)?)),
            None => Ok(None),
        }
    }
}

/// Runs `estimators` on the game in `path` for seeds `0..seeds`; returns the report.
pub fn run_game(
    path: &Path,
    budget: u64,
    seeds: u64,
    estimators: &[EstimatorSpec],
) -> anyhow::Result<String> {
    let file = load(path)?;
    let mut game = file.game.build()?;
    let refs = References::new(&file, &mut game)?;
    let n = refs.n;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} game, {n} players, budget {budget}, seeds 0..{seeds}",
        file.game.kind()
    );
    if let (Some(given), Some(table)) = (&file.exact_shapley_values, &refs.table) {
        let computed = EstimatorSpec::Exact.exact_reference(n, table)?;
        let gap = mse(given, &computed);
        if gap > 1e-18 {
            let _ = writeln!(
                out,
                "warning: exact_shapley_values differ from the computed exact values (MSE {gap:.2e})"
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>9} {:>12}  mean estimate per player",
        "estimator", "mse", "evals", "ms/call"
    );
    for spec in estimators {
        let reference = refs.of(spec)?;
        let mut sum = vec![0.0; n];
        let (mut total_mse, mut evals, mut seconds) = (0.0, 0.0, 0.0);
        let mut error = None;
        for seed in 0..seeds {
            let mut tracked = Tracked::new(&mut game);
            let start = Instant::now();
            let result = spec.estimate(budget, &mut tracked, &mut ChaCha8Rng::seed_from_u64(seed));
            seconds += start.elapsed().as_secs_f64();
            match result {
                Ok(v) => {
                    sum.iter_mut().zip(&v.values).for_each(|(s, x)| *s += x);
                    evals += v.evaluations as f64;
                    if let Some(r) = &reference {
                        total_mse += mse(&v.values, r);
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(e) = error {
            let _ = writeln!(out, "{:<24} error: {e}", spec.name());
            continue;
        }
        let k = seeds.max(1) as f64;
        let estimate: Vec<String> = sum.iter().map(|s| format!("{:.4}", s / k)).collect();
        let mse_text = if reference.is_some() {
            format!("{:.2e}", total_mse / k)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<24} {mse_text:>10} {:>9.0} {:>12.4}  [{}]",
            spec.name(),
            evals / k,
            seconds / k * 1e3,
            estimate.join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_estimator_and_exact_has_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wv.json");
        std::fs::write(
            &path,
            r#"{"type": "weighted_voting", "n_players": 3, "weights": [50, 49, 1], "quota": 51,
                "exact_shapley_values": [0.6666666666666666, 0.16666666666666666,
                                         0.16666666666666666]}"#,
        )
        .unwrap();
        let specs = [
            EstimatorSpec::Exact,
            EstimatorSpec::Permutation { antithetic: true },
        ];
        let report = run_game(&path, 64, 3, &specs).unwrap();
        assert!(
            report.starts_with("weighted_voting game, 3 players"),
            "{report}"
        );
        assert!(!report.contains("warning"), "{report}");
        let exact = report.lines().find(|l| l.starts_with("exact")).unwrap();
        assert!(exact.contains("[0.6667, 0.1667, 0.1667]"), "{report}");
        let exact_mse: f64 = exact.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(exact_mse < 1e-20, "{report}");
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("permutation_antithetic"))
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(
            &path,
            r#"{"type": "airport", "costs": [1, 2], "exact_shapley_values": [1]}"#,
        )
        .unwrap();
        let err = format!("{:#}", run_game(&path, 64, 1, &[]).unwrap_err());
        assert!(err.contains("exact_shapley_values has 1 entries"), "{err}");
        let err = format!("{:#}", load(&dir.path().join("missing.json")).unwrap_err());
        assert!(err.contains("missing.json"), "{err}");
    }
}
