//! Permutation sampling (ApproShapley / Monte Carlo Shapley, ALGORITHMS.md 2.1).
//!
//! Draw a uniformly random permutation `pi`, walk it adding one player at a time, and
//! credit `pi_j` with `v(pi[..=j]) - v(pi[..j])`; average over permutations. `v({})` and
//! `v(N)` are evaluated once and reused, so a walk costs `n - 1` evaluations. Each
//! permutation's marginals sum to `v(N) - v({})`, so every estimate is exactly
//! efficient. The antithetic variant also walks the reversed permutation and treats the
//! pair's mean marginal as one sample (which is also what its standard error uses).

use rand::Rng;
use rand::seq::SliceRandom;

use super::{
    Estimator, IncrementalGame, Metered, Method, RunningMoments, StopReason, Valuation,
    ValuationError,
};

/// Permutation sampling parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PermutationSampling {
    /// Hard cap on utility evaluations; the estimator stops before a walk would exceed it.
    pub budget: u64,
    /// Also walk each permutation reversed (antithetic pairs; lower variance for
    /// games whose marginals fall or rise with coalition size).
    pub antithetic: bool,
}

impl PermutationSampling {
    /// Walks per sample: 2 for an antithetic pair, else 1.
    fn walks(&self) -> u64 {
        if self.antithetic { 2 } else { 1 }
    }
}

impl Estimator for PermutationSampling {
    fn method(&self) -> Method {
        Method::Permutation
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
        if n == 0 {
            return Err(ValuationError::NoPlayers);
        }
        let sample_cost = (n as u64 - 1) * self.walks();
        let cap = game.cap_at_least(self.budget, 2 + sample_cost, Method::Permutation)?;
        let start = game.evaluations();

        game.reset();
        let v_empty = game.current_value()?;
        (0..n).for_each(|i| game.add(i));
        let v_full = game.current_value()?;
        let ends = Ends { v_empty, v_full };

        let mut order: Vec<usize> = (0..n).collect();
        let mut sample = vec![0.0; n];
        let mut moments = RunningMoments::new(n);
        let weight = 1.0 / self.walks() as f64;
        let mut spent = 2;
        // With one player a walk evaluates nothing: one walk is the exact answer.
        let exact = sample_cost == 0;
        while (exact && spent == 2) || (!exact && cap - spent >= sample_cost) {
            order.shuffle(rng);
            sample.iter_mut().for_each(|x| *x = 0.0);
            walk(game, order.iter().copied(), ends, weight, &mut sample)?;
            if self.antithetic {
                walk(game, order.iter().rev().copied(), ends, weight, &mut sample)?;
            }
            moments.push(&sample);
            spent += sample_cost.max(1);
        }

        Ok(Valuation {
            values: moments.means().to_vec(),
            std_errors: if exact {
                Some(vec![0.0; n])
            } else {
                moments.std_errors()
            },
            evaluations: game.evaluations() - start,
            stop: if exact {
                StopReason::Exact
            } else {
                StopReason::BudgetExhausted
            },
            method: Method::Permutation,
        })
    }
}

/// `v({})` and `v(N)`, evaluated once per run.
#[derive(Clone, Copy)]
struct Ends {
    v_empty: f64,
    v_full: f64,
}

