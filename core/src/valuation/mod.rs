//! Cooperative games and Shapley value estimators (ALGORITHMS.md sections 1 and 2).
//!
//! Three things are kept apart, as in argmin:
//! - the problem: a [`Game`] (utility of a coalition), optionally an [`IncrementalGame`]
//!   that changes its coalition one player at a time;
//! - the solver: an [`Estimator`] ([`ExactShapley`], [`PermutationSampling`], ...),
//!   validated parameters plus an explicit seeded RNG;
//! - the result: a [`Valuation`] with the values, standard errors, evaluations spent
//!   and the [`StopReason`].
//!
//! Estimators evaluate the game only through a [`Metered`] wrapper that memoises,
//! counts and enforces the hard budget, so no estimator can spend more utility
//! evaluations than it was given. [`games`] holds closed-form test games.
//! [`completion`] (low-rank matrix completion) and [`verfedsv`] value vertical federations.
//!
//! ```
//! use fedval_core::valuation::{exact_shapley, games::Glove, Tracked};
//! let v = exact_shapley(&mut Tracked::new(Glove { left: 1, right: 2 })).unwrap();
//! assert!((v.values[0] - 2.0 / 3.0).abs() < 1e-12);
//! ```

pub mod banzhaf;
pub mod coalition;
pub mod completion;
pub mod exact;
pub mod game;
pub mod game_spec;
pub mod games;
pub mod gtg;
pub mod loo;
pub mod permutation;
pub mod registry;
pub mod round_game;
mod sampling;
pub mod semivalue;
pub mod stratified;
pub mod svarm;
pub mod tmc;
pub mod verfedsv;

use rand::Rng;
use serde::{Deserialize, Serialize};

pub use banzhaf::MsrBanzhaf;
pub use coalition::Coalition;
pub use exact::{
    ExactShapley, MAX_EXACT_PLAYERS, exact_shapley, exact_shapley_batched, shapley_from_table,
    shapley_weights, utility_table_gray, utility_table_naive,
};
pub use game::{Game, IncrementalGame, Metered, Tracked};
pub use game_spec::{GameFile, GameSpec, SpecGame, TabulatedGame};
pub use gtg::GtgShapley;
pub use loo::LeaveOneOut;
pub use permutation::PermutationSampling;
pub use registry::{EstimatorSpec, UnknownEstimator};
pub use semivalue::{Semivalue, SemivalueWeights};
pub use stratified::StratifiedSvarm;
pub use svarm::Svarm;
pub use tmc::TmcShapley;

/// The result of a valuation: one value per player and how it was obtained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Valuation {
    /// The (estimated) Shapley value of each player, indexed by player.
    pub values: Vec<f64>,
    /// Per-player standard error of the estimate, where the method defines one
    /// (`None` for exact methods and for too few samples).
    pub std_errors: Option<Vec<f64>>,
    /// Utility evaluations of the game spent (the meter's count).
    pub evaluations: u64,
    /// Why the estimator stopped.
    pub stop: StopReason,
    /// Which method produced the values.
    pub method: Method,
}

/// Why an estimator stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The values are exact (every coalition was evaluated, or the game is trivial).
    Exact,
    /// The evaluation budget could not afford another sample.
    BudgetExhausted,
    /// A convergence criterion was met before the budget ran out.
    Converged,
}

/// A valuation method (the tag a [`Valuation`] carries; new estimators add variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact Shapley over all `2^n` coalitions.
    Exact,
    /// Monte Carlo permutation sampling (ApproShapley), optionally antithetic.
    Permutation,
    /// Truncated Monte Carlo Shapley (Ghorbani & Zou 2019).
    Tmc,
    /// GTG-Shapley (Liu et al. 2022): guided permutations, within- and between-round
    /// truncation.
    Gtg,
    /// SVARM (Kolpaczki et al. 2024).
    Svarm,
    /// Stratified SVARM, sampling with replacement.
    StratifiedSvarm,
    /// Stratified SVARM+, sampling without replacement (exact once the budget covers 2^n).
    StratifiedSvarmPlus,
    /// Leave-one-out: v(N) - v(N minus i).
    LeaveOneOut,
    /// Banzhaf values by maximum sample reuse (MSR).
    Banzhaf,
    /// A semivalue other than Shapley and Banzhaf (e.g. Beta(a, b)-Shapley).
    Semivalue,
}

