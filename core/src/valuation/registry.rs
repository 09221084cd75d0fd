//! The estimator registry: one serialisable [`EstimatorSpec`] naming every valuation
//! method with its parameters, so the server (a federation's valuation setting) and the
//! benchmark (`fedval-bench`) pick, name and run estimators the same way.
//!
//! It also holds the exact reference values of every method's *target* from a full
//! utility table (`2^n` entries): Shapley for the Shapley estimators, and for the other
//! values ([`EstimatorSpec::is_shapley`] is false) their own exact values, since an
//! estimator of Banzhaf, leave-one-out or Beta-Shapley values must be scored against
//! those, not against Shapley values.
//!
//! ```
//! use fedval_core::valuation::{EstimatorSpec, Tracked, games::Glove};
//! use rand::SeedableRng;
//! let spec: EstimatorSpec = "permutation_antithetic".parse().unwrap();
//! let mut game = Tracked::new(Glove { left: 1, right: 2 });
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let v = spec.estimate(200, &mut game, &mut rng).unwrap();
//! assert!((v.values.iter().sum::<f64>() - 1.0).abs() < 1e-12);
//! ```

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{
    Estimator, ExactShapley, GtgShapley, IncrementalGame, LeaveOneOut, Metered, MsrBanzhaf,
    PermutationSampling, Semivalue, SemivalueWeights, StratifiedSvarm, Svarm, TmcShapley,
    Valuation, ValuationError, shapley_from_table,
};

/// A valuation method and its parameters (everything but the budget and the RNG).
///
/// Serialised with a `method` tag in snake case, e.g.
/// `{"method": "tmc", "tolerance": 0.01}` or `{"method": "stratified_svarm_plus"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum EstimatorSpec {
    /// Exact Shapley values over all `2^n` coalitions (ignores the budget).
    Exact,
    /// Monte Carlo permutation sampling, optionally with antithetic (reversed) walks.
    Permutation {
        /// Also walk each permutation reversed.
        antithetic: bool,
    },
    /// TMC-Shapley with truncation tolerance `tolerance` (relative to `|v(N)|`).
    Tmc {
        /// Truncation tolerance (default 0.01).
        tolerance: f64,
    },
    /// GTG-Shapley with between- and within-round truncation tolerances.
    Gtg {
        /// Between-round truncation threshold (default 0.001).
        round_tolerance: f64,
        /// Within-round truncation threshold (default 0.001).
        within_tolerance: f64,
    },
    /// SVARM.
    Svarm,
    /// Stratified SVARM, sampling with replacement.
    StratifiedSvarm,
    /// Stratified SVARM+, sampling without replacement (exact once the budget covers 2^n).
    StratifiedSvarmPlus,
    /// Leave-one-out values `v(N) - v(N minus i)` (needs `n + 1` evaluations).
    LeaveOneOut,
    /// Banzhaf values by maximum sample reuse.
    Banzhaf,
    /// Beta(alpha, beta)-Shapley values through the generic semivalue estimator.
    BetaShapley {
        /// First shape parameter (`> 0`).
        alpha: f64,
        /// Second shape parameter (`> 0`).
        beta: f64,
    },
}

impl EstimatorSpec {
    /// Every estimator with its default parameters, in the order benchmarks report them:
    /// permutation (plain, antithetic), TMC (0.01), GTG (0.001, 0.001), SVARM, Stratified
    /// SVARM, SVARM+, leave-one-out, Banzhaf, Beta(16, 1)-Shapley. Exact is not in it
    /// (it is the reference).
    pub fn benchmark_set() -> Vec<EstimatorSpec> {
        vec![
            EstimatorSpec::Permutation { antithetic: false },
            EstimatorSpec::Permutation { antithetic: true },
            EstimatorSpec::Tmc { tolerance: 0.01 },
            EstimatorSpec::Gtg {
                round_tolerance: 0.001,
                within_tolerance: 0.001,
            },
            EstimatorSpec::Svarm,
            EstimatorSpec::StratifiedSvarm,
            EstimatorSpec::StratifiedSvarmPlus,
            EstimatorSpec::LeaveOneOut,
            EstimatorSpec::Banzhaf,
            EstimatorSpec::BetaShapley {
                alpha: 16.0,
                beta: 1.0,
            },
        ]
    }

