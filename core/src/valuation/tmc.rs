//! TMC-Shapley: truncated Monte Carlo Shapley (Ghorbani & Zou 2019, "Data Shapley";
//! ALGORITHMS.md 2.2).
//!
//! Permutation sampling with two savings. Truncation: while walking a permutation, once
//! `|v(prefix) - v(N)| <= tolerance * |v(N)|` has held for `consecutive` evaluated
//! prefixes in a row, the remaining players of that permutation get marginal 0 without
//! evaluation (a game whose prefixes saturate early, e.g. an accuracy that plateaus,
//! costs far less than `n - 1` evaluations per walk). Convergence: after every walk the
//! running means are kept for the last `window` walks; the run stops with
//! [`StopReason::Converged`] once, for every one of them,
//! `mean_i |phi_i^(t-k) - phi_i^t| / (|phi_i^t| + 1e-12) < threshold` (the rule of the
//! Data Shapley reference code, checked there every 100 walks, here after every walk).
//!
//! Every coalition goes through the memoised [`Metered::value`], so `v({})` and `v(N)`
//! are evaluated once and a prefix seen in an earlier walk is free. The budget is hard:
//! a walk starts only if its worst case (`n - 1` new evaluations) fits; as memo hits can
//! make walks free, the number of walks is also capped at the budget (this only binds
//! for tiny games whose coalitions are all memoised).
//!
//! Efficiency: a walk that is not truncated has marginals summing to `v(N) - v({})`
//! exactly; a truncated one stops at a prefix within `tolerance * |v(N)|` of `v(N)`, so
//! the estimate's sum is off by at most that much (exactly efficient when the truncated
//! prefixes equal `v(N)`, as in a monotone game that saturates). Standard errors are the
//! per-player standard errors of the mean marginal over walks.
//!
//! The walk and the convergence window are shared with GTG-Shapley
//! ([`GtgShapley`](super::GtgShapley)), which differs in its truncation rules and in
//! how it draws permutations.

use rand::Rng;
use rand::seq::SliceRandom;

use super::{
    Coalition, Estimator, Game, IncrementalGame, Metered, Method, RunningMoments, StopReason,
    Valuation, ValuationError,
};

/// Truncated Monte Carlo Shapley parameters (defaults from ALGORITHMS.md 2.2 via
/// [`TmcShapley::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TmcShapley {
    /// Hard cap on utility evaluations.
    pub budget: u64,
    /// Truncation tolerance: a prefix is "close to `v(N)`" when
    /// `|v(prefix) - v(N)| <= tolerance * |v(N)|` (default 0.01; must be finite and `>= 0`).
    pub tolerance: f64,
    /// Consecutive close prefixes after which the rest of a walk is truncated
    /// (default 5; `>= n - 1` never truncates).
    pub consecutive: usize,
    /// Running means compared by the convergence rule (default 100; `>= 1`).
    pub window: usize,
    /// Convergence threshold on the mean relative change (default 0.05; 0 disables it).
    pub threshold: f64,
}

impl TmcShapley {
    /// TMC-Shapley with the ALGORITHMS.md defaults: tolerance 0.01, 5 consecutive steps,
    /// convergence over the last 100 means below 0.05.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            tolerance: 0.01,
            consecutive: 5,
            window: 100,
            threshold: 0.05,
        }
    }

    /// Rejects parameters that would make the rules meaningless.
    fn validate(&self) -> Result<(), ValuationError> {
        check_non_negative("tmc tolerance", self.tolerance)?;
        check_convergence(self.window, self.threshold)
    }
}

impl Estimator for TmcShapley {
    fn method(&self) -> Method {
        Method::Tmc
    }

    fn budget(&self) -> Option<u64> {
        Some(self.budget)
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        self.validate()?;
        let cap = walk_capacity(game, self.budget, Method::Tmc)?;
        let start = game.evaluations();
        let ends = Ends::evaluate(game)?;
        if n == 1 {
            return Ok(ends.one_player(game.evaluations() - start, Method::Tmc));
        }

        let close = self.tolerance * ends.full.abs();
        let mut walker = Walker::new(n);
        let mut tally = WalkTally::new(n, self.window, self.threshold);
        let mut stop = StopReason::BudgetExhausted;
        while tally.walks() < cap && walker.affordable(game, start, cap) {
            walker.order_mut().shuffle(rng);
            let mut run = 0usize;
            walker.walk(game, ends, |len, previous| {
                // The empty prefix is not a step of the walk.
                if len > 0 {
                    run = if (previous - ends.full).abs() <= close {
                        run + 1
                    } else {
                        0
                    };
                }
                run >= self.consecutive
            })?;
            tally.record(walker.sample());
            if tally.converged() {
                stop = StopReason::Converged;
                break;
            }
        }

        Ok(tally.finish(game.evaluations() - start, stop, Method::Tmc))
    }
}