/// Errors of games, meters and estimators.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValuationError {
    /// Exact enumeration of `2^n` coalitions is infeasible.
    #[error(
        "exact shapley values need 2^n utility evaluations and support at most {max} players, \
         got {n}: use the permutation method (Monte Carlo) instead"
    )]
    TooManyPlayers {
        /// Players in the game.
        n: usize,
        /// [`MAX_EXACT_PLAYERS`].
        max: usize,
    },
    /// The hard evaluation budget is spent.
    #[error("evaluation budget of {budget} utility evaluations exhausted")]
    BudgetExhausted {
        /// The budget that was exhausted.
        budget: u64,
    },
    /// The game has no players.
    #[error("the game has zero players: there is nothing to value")]
    NoPlayers,
    /// The budget cannot buy even the first estimate.
    #[error(
        "budget of {budget} utility evaluations is too small: {method:?} needs at least {needed} \
         for a first estimate of a game with {n} players"
    )]
    BudgetTooSmall {
        /// Evaluations available.
        budget: u64,
        /// Evaluations the first estimate needs.
        needed: u64,
        /// Players in the game.
        n: usize,
        /// The method asking.
        method: Method,
    },
    /// A coalition of a game with a different number of players was passed.
    #[error("coalition has {got} players but the game has {expected}")]
    PlayerCountMismatch {
        /// Players in the game.
        expected: usize,
        /// Players the coalition was built for.
        got: usize,
    },
    /// A game was built from inconsistent inputs (shapes, counts, weights).
    #[error("invalid game: {reason}")]
    InvalidGame {
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// The game returned NaN or an infinity.
    #[error("utility evaluation #{evaluation} returned {value}; utilities must be finite")]
    NonFiniteUtility {
        /// The offending utility.
        value: f64,
        /// The 1-based index of the evaluation that produced it.
        evaluation: u64,
    },
}

/// A Shapley value estimator (the solver): validated parameters, run against a
/// metered game with an explicit RNG.
pub trait Estimator {
    /// The method tag reported in [`Valuation::method`].
    fn method(&self) -> Method;

    /// The estimator's own evaluation budget (`None`: it needs no cap, e.g. exact).
    fn budget(&self) -> Option<u64>;

    /// Runs on a game that is already metered; spends at most the smaller of
    /// [`budget`](Self::budget) and the meter's remaining evaluations, and reports the
    /// evaluations it spent. Use this to share one meter (and its memo) between runs.
    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError>;

    /// Runs on `game` behind a fresh meter capped at [`budget`](Self::budget).
    fn estimate<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut G,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        self.estimate_metered(&mut Metered::new(game, self.budget()), rng)
    }
}

/// Per-player running mean and variance (Welford), one observation per player per
/// sample; allocation-free after construction.
#[derive(Clone, Debug)]
pub(crate) struct RunningMoments {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl RunningMoments {
    /// Moments for `n` players, no samples yet.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            count: 0,
            mean: vec![0.0; n],
            m2: vec![0.0; n],
        }
    }

    /// Adds one sample (one observation per player).
    pub(crate) fn push(&mut self, sample: &[f64]) {
        self.count += 1;
        let k = self.count as f64;
        for ((mean, m2), &x) in self.mean.iter_mut().zip(&mut self.m2).zip(sample) {
            let delta = x - *mean;
            *mean += delta / k;
            *m2 += delta * (x - *mean);
        }
    }

    /// The per-player means.
    pub(crate) fn means(&self) -> &[f64] {
        &self.mean
    }

    /// Per-player standard error of the mean, `sqrt(s^2 / count)`; `None` with fewer
    /// than two samples (the sample variance is undefined).
    pub(crate) fn std_errors(&self) -> Option<Vec<f64>> {
        if self.count < 2 {
            return None;
        }
        let k = self.count as f64;
        Some(
            self.m2
                .iter()
                .map(|m2| (m2 / (k - 1.0) / k).sqrt())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_moments_match_two_pass_formulas() {
        let samples = [[1.0, -2.0], [3.0, -2.0], [8.0, -2.0], [4.0, -2.0]];
        let mut m = RunningMoments::new(2);
        for s in &samples {
            m.push(s);
        }
        assert_eq!(m.means(), &[4.0, -2.0]);
        // sample variance of (1, 3, 8, 4) = 26 / 3; se = sqrt(26 / 3 / 4).
        let se = m.std_errors().unwrap();
        assert!((se[0] - (26.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(se[1], 0.0);
    }

    #[test]
    fn tags_deserialise_from_snake_case() {
        use serde::de::value::{Error, StrDeserializer};
        let stop = StopReason::deserialize(StrDeserializer::<Error>::new("budget_exhausted"));
        assert_eq!(stop, Ok(StopReason::BudgetExhausted));
        let method = Method::deserialize(StrDeserializer::<Error>::new("permutation"));
        assert_eq!(method, Ok(Method::Permutation));
        assert!(Method::deserialize(StrDeserializer::<Error>::new("Permutation")).is_err());
    }

    #[test]
    fn too_many_players_suggests_permutation() {
        let msg = ValuationError::TooManyPlayers {
            n: 30,
            max: MAX_EXACT_PLAYERS,
        }
        .to_string();
        assert!(msg.contains("30") && msg.contains("permutation"), "{msg}");
    }
}