/// Walks one permutation (`n - 1` evaluations; the last prefix is `N`, already known)
/// and adds `weight` times each player's marginal to `out`.
fn walk<G: IncrementalGame>(
    game: &mut Metered<G>,
    order: impl ExactSizeIterator<Item = usize>,
    ends: Ends,
    weight: f64,
    out: &mut [f64],
) -> Result<(), ValuationError> {
    let last = order.len() - 1;
    game.reset();
    let mut previous = ends.v_empty;
    for (j, player) in order.enumerate() {
        let current = if j == last {
            ends.v_full
        } else {
            game.add(player);
            game.current_value()?
        };
        out[player] += weight * (current - previous);
        previous = current;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::Counting;
    use crate::valuation::games::{Airport, Glove, Soum};
    use crate::valuation::{Game, Tracked, exact_shapley};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(game: impl Game, budget: u64, antithetic: bool, seed: u64) -> Valuation {
        PermutationSampling { budget, antithetic }
            .estimate(
                &mut Tracked::new(game),
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
            .unwrap()
    }

    fn exact(game: impl Game) -> Vec<f64> {
        exact_shapley(&mut Tracked::new(game)).unwrap().values
    }

    /// A fixed SOUM game on 8 players with overlapping terms of several sizes.
    fn soum8() -> Soum {
        Soum {
            n: 8,
            terms: vec![
                (vec![0], 1.0),
                (vec![1, 2], 2.0),
                (vec![0, 3, 4], -1.5),
                (vec![2, 5, 6, 7], 3.0),
                (vec![1, 3, 5, 7], -2.0),
                (vec![4, 6], 0.75),
            ],
        }
    }

    fn mse(estimate: &[f64], truth: &[f64]) -> f64 {
        estimate
            .iter()
            .zip(truth)
            .map(|(e, t)| (e - t).powi(2))
            .sum::<f64>()
            / truth.len() as f64
    }

    /// Mean over 20 seeds of the per-player MSE at `budget`.
    fn mean_mse(budget: u64, antithetic: bool) -> f64 {
        let truth = exact(soum8());
        (0..20)
            .map(|seed| mse(&run(soum8(), budget, antithetic, seed).values, &truth))
            .sum::<f64>()
            / 20.0
    }

    #[test]
    fn mse_shrinks_as_the_budget_grows() {
        for antithetic in [false, true] {
            let errors: Vec<f64> = [100, 1000, 10_000]
                .iter()
                .map(|&b| mean_mse(b, antithetic))
                .collect();
            assert!(
                errors[0] > errors[1] && errors[1] > errors[2],
                "{antithetic}: {errors:?}"
            );
            assert!(errors[2] < errors[0] / 5.0, "{antithetic}: {errors:?}");
        }
    }

    #[test]
    fn mean_over_seeds_is_near_exact() {
        let game = Glove { left: 2, right: 3 };
        let truth = exact(game);
        for antithetic in [false, true] {
            let mut mean = [0.0; 5];
            for seed in 0..50 {
                let v = run(game, 200, antithetic, seed);
                mean.iter_mut()
                    .zip(&v.values)
                    .for_each(|(m, x)| *m += x / 50.0);
            }
            // 50 seeds x ~50 walks: the standard error of the mean is about 0.01.
            let worst = mean
                .iter()
                .zip(&truth)
                .map(|(m, t)| (m - t).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 0.03,
                "antithetic {antithetic}: {mean:?} vs {truth:?}"
            );
        }
    }

    #[test]
    fn same_seed_same_estimate() {
        for antithetic in [false, true] {
            let a = run(soum8(), 500, antithetic, 7);
            assert_eq!(a, run(soum8(), 500, antithetic, 7));
            assert_ne!(a.values, run(soum8(), 500, antithetic, 8).values);
        }
    }

    #[test]
    fn reports_budget_exhausted_and_full_walks() {
        // n = 8: 2 + 7 k evaluations; budget 100 buys 14 walks (100 = 2 + 98).
        let v = run(soum8(), 100, false, 1);
        assert_eq!(
            (v.evaluations, v.stop, v.method),
            (100, StopReason::BudgetExhausted, Method::Permutation)
        );
        let v = run(soum8(), 99, false, 1);
        assert_eq!(v.evaluations, 2 + 13 * 7);
        // Antithetic pairs cost 14: 2 + 14 * 7 = 100.
        let v = run(soum8(), 100, true, 1);
        assert_eq!(v.evaluations, 100);
    }

    #[test]
    fn standard_errors_cover_the_truth() {
        let game = Airport {
            costs: (1..=8).map(f64::from).collect(),
        };
        let truth = exact(game.clone());
        let (mut inside, mut total) = (0, 0);
        for seed in 0..20 {
            let v = run(game.clone(), 400, false, seed);
            let se = v.std_errors.unwrap();
            for ((x, s), t) in v.values.iter().zip(&se).zip(&truth) {
                assert!(*s > 0.0);
                inside += usize::from((x - t).abs() <= 2.0 * s);
                total += 1;
            }
        }
        // About 95% expected within 2 standard errors.
        assert!(inside as f64 / total as f64 > 0.85, "{inside} / {total}");
    }

    #[test]
    fn too_small_budget_says_how_many_are_needed() {
        let mut game = Tracked::new(soum8());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = PermutationSampling {
            budget: 8,
            antithetic: false,
        }
        .estimate(&mut game, &mut rng);
        let err = err.unwrap_err();
        assert!(matches!(
            err,
            ValuationError::BudgetTooSmall {
                budget: 8,
                needed: 9,
                n: 8,
                ..
            }
        ));
        assert!(err.to_string().contains("at least 9"), "{err}");
        let err = PermutationSampling {
            budget: 15,
            antithetic: true,
        }
        .estimate(&mut game, &mut rng);
        assert!(matches!(
            err,
            Err(ValuationError::BudgetTooSmall { needed: 16, .. })
        ));
    }

    #[test]
    fn one_player_is_exact() {
        let v = run(Airport { costs: vec![2.5] }, 2, false, 0);
        assert_eq!(
            (v.values, v.evaluations, v.stop),
            (vec![2.5], 2, StopReason::Exact)
        );
    }

    #[test]
    fn shared_meter_caps_the_run() {
        let mut game = Tracked::new(soum8());
        let mut meter = Metered::new(&mut game, Some(50));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let sampler = PermutationSampling {
            budget: 1000,
            antithetic: false,
        };
        let v = sampler.estimate_metered(&mut meter, &mut rng).unwrap();
        assert_eq!(v.evaluations, 2 + 6 * 7);
        assert_eq!(meter.evaluations(), v.evaluations);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget_and_is_efficient(
            game in soum_strategy(8),
            budget in 0u64..300,
            antithetic: bool,
            seed: u64,
        ) {
            let n = game.n;
            let full: f64 = game.terms.iter().map(|t| t.1).sum();
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let sampler = PermutationSampling { budget, antithetic };
            let result = sampler.estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            let needed = 2 + (n as u64 - 1) * if antithetic { 2 } else { 1 };
            match result {
                Ok(v) => {
                    prop_assert!(budget >= needed);
                    prop_assert_eq!(v.evaluations, calls);
                    // Another sample would not have fitted.
                    prop_assert!(n == 1 || budget - calls < needed - 2);
                    // Efficiency: sum phi = v(N) - v({}) = sum of coefficients.
                    prop_assert!((v.values.iter().sum::<f64>() - full).abs() < 1e-9);
                }
                Err(e) => {
                    prop_assert!(budget < needed);
                    prop_assert_eq!(calls, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