/// Rejects a NaN, infinite or negative tolerance.
pub(crate) fn check_non_negative(what: &str, value: f64) -> Result<(), ValuationError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ValuationError::InvalidGame {
            reason: format!("{what} is {value}; it must be finite and non-negative"),
        })
    }
}

/// Rejects an empty convergence window or an invalid threshold.
pub(crate) fn check_convergence(window: usize, threshold: f64) -> Result<(), ValuationError> {
    if window == 0 {
        return Err(ValuationError::InvalidGame {
            reason: "convergence window is 0; it must hold at least one running mean".into(),
        });
    }
    check_non_negative("convergence threshold", threshold)
}

/// The evaluations a permutation-walk estimator may spend (the smaller of its budget
/// and the meter's remaining), or the error when the first walk (`v({})`, `v(N)` and
/// `n - 1` prefixes) cannot fit.
pub(crate) fn walk_capacity<G: Game>(
    game: &Metered<G>,
    budget: u64,
    method: Method,
) -> Result<u64, ValuationError> {
    let n = game.n_players();
    if n == 0 {
        return Err(ValuationError::NoPlayers);
    }
    game.cap_at_least(budget, n as u64 + 1, method)
}

/// `v({})` and `v(N)`, evaluated once per run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ends {
    /// `v({})`.
    pub(crate) empty: f64,
    /// `v(N)`.
    pub(crate) full: f64,
}

impl Ends {
    /// Evaluates both ends through the memo.
    pub(crate) fn evaluate<G: Game>(game: &mut Metered<G>) -> Result<Self, ValuationError> {
        let n = game.n_players();
        Ok(Self {
            empty: game.value(&Coalition::empty(n))?,
            full: game.value(&Coalition::full(n))?,
        })
    }

    /// The exact value of a one-player game, `v(N) - v({})`.
    pub(crate) fn one_player(self, evaluations: u64, method: Method) -> Valuation {
        Valuation {
            values: vec![self.full - self.empty],
            std_errors: Some(vec![0.0]),
            evaluations,
            stop: StopReason::Exact,
            method,
        }
    }
}

/// A reusable permutation walk: the order, the growing prefix and the marginals of
/// the last walk (allocation-free per walk for `n <= 64`).
#[derive(Debug)]
pub(crate) struct Walker {
    order: Vec<usize>,
    prefix: Coalition,
    sample: Vec<f64>,
}

impl Walker {
    /// A walker over players `0..n` in index order.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            order: (0..n).collect(),
            prefix: Coalition::empty(n),
            sample: vec![0.0; n],
        }
    }

    /// The order of the next walk (shuffle or arrange it before [`walk`](Self::walk)).
    pub(crate) fn order_mut(&mut self) -> &mut [usize] {
        &mut self.order
    }

    /// The marginals of the last walk, indexed by player.
    pub(crate) fn sample(&self) -> &[f64] {
        &self.sample
    }

    /// Whether a worst-case walk (`n - 1` new evaluations) still fits in `cap`
    /// evaluations counted from `start`.
    pub(crate) fn affordable<G: Game>(&self, game: &Metered<G>, start: u64, cap: u64) -> bool {
        let spent = game.evaluations() - start;
        spent + (self.order.len() as u64 - 1) <= cap
    }

    /// Walks the current order. Before each step, `truncate(len, v)` is asked with the
    /// length and value of the prefix so far; once it answers `true` the rest of the
    /// walk gets marginal 0 and nothing more is evaluated. The last prefix is `N`, whose
    /// value is known, so a walk costs at most `n - 1` evaluations.
    pub(crate) fn walk<G: Game>(
        &mut self,
        game: &mut Metered<G>,
        ends: Ends,
        mut truncate: impl FnMut(usize, f64) -> bool,
    ) -> Result<(), ValuationError> {
        let last = self.order.len() - 1;
        self.prefix.clear();
        let mut previous = ends.empty;
        let mut truncated = false;
        for (j, &player) in self.order.iter().enumerate() {
            truncated = truncated || truncate(j, previous);
            let current = if truncated {
                previous
            } else if j == last {
                ends.full
            } else {
                self.prefix.insert(player);
                game.value(&self.prefix)?
            };
            self.sample[player] = current - previous;
            previous = current;
        }
        Ok(())
    }
}

/// The per-player moments of the walks so far, their count and the convergence window
/// over the running means: the bookkeeping TMC- and GTG-Shapley share after each walk.
#[derive(Debug)]
pub(crate) struct WalkTally {
    moments: RunningMoments,
    window: ConvergenceWindow,
    walks: u64,
}

impl WalkTally {
    /// No walks yet, with a convergence window of `window` means below `threshold`.
    pub(crate) fn new(n: usize, window: usize, threshold: f64) -> Self {
        Self {
            moments: RunningMoments::new(n),
            window: ConvergenceWindow::new(n, window, threshold),
            walks: 0,
        }
    }