    /// A stable, human-readable name that [`FromStr`] parses back: `exact`,
    /// `permutation`, `permutation_antithetic`, `tmc(0.01)`, `gtg(0.001,0.001)`,
    /// `svarm`, `stratified_svarm`, `stratified_svarm_plus`, `loo`, `banzhaf`,
    /// `beta_shapley(16,1)`.
    pub fn name(&self) -> String {
        match self {
            EstimatorSpec::Exact => "exact".into(),
            EstimatorSpec::Permutation { antithetic: false } => "permutation".into(),
            EstimatorSpec::Permutation { antithetic: true } => "permutation_antithetic".into(),
            EstimatorSpec::Tmc { tolerance } => format!("tmc({tolerance})"),
            EstimatorSpec::Gtg {
                round_tolerance,
                within_tolerance,
            } => format!("gtg({round_tolerance},{within_tolerance})"),
            EstimatorSpec::Svarm => "svarm".into(),
            EstimatorSpec::StratifiedSvarm => "stratified_svarm".into(),
            EstimatorSpec::StratifiedSvarmPlus => "stratified_svarm_plus".into(),
            EstimatorSpec::LeaveOneOut => "loo".into(),
            EstimatorSpec::Banzhaf => "banzhaf".into(),
            EstimatorSpec::BetaShapley { alpha, beta } => format!("beta_shapley({alpha},{beta})"),
        }
    }

    /// Whether the method estimates Shapley values (false for leave-one-out, Banzhaf and
    /// Beta-Shapley, which are other values with their own exact references).
    pub fn is_shapley(&self) -> bool {
        !matches!(
            self,
            EstimatorSpec::LeaveOneOut | EstimatorSpec::Banzhaf | EstimatorSpec::BetaShapley { .. }
        )
    }

    /// Runs the estimator on `game` with at most `budget` utility evaluations (exact
    /// ignores the budget; leave-one-out needs `n + 1`).
    pub fn estimate<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        budget: u64,
        game: &mut G,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        match *self {
            EstimatorSpec::Exact => Estimator::estimate(&ExactShapley, game, rng),
            EstimatorSpec::Permutation { antithetic } => {
                Estimator::estimate(&PermutationSampling { budget, antithetic }, game, rng)
            }
            EstimatorSpec::Tmc { tolerance } => {
                let tmc = TmcShapley {
                    tolerance,
                    ..TmcShapley::new(budget)
                };
                Estimator::estimate(&tmc, game, rng)
            }
            EstimatorSpec::Gtg {
                round_tolerance,
                within_tolerance,
            } => {
                let gtg = GtgShapley {
                    round_tolerance,
                    within_tolerance,
                    ..GtgShapley::new(budget)
                };
                Estimator::estimate(&gtg, game, rng)
            }
            EstimatorSpec::Svarm => Estimator::estimate(&Svarm::new(budget), game, rng),
            EstimatorSpec::StratifiedSvarm | EstimatorSpec::StratifiedSvarmPlus => {
                let stratified = StratifiedSvarm {
                    without_replacement: *self == EstimatorSpec::StratifiedSvarmPlus,
                    ..StratifiedSvarm::new(budget)
                };
                Estimator::estimate(&stratified, game, rng)
            }
            EstimatorSpec::LeaveOneOut => {
                LeaveOneOut.estimate_metered(&mut Metered::new(game, Some(budget)), rng)
            }
            EstimatorSpec::Banzhaf => Estimator::estimate(&MsrBanzhaf::new(budget), game, rng),
            EstimatorSpec::BetaShapley { alpha, beta } => {
                let semivalue = Semivalue::new(budget, SemivalueWeights::Beta { alpha, beta });
                Estimator::estimate(&semivalue, game, rng)
            }
        }
    }

    /// The exact values this method estimates, from the full utility table of an
    /// `n`-player game (`table[mask] = v(S)`, `2^n` entries): Shapley values, or the
    /// leave-one-out, Banzhaf or Beta-Shapley values.
    pub fn exact_reference(&self, n: usize, table: &[f64]) -> Result<Vec<f64>, ValuationError> {
        check_table(n, table)?;
        match *self {
            EstimatorSpec::LeaveOneOut => Ok(leave_one_out_from_table(n, table)),
            EstimatorSpec::Banzhaf => Ok(semivalue_from_table(
                n,
                table,
                &SemivalueWeights::Banzhaf.coalition_weights(n)?,
            )),
            EstimatorSpec::BetaShapley { alpha, beta } => Ok(semivalue_from_table(
                n,
                table,
                &SemivalueWeights::Beta { alpha, beta }.coalition_weights(n)?,
            )),
            _ => Ok(shapley_from_table(n, table)),
        }
    }
}

