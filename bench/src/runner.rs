//! Running one estimator over several seeds on a tabulated game: mean squared error
//! against the exact reference, evaluations spent, and time per call split into
//! estimator overhead and utility time.
//!
//! Timing method: each run is timed on a [`TabulatedGame`] (one table load per
//! evaluation). The same run is then repeated with the same seed behind a [`Recording`]
//! wrapper, which logs the mask of every evaluation; replaying those masks as plain
//! table loads is timed as the *utility time*, and `overhead = time - utility time`.
//! Runs are deterministic by seed, so the replay sees exactly the timed run's evaluations.

use std::hint::black_box;
use std::ops::Range;
use std::time::Instant;

use fedval_core::valuation::{
    Coalition, EstimatorSpec, Game, IncrementalGame, TabulatedGame, Valuation,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The aggregate of one (estimator, budget) over seeds `0..seeds`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// Mean over seeds of the mean over players of the squared error (`None` on error).
    pub mse: Option<f64>,
    /// Mean evaluations spent per call.
    pub mean_evaluations: f64,
    /// Mean wall time per call, microseconds.
    pub time_us: f64,
    /// Mean time of replaying the call's utility evaluations, microseconds.
    pub utility_us: f64,
    /// The first error an estimator returned, if any.
    pub error: Option<String>,
}

impl Cell {
    /// Estimator time per call without the utility time (never negative).
    pub fn overhead_us(&self) -> f64 {
        (self.time_us - self.utility_us).max(0.0)
    }
}

/// Mean over players of the squared error.
pub fn mse(estimate: &[f64], truth: &[f64]) -> f64 {
    let n = truth.len().max(1) as f64;
    estimate
        .iter()
        .zip(truth)
        .map(|(e, t)| (e - t).powi(2))
        .sum::<f64>()
        / n
}

/// Runs `spec` with `budget` on `game` once per seed in `seeds` (seed `s` seeds a
/// `ChaCha8Rng`) and scores each estimate against `reference`.
pub fn run_cell(
    spec: &EstimatorSpec,
    game: &mut TabulatedGame,
    reference: &[f64],
    budget: u64,
    seeds: Range<u64>,
) -> Cell {
    let runs = seeds.end.saturating_sub(seeds.start).max(1) as f64;
    let (mut total_mse, mut total_evals, mut total_time, mut total_utility) = (0.0, 0.0, 0.0, 0.0);
    let mut masks = Vec::new();
    for seed in seeds {
        let start = Instant::now();
        let result = spec.estimate(budget, &mut *game, &mut ChaCha8Rng::seed_from_u64(seed));
        total_time += start.elapsed().as_secs_f64();
        let valuation: Valuation = match result {
            Ok(v) => v,
            Err(e) => {
                return Cell {
                    mse: None,
                    mean_evaluations: 0.0,
                    time_us: 0.0,
                    utility_us: 0.0,
                    error: Some(e.to_string()),
                };
            }
        };
        total_mse += mse(&valuation.values, reference);
        total_evals += valuation.evaluations as f64;

        masks.clear();
        let mut recording = Recording::new(&mut *game, &mut masks);
        // Same seed, same evaluations: only the masks are wanted here.
        let _ = spec.estimate(budget, &mut recording, &mut ChaCha8Rng::seed_from_u64(seed));
        total_utility += replay(game.table(), &masks);
    }
    Cell {
        mse: Some(total_mse / runs),
        mean_evaluations: total_evals / runs,
        time_us: total_time / runs * 1e6,
        utility_us: total_utility / runs * 1e6,
        error: None,
    }
}

/// Seconds to look up every recorded mask in `table` (the utility time of a run).
fn replay(table: &[f64], masks: &[u64]) -> f64 {
    let start = Instant::now();
    let mut acc = 0.0;
    for &m in masks {
        acc += black_box(table.get(m as usize).copied().unwrap_or(0.0));
    }
    black_box(acc);
    start.elapsed().as_secs_f64()
}

/// Wraps an incremental game and logs the mask of every evaluation (memoised and
/// incremental paths alike).
pub struct Recording<'a, G> {
    game: G,
    current: u64,
    masks: &'a mut Vec<u64>,
}

impl<'a, G: IncrementalGame> Recording<'a, G> {
    /// Records the evaluations of `game` into `masks`.
    pub fn new(game: G, masks: &'a mut Vec<u64>) -> Self {
        Self {
            game,
            current: 0,
            masks,
        }
    }
}