    /// Walks recorded so far.
    pub(crate) fn walks(&self) -> u64 {
        self.walks
    }

    /// Adds one walk's marginals and pushes the new running means into the window.
    pub(crate) fn record(&mut self, sample: &[f64]) {
        self.moments.push(sample);
        self.walks += 1;
        self.window.push(self.moments.means());
    }

    /// Whether the window is full and every mean in it is within the threshold of the
    /// current running means (see [`ConvergenceWindow::converged`]).
    pub(crate) fn converged(&self) -> bool {
        self.window.converged(self.moments.means())
    }

    /// The running means and their standard errors as the run's result.
    pub(crate) fn finish(&self, evaluations: u64, stop: StopReason, method: Method) -> Valuation {
        Valuation {
            values: self.moments.means().to_vec(),
            std_errors: self.moments.std_errors(),
            evaluations,
            stop,
            method,
        }
    }
}

/// The running means of the last `window` walks and the Data Shapley convergence rule
/// over them.
#[derive(Debug)]
pub(crate) struct ConvergenceWindow {
    n: usize,
    window: usize,
    threshold: f64,
    ring: Vec<f64>,
    len: usize,
    head: usize,
}

impl ConvergenceWindow {
    /// An empty window of `window` means of `n` players.
    pub(crate) fn new(n: usize, window: usize, threshold: f64) -> Self {
        Self {
            n,
            window,
            threshold,
            ring: vec![0.0; n * window],
            len: 0,
            head: 0,
        }
    }

    /// Records the running means after a walk (the oldest drops out of a full window).
    pub(crate) fn push(&mut self, means: &[f64]) {
        let at = self.head * self.n;
        self.ring[at..at + self.n].copy_from_slice(means);
        self.head = (self.head + 1) % self.window;
        self.len = (self.len + 1).min(self.window);
    }