impl fmt::Display for EstimatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// An estimator name [`EstimatorSpec::from_str`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown estimator {name:?}: expected one of exact, permutation, permutation_antithetic, \
     tmc[(tol)], gtg[(round,within)], svarm, stratified_svarm, stratified_svarm_plus, loo, \
     banzhaf, beta_shapley[(alpha,beta)]"
)]
pub struct UnknownEstimator {
    /// The name as given.
    pub name: String,
}

impl FromStr for EstimatorSpec {
    type Err = UnknownEstimator;

    /// Parses a [`name`](EstimatorSpec::name); parameters in parentheses are optional
    /// (`tmc` is `tmc(0.01)`, `beta_shapley` is `beta_shapley(16,1)`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownEstimator {
            name: s.to_string(),
        };
        let s = s.trim();
        let (head, args) = match s.split_once('(') {
            Some((head, rest)) => {
                let inner = rest.strip_suffix(')').ok_or_else(unknown)?;
                let args = inner
                    .split(',')
                    .map(|a| a.trim().parse::<f64>())
                    .collect::<Result<Vec<f64>, _>>()
                    .map_err(|_| unknown())?;
                (head.trim(), Some(args))
            }
            None => (s, None),
        };
        let params = |defaults: &[f64]| -> Result<Vec<f64>, UnknownEstimator> {
            match &args {
                None => Ok(defaults.to_vec()),
                Some(a) if a.len() == defaults.len() && a.iter().all(|x| x.is_finite()) => {
                    Ok(a.clone())
                }
                Some(_) => Err(unknown()),
            }
        };
        let bare = |spec: EstimatorSpec| params(&[]).map(|_| spec);
        match head {
            "exact" => bare(EstimatorSpec::Exact),
            "permutation" => bare(EstimatorSpec::Permutation { antithetic: false }),
            "permutation_antithetic" => bare(EstimatorSpec::Permutation { antithetic: true }),
            "tmc" => params(&[0.01]).map(|p| EstimatorSpec::Tmc { tolerance: p[0] }),
            "gtg" => params(&[0.001, 0.001]).map(|p| EstimatorSpec::Gtg {
                round_tolerance: p[0],
                within_tolerance: p[1],
            }),
            "svarm" => bare(EstimatorSpec::Svarm),
            "stratified_svarm" => bare(EstimatorSpec::StratifiedSvarm),
            "stratified_svarm_plus" => bare(EstimatorSpec::StratifiedSvarmPlus),
            "loo" | "leave_one_out" => bare(EstimatorSpec::LeaveOneOut),
            "banzhaf" => bare(EstimatorSpec::Banzhaf),
            "beta_shapley" => params(&[16.0, 1.0]).map(|p| EstimatorSpec::BetaShapley {
                alpha: p[0],
                beta: p[1],
            }),
            _ => Err(unknown()),
        }
    }
}

/// Checks `table.len() == 2^n` with `1 <= n < 64`.
fn check_table(n: usize, table: &[f64]) -> Result<(), ValuationError> {
    if n == 0 {
        return Err(ValuationError::NoPlayers);
    }
    if n >= 64 || table.len() != 1usize << n {
        return Err(ValuationError::InvalidGame {
            reason: format!(
                "utility table has {} entries, expected 2^{n} for {n} players",
                table.len()
            ),
        });
    }
    Ok(())
}

/// Leave-one-out values `v(N) - v(N minus i)` from a full utility table.
///
/// # Panics
/// If `table.len() != 2^n` (checked by [`EstimatorSpec::exact_reference`]).
pub fn leave_one_out_from_table(n: usize, table: &[f64]) -> Vec<f64> {
    let full = (1usize << n) - 1;
    (0..n)
        .map(|i| table[full] - table[full ^ (1 << i)])
        .collect()
}