impl<G: IncrementalGame> Game for Recording<'_, G> {
    fn n_players(&self) -> usize {
        self.game.n_players()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        self.masks.push(coalition.mask().unwrap_or(u64::MAX));
        self.game.value(coalition)
    }
}

impl<G: IncrementalGame> IncrementalGame for Recording<'_, G> {
    fn reset(&mut self) {
        self.current = 0;
        self.game.reset();
    }
    fn add(&mut self, player: usize) {
        self.current |= 1 << player;
        self.game.add(player);
    }
    fn remove(&mut self, player: usize) {
        self.current &= !(1 << player);
        self.game.remove(player);
    }
    fn current_value(&mut self) -> f64 {
        self.masks.push(self.current);
        self.game.current_value()
    }
}

/// Splits a comma-separated estimator list at commas outside parentheses and parses
/// each name; `all` is [`EstimatorSpec::benchmark_set`].
pub fn parse_estimators(list: &str) -> anyhow::Result<Vec<EstimatorSpec>> {
    if list.trim() == "all" {
        return Ok(EstimatorSpec::benchmark_set());
    }
    let mut names = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in list.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                names.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    names.push(&list[start..]);
    names
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.parse::<EstimatorSpec>().map_err(anyhow::Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedval_core::valuation::GameSpec;

    fn soum(n: usize) -> TabulatedGame {
        TabulatedGame::from_game(&mut GameSpec::random_soum(n, 1).build().unwrap()).unwrap()
    }

    #[test]
    fn cells_are_deterministic_and_record_every_evaluation() {
        let mut game = soum(8);
        let spec = EstimatorSpec::Permutation { antithetic: false };
        let truth = spec.exact_reference(8, game.table()).unwrap();
        let a = run_cell(&spec, &mut game, &truth, 100, 0..3);
        let b = run_cell(&spec, &mut game, &truth, 100, 0..3);
        assert_eq!((a.mse, a.mean_evaluations), (b.mse, b.mean_evaluations));
        // n = 8: 2 + 7 k evaluations, the largest that fits 100 is 100.
        assert_eq!(a.mean_evaluations, 100.0);
        assert!(a.mse.unwrap() > 0.0 && a.error.is_none());

        let mut masks = Vec::new();
        let v = spec
            .estimate(
                100,
                &mut Recording::new(&mut game, &mut masks),
                &mut ChaCha8Rng::seed_from_u64(0),
            )
            .unwrap();
        assert_eq!(masks.len() as u64, v.evaluations);
        assert_eq!(masks[0], 0, "the walk starts from the empty coalition");
        assert_eq!(masks[1], 255, "then the grand coalition");
    }

    #[test]
    fn exact_has_zero_error_and_failures_become_error_cells() {
        let mut game = soum(6);
        let truth = EstimatorSpec::Exact
            .exact_reference(6, game.table())
            .unwrap();
        let cell = run_cell(&EstimatorSpec::Exact, &mut game, &truth, 0, 0..2);
        assert!(cell.mse.unwrap() < 1e-25, "{cell:?}");
        assert_eq!(cell.mean_evaluations, 64.0);
        let spec = EstimatorSpec::Permutation { antithetic: true };
        let cell = run_cell(&spec, &mut game, &truth, 5, 0..2);
        assert_eq!(cell.mse, None);
        assert!(cell.error.unwrap().contains("too small"));
    }

    #[test]
    fn estimator_lists_split_outside_parentheses() {
        let specs = parse_estimators("permutation, beta_shapley(4,1),gtg(0.01,0.02)").unwrap();
        assert_eq!(
            specs,
            vec![
                EstimatorSpec::Permutation { antithetic: false },
                EstimatorSpec::BetaShapley {
                    alpha: 4.0,
                    beta: 1.0
                },
                EstimatorSpec::Gtg {
                    round_tolerance: 0.01,
                    within_tolerance: 0.02
                },
            ]
        );
        assert_eq!(
            parse_estimators("all").unwrap(),
            EstimatorSpec::benchmark_set()
        );
        assert!(parse_estimators("permutation,shapiq").is_err());
    }

    #[test]
    fn mse_is_the_mean_over_players() {
        assert_eq!(mse(&[1.0, 2.0], &[0.0, 0.0]), 2.5);
    }
}