    /// Whether the window is full and every mean in it is within the threshold of
    /// `current`: `mean_i |past_i - current_i| / (|current_i| + 1e-12) < threshold`.
    pub(crate) fn converged(&self, current: &[f64]) -> bool {
        self.len == self.window
            && self.ring.chunks_exact(self.n).all(|past| {
                let change: f64 = past
                    .iter()
                    .zip(current)
                    .map(|(p, c)| (p - c).abs() / (c.abs() + 1e-12))
                    .sum();
                change / (self.n as f64) < self.threshold
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::Tracked;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Airport, Counting, Unanimity};
    use crate::valuation::semivalue::tests::{mean_mse, random_soum};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(tmc: &TmcShapley, game: impl Game, seed: u64) -> Valuation {
        tmc.estimate(
            &mut Tracked::new(game),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap()
    }

    /// TMC with truncation and convergence disabled: plain permutation sampling.
    fn untruncated(budget: u64) -> TmcShapley {
        TmcShapley {
            consecutive: usize::MAX,
            threshold: 0.0,
            ..TmcShapley::new(budget)
        }
    }

    #[test]
    fn defaults_follow_algorithms_md() {
        let t = TmcShapley::new(10);
        assert_eq!(
            (t.budget, t.tolerance, t.consecutive, t.window, t.threshold),
            (10, 0.01, 5, 100, 0.05)
        );
    }

    #[test]
    fn a_saturated_walk_stops_after_the_consecutive_steps() {
        // u_{0}: every prefix holding player 0 has v = v(N) = 1.
        let mut game = Tracked::new(Unanimity {
            n: 10,
            members: vec![0],
        });
        let mut meter = Metered::new(&mut game, None);
        let ends = Ends::evaluate(&mut meter).unwrap();
        let mut walker = Walker::new(10);
        let mut run = 0;
        walker
            .walk(&mut meter, ends, |len, v| {
                if len > 0 {
                    run = if v == ends.full { run + 1 } else { 0 };
                }
                run >= 5
            })
            .unwrap();
        // Ends (2) plus prefixes {0}, {0,1}, ..., {0..=4}: five close prefixes, then stop.
        assert_eq!(meter.evaluations(), 2 + 5);
        assert_eq!(walker.sample()[0], 1.0);
        assert!(walker.sample()[1..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn truncation_saves_evaluations_and_lowers_mse_at_equal_budget() {
        // Airport with four tied longest runways: v(prefix) = v(N) as soon as one of
        // them has joined, and marginals after that are exactly 0, so truncation is
        // free of bias here.
        let game = Airport {
            costs: (1..=10).map(f64::from).chain([100.0; 4]).collect(),
        };
        let truth = game.shapley();
        let truncated = TmcShapley {
            threshold: 0.0,
            ..TmcShapley::new(600)
        };
        let plain = untruncated(600);
        let errors = [&truncated, &plain]
            .map(|tmc| mean_mse(&truth, 30, |seed| run(tmc, game.clone(), seed).values));
        assert!(errors[0] < errors[1] * 0.8, "{errors:?}");
        // And it is still exactly efficient (truncated prefixes equal v(N)).
        let v = run(&truncated, game.clone(), 1);
        assert!((v.values.iter().sum::<f64>() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn mean_over_seeds_is_near_exact_and_mse_falls() {
        let game = random_soum(8, 11);
        let truth = game.shapley();
        let tmc = |budget| TmcShapley {
            tolerance: 0.0,
            threshold: 0.0,
            ..TmcShapley::new(budget)
        };
        let mut mean = vec![0.0; 8];
        for seed in 0..100 {
            let v = run(&tmc(300), game.clone(), seed);
            mean.iter_mut()
                .zip(&v.values)
                .for_each(|(m, x)| *m += x / 100.0);
        }
        let worst = mean
            .iter()
            .zip(&truth)
            .map(|(m, t)| (m - t).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.05, "{mean:?} vs {truth:?}");
        let errors: Vec<f64> = [100, 1000, 10_000]
            .iter()
            .map(|&b| mean_mse(&truth, 20, |seed| run(&tmc(b), game.clone(), seed).values))
            .collect();
        assert!(
            errors[0] > 3.0 * errors[1] && errors[1] > 3.0 * errors[2],
            "{errors:?}"
        );
    }

    #[test]
    fn converges_before_the_budget_on_a_symmetric_game() {
        // Additive game: every walk gives the exact answer, so the running means never
        // move and the rule fires as soon as the window is full.
        let game = crate::valuation::games::Additive {
            values: vec![1.0, 2.0, 3.0, 4.0],
        };
        let tmc = TmcShapley {
            tolerance: 0.0,
            ..TmcShapley::new(100_000)
        };
        let v = run(&tmc, game, 0);
        assert_eq!(v.stop, StopReason::Converged);
        assert_eq!(v.values, vec![1.0, 2.0, 3.0, 4.0]);
        // Only 2^4 coalitions exist; the memo makes repeated prefixes free.
        assert!(v.evaluations <= 16, "{}", v.evaluations);
    }

    #[test]
    fn same_seed_same_estimate() {
        let game = random_soum(8, 3);
        let tmc = TmcShapley::new(500);
        let a = run(&tmc, game.clone(), 7);
        assert_eq!(a, run(&tmc, game.clone(), 7));
        assert_ne!(a.values, run(&tmc, game, 8).values);
    }

    #[test]
    fn too_small_budget_and_bad_parameters_are_errors() {
        let mut game = Tracked::new(random_soum(8, 1));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = TmcShapley::new(8)
            .estimate(&mut game, &mut rng)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ValuationError::BudgetTooSmall {
                    budget: 8,
                    needed: 9,
                    n: 8,
                    ..
                }
            ),
            "{err}"
        );
        let bad = TmcShapley {
            tolerance: f64::NAN,
            ..TmcShapley::new(100)
        };
        let err = bad.estimate(&mut game, &mut rng).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        let bad = TmcShapley {
            window: 0,
            ..TmcShapley::new(100)
        };
        assert!(bad.estimate(&mut game, &mut rng).is_err());
    }

    #[test]
    fn one_player_is_exact() {
        let v = run(&TmcShapley::new(2), Airport { costs: vec![2.5] }, 0);
        assert_eq!(
            (v.values, v.evaluations, v.stop),
            (vec![2.5], 2, StopReason::Exact)
        );
    }

    #[test]
    fn standard_errors_shrink_with_the_budget() {
        let game = random_soum(8, 5);
        let se = |budget| {
            let v = run(&untruncated(budget), game.clone(), 2);
            v.std_errors.unwrap().iter().sum::<f64>()
        };
        assert!(se(4000) < se(400) / 2.0);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget_and_truncation_bounds_efficiency(
            game in soum_strategy(8),
            budget in 0u64..300,
            tolerance in 0.0f64..0.2,
            seed: u64,
        ) {
            let n = game.n;
            let full: f64 = game.terms.iter().map(|t| t.1).sum();
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let tmc = TmcShapley { tolerance, ..TmcShapley::new(budget) };
            let result = tmc.estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            match result {
                Ok(v) => {
                    prop_assert!(budget > n as u64);
                    prop_assert_eq!(v.evaluations, calls);
                    let gap = (v.values.iter().sum::<f64>() - full).abs();
                    prop_assert!(gap <= tolerance * full.abs() + 1e-9, "gap {}", gap);
                    prop_assert_eq!(v.values.len(), n);
                }
                Err(e) => {
                    prop_assert!(budget <= n as u64);
                    prop_assert_eq!(calls, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