/// The semivalue `phi_i = sum_{S not containing i} p(|S|) (v(S u i) - v(S))` from a full
/// utility table, with per-coalition weights `p(s)` for `s = 0..n` (`weights.len() == n`).
///
/// Reads each entry once: a coalition `S` of size `s` gives `+p(s-1) v(S)` to each member
/// and `-p(s) v(S)` to each non-member. `O(n 2^n)`, no allocation in the loop.
///
/// # Panics
/// If `table.len() != 2^n` or `weights.len() != n` (checked by
/// [`EstimatorSpec::exact_reference`]).
pub fn semivalue_from_table(n: usize, table: &[f64], weights: &[f64]) -> Vec<f64> {
    assert!(
        n < 64 && table.len() == 1usize << n && weights.len() == n,
        "semivalue needs 2^{n} utilities and {n} weights, got {} and {}",
        table.len(),
        weights.len()
    );
    let mut phi = vec![0.0; n];
    for (mask, &v) in table.iter().enumerate() {
        let s = mask.count_ones() as usize;
        let member = if s > 0 { weights[s - 1] * v } else { 0.0 };
        let non_member = if s < n { weights[s] * v } else { 0.0 };
        for (i, p) in phi.iter_mut().enumerate() {
            if mask >> i & 1 == 1 {
                *p += member;
            } else {
                *p -= non_member;
            }
        }
    }
    phi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Counting, Glove, Soum, WeightedVoting};
    use crate::valuation::{
        Coalition, Game, StopReason, Tracked, shapley_weights, utility_table_naive,
    };
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn table(mut game: impl Game) -> (usize, Vec<f64>) {
        (game.n_players(), utility_table_naive(&mut game).unwrap())
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn banzhaf_of_weighted_voting_51_50_49_1() {
        let (n, t) = table(WeightedVoting {
            weights: vec![50.0, 49.0, 1.0],
            quota: 51.0,
        });
        close(
            &EstimatorSpec::Banzhaf.exact_reference(n, &t).unwrap(),
            &[0.75, 0.25, 0.25],
        );
        // LOO: v(N) = 1, v({49, 1}) = 0, v({50, 1}) = 1, v({50, 49}) = 1.
        close(
            &EstimatorSpec::LeaveOneOut.exact_reference(n, &t).unwrap(),
            &[1.0, 0.0, 0.0],
        );
    }

    #[test]
    fn beta_shapley_of_glove_one_left_two_right() {
        // n = 3, Beta(16, 1): p(0) = 16/17 * 17/18 = 8/9, p(1) = p(0) * 1/17 = 8/153,
        // p(2) = p(1) * 2/16 = 1/153. Player 0 (left): marginals 0 at {}, 1 at {1}, 1 at
        // {2}, 1 at {1, 2} -> 2 p(1) + p(2) = 17/153 = 1/9. Player 1 (right): 1 at {0}
        // only -> p(1) = 8/153.
        let (n, t) = table(Glove { left: 1, right: 2 });
        let spec = EstimatorSpec::BetaShapley {
            alpha: 16.0,
            beta: 1.0,
        };
        close(
            &spec.exact_reference(n, &t).unwrap(),
            &[1.0 / 9.0, 8.0 / 153.0, 8.0 / 153.0],
        );
    }

    #[test]
    fn beta_one_one_is_shapley_and_bad_shapes_are_refused() {
        let (n, t) = table(Glove { left: 2, right: 3 });
        let spec = EstimatorSpec::BetaShapley {
            alpha: 1.0,
            beta: 1.0,
        };
        close(
            &spec.exact_reference(n, &t).unwrap(),
            &shapley_from_table(n, &t),
        );
        let bad = EstimatorSpec::BetaShapley {
            alpha: 0.0,
            beta: 1.0,
        };
        assert!(bad.exact_reference(n, &t).is_err());
    }

    #[test]
    fn names_parse_back_and_serde_round_trips() {
        let mut all = EstimatorSpec::benchmark_set();
        all.push(EstimatorSpec::Exact);
        let mut names: Vec<String> = all.iter().map(EstimatorSpec::name).collect();
        for (spec, name) in all.iter().zip(&names) {
            assert_eq!(&name.parse::<EstimatorSpec>().unwrap(), spec, "{name}");
            let json = serde_json::to_string(spec).unwrap();
            assert_eq!(&serde_json::from_str::<EstimatorSpec>(&json).unwrap(), spec);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are distinct");
        assert_eq!(
            EstimatorSpec::StratifiedSvarmPlus.name(),
            "stratified_svarm_plus"
        );
        assert_eq!(
            serde_json::to_string(&EstimatorSpec::Tmc { tolerance: 0.05 }).unwrap(),
            r#"{"method":"tmc","tolerance":0.05}"#
        );
        assert_eq!(
            "beta_shapley(4, 1)".parse::<EstimatorSpec>(),
            Ok(EstimatorSpec::BetaShapley {
                alpha: 4.0,
                beta: 1.0
            })
        );
        assert_eq!("tmc".parse(), Ok(EstimatorSpec::Tmc { tolerance: 0.01 }));
        for bad in ["svarm(1)", "tmc(1,2)", "tmc(x)", "nope", "gtg(0.1"] {
            let err = bad.parse::<EstimatorSpec>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn shapley_flags() {
        let flags: Vec<bool> = EstimatorSpec::benchmark_set()
            .iter()
            .map(EstimatorSpec::is_shapley)
            .collect();
        assert_eq!(
            flags,
            [
                true, true, true, true, true, true, true, false, false, false
            ]
        );
    }

    #[test]
    fn exact_and_permutation_dispatch() {
        let game = Glove { left: 2, right: 3 };
        let (n, t) = table(game);
        let truth = EstimatorSpec::Exact.exact_reference(n, &t).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v = EstimatorSpec::Exact
            .estimate(1, &mut Tracked::new(game), &mut rng)
            .unwrap();
        close(&v.values, &truth);
        assert_eq!((v.evaluations, v.stop), (32, StopReason::Exact));
        for antithetic in [false, true] {
            let spec = EstimatorSpec::Permutation { antithetic };
            let v = spec
                .estimate(100, &mut Tracked::new(game), &mut rng)
                .unwrap();
            assert!(v.evaluations <= 100);
            assert!((v.values.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        }
    }

    #[test]
    fn every_estimator_runs_within_its_budget() {
        let (n, t) = table(Glove { left: 3, right: 4 });
        for spec in EstimatorSpec::benchmark_set() {
            let reference = spec.exact_reference(n, &t).unwrap();
            let mut game = Tracked::new(Counting {
                game: Glove { left: 3, right: 4 },
                calls: 0,
            });
            let v = spec
                .estimate(300, &mut game, &mut ChaCha8Rng::seed_from_u64(2))
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
            let calls = game.into_inner().calls;
            assert!(calls <= 300 && v.evaluations == calls, "{spec}: {calls}");
            assert_eq!(v.values.len(), n, "{spec}");
            // Loose sanity: every estimate is near its own target on this small game.
            let worst = v
                .values
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 0.5, "{spec}: {:?} vs {reference:?}", v.values);
        }
    }

    #[test]
    fn reference_rejects_a_wrong_table() {
        let err = EstimatorSpec::Banzhaf
            .exact_reference(3, &[0.0; 7])
            .unwrap_err();
        assert!(err.to_string().contains("7 entries"), "{err}");
        assert_eq!(
            EstimatorSpec::Exact.exact_reference(0, &[0.0]),
            Err(ValuationError::NoPlayers)
        );
    }

    /// `a u + b v`, for linearity checks.
    struct Combination {
        u: Soum,
        v: Soum,
        a: f64,
        b: f64,
    }

    impl Game for Combination {
        fn n_players(&self) -> usize {
            self.u.n
        }
        fn value(&mut self, c: &Coalition) -> f64 {
            self.a * self.u.value(c) + self.b * self.v.value(c)
        }
    }

    /// `game` with `extra` null players appended (in no unanimity term).
    fn with_null_players(game: &Soum, extra: usize) -> Soum {
        Soum {
            n: game.n + extra,
            terms: game.terms.clone(),
        }
    }

    fn run(spec: &EstimatorSpec, game: impl Game, budget: u64, seed: u64) -> (Valuation, u64) {
        let mut game = Tracked::new(Counting { game, calls: 0 });
        let v = spec
            .estimate(budget, &mut game, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        (v, game.into_inner().calls)
    }

    /// Estimators whose sampled coalitions never depend on the utilities seen, so one
    /// seed gives the same samples for every game.
    fn value_independent() -> Vec<EstimatorSpec> {
        vec![
            EstimatorSpec::Permutation { antithetic: false },
            EstimatorSpec::Permutation { antithetic: true },
            EstimatorSpec::Svarm,
            EstimatorSpec::Banzhaf,
            EstimatorSpec::BetaShapley {
                alpha: 16.0,
                beta: 1.0,
            },
            EstimatorSpec::LeaveOneOut,
            EstimatorSpec::Exact,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// No estimator ever calls the game more often than its budget allows.
        #[test]
        fn no_estimator_exceeds_its_budget(game in soum_strategy(8), budget in 20u64..400, seed in 0u64..1000) {
            let game = with_null_players(&game, 1);
            let n = game.n;
            for spec in EstimatorSpec::benchmark_set() {
                let cap = if spec == EstimatorSpec::Exact { 1u64 << n } else { budget };
                let (v, calls) = run(&spec, game.clone(), cap, seed);
                prop_assert!(calls <= cap, "{}: {} calls for a budget of {}", spec, calls, cap);
                prop_assert_eq!(v.evaluations, calls, "{}", spec);
            }
        }

        /// Linearity: with one seed, an estimator whose samples do not depend on the
        /// utilities values `a u + b v` as `a phi(u) + b phi(v)`.
        #[test]
        fn value_independent_estimators_are_linear(
            u in soum_strategy(7),
            raw_v in soum_strategy(7),
            a in -3.0f64..3.0,
            b in -3.0f64..3.0,
            seed in 0u64..1000,
        ) {
            let v = Soum { n: u.n, terms: raw_v.terms.into_iter()
                .map(|(members, c)| (members.into_iter().filter(|&m| m < u.n).collect::<Vec<_>>(), c))
                .filter(|(members, _)| !members.is_empty())
                .collect() };
            for spec in value_independent() {
                let (pu, _) = run(&spec, u.clone(), 300, seed);
                let (pv, _) = run(&spec, v.clone(), 300, seed);
                let (pw, _) = run(&spec, Combination { u: u.clone(), v: v.clone(), a, b }, 300, seed);
                for ((x, y), z) in pu.values.iter().zip(&pv.values).zip(&pw.values) {
                    prop_assert!((a * x + b * y - z).abs() < 1e-9, "{}: {} vs {}", spec, a * x + b * y, z);
                }
            }
        }

        /// A null player gets exactly 0 from every estimator built on marginal
        /// contributions, and every Shapley estimator that walks permutations is
        /// efficient.
        #[test]
        fn null_players_get_zero_and_walks_are_efficient(game in soum_strategy(7), seed in 0u64..1000) {
            let game = with_null_players(&game, 2);
            let n = game.n;
            let full = game.clone().value(&Coalition::full(n)) - game.clone().value(&Coalition::empty(n));
            for spec in [
                EstimatorSpec::Exact,
                EstimatorSpec::Permutation { antithetic: false },
                EstimatorSpec::Permutation { antithetic: true },
                EstimatorSpec::Tmc { tolerance: 0.0 },
                EstimatorSpec::Gtg { round_tolerance: 0.0, within_tolerance: 0.0 },
                EstimatorSpec::LeaveOneOut,
            ] {
                let (v, _) = run(&spec, game.clone(), 400, seed);
                // Exact sums a table (rounding ~1e-17); the walks see identical utilities.
                prop_assert!(v.values[n - 1].abs() < 1e-12, "{}: {}", spec, v.values[n - 1]);
                prop_assert!(v.values[n - 2].abs() < 1e-12, "{}: {}", spec, v.values[n - 2]);
                if spec.is_shapley() {
                    let sum: f64 = v.values.iter().sum();
                    prop_assert!((sum - full).abs() < 1e-9, "{}: {} vs {}", spec, sum, full);
                }
            }
        }

        #[test]
        fn semivalue_with_shapley_weights_is_shapley(game in soum_strategy(9)) {
            let (n, t) = table(game);
            let via_semivalue = semivalue_from_table(n, &t, &shapley_weights(n));
            for (a, b) in via_semivalue.iter().zip(shapley_from_table(n, &t)) {
                prop_assert!((a - b).abs() < 1e-10);
            }
        }
    }
}
