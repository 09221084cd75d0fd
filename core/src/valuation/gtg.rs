//! GTG-Shapley: guided truncation gradient Shapley for one federated round (Liu, Chen,
//! Yu, Liu & Cui, "GTG-Shapley: Efficient and Accurate Participant Contribution
//! Evaluation in Federated Learning", ACM TIST 2022, arXiv 2109.02053, Algorithm 1;
//! ALGORITHMS.md 2.3).
//!
//! The game is a round's reconstruction game ([`RoundGame`](super::round_game::RoundGame)
//! or any other); the estimator is permutation sampling with:
//! - between-round truncation: if `|v(N) - v({})| <= round_tolerance` the round did not
//!   move the score and every value is 0 after just those 2 evaluations. The stop reason
//!   is [`StopReason::Converged`], not `Exact`: zero is GTG's decision that the round is
//!   not worth valuing (the true Shapley values need not be zero when gains and losses
//!   cancel), reached by a stopping rule before the budget ran out; no standard errors;
//! - guided sampling: permutations come in sweeps of `n`; in a sweep every player leads
//!   exactly one permutation and the others follow in uniformly random order. The
//!   leaders' order within a sweep is itself shuffled (the paper and its reference code
//!   iterate players in index order), so every single permutation is marginally uniform
//!   and the estimate stays unbiased when the budget ends a sweep early;
//! - within-round truncation: before each step, if `|v(N) - v(prefix)| < within_tolerance`
//!   the remaining marginals of the permutation are 0 without evaluation (as in the
//!   reference code, the check also applies to the empty prefix and to the last step);
//! - stop: at least `max(min_permutations, n)` permutations (30 by default) if the budget
//!   allows, then, at the end of each sweep, the TMC rule over the last `window` (10)
//!   running means: `mean_i |phi_i^(t-k) - phi_i^t| / (|phi_i^t| + 1e-12) < threshold`
//!   (0.05) for every `k` -> [`StopReason::Converged`].
//!
//! Sub-model scores are memoised by coalition (as in the reference code): the singleton
//! prefix of each leader is evaluated once per run, not once per sweep. Not followed from
//! the reference code: its optional rescaling of the values to sum to `v(N) - v({})` and
//! its cap of `0.8 * 2^n` permutations (the hard evaluation budget bounds the run here).
//!
//! Efficiency: an untruncated permutation's marginals sum to `v(N) - v({})`; within-round
//! truncation stops at a prefix closer than `within_tolerance` to `v(N)`, so the sum of
//! the estimate is off by less than `within_tolerance`. Standard errors treat the
//! permutations as independent, which is conservative under the guided stratification.
//! The value of a client over a whole training is the sum of its per-round values
//! (the caller's job).

use rand::Rng;
use rand::seq::SliceRandom;

use super::tmc::{Ends, WalkTally, Walker, check_convergence, check_non_negative, walk_capacity};
use super::{Estimator, IncrementalGame, Metered, Method, StopReason, Valuation, ValuationError};

/// GTG-Shapley parameters (defaults from ALGORITHMS.md 2.3 via [`GtgShapley::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GtgShapley {
    /// Hard cap on utility evaluations.
    pub budget: u64,
    /// Between-round truncation: `|v(N) - v({})| <= this` gives all-zero values (0.001).
    pub round_tolerance: f64,
    /// Within-round truncation: `|v(N) - v(prefix)| < this` zeroes later marginals (0.001).
    pub within_tolerance: f64,
    /// Permutations before convergence is tested; the run uses `max(this, n)` (30).
    pub min_permutations: u64,
    /// Running means compared by the convergence rule (10; `>= 1`).
    pub window: usize,
    /// Convergence threshold on the mean relative change (0.05; 0 disables it).
    pub threshold: f64,
}

impl GtgShapley {
    /// GTG-Shapley with the ALGORITHMS.md / paper defaults: tolerances 0.001, at least
    /// `max(30, n)` permutations, convergence over the last 10 means below 0.05.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            round_tolerance: 0.001,
            within_tolerance: 0.001,
            min_permutations: 30,
            window: 10,
            threshold: 0.05,
        }
    }

    /// Rejects parameters that would make the rules meaningless.
    fn validate(&self) -> Result<(), ValuationError> {
        check_non_negative("gtg round tolerance", self.round_tolerance)?;
        check_non_negative("gtg within-round tolerance", self.within_tolerance)?;
        check_convergence(self.window, self.threshold)
    }
}

impl Estimator for GtgShapley {
    fn method(&self) -> Method {
        Method::Gtg
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
        let cap = walk_capacity(game, self.budget, Method::Gtg)?;
        let start = game.evaluations();
        let ends = Ends::evaluate(game)?;
        if (ends.full - ends.empty).abs() <= self.round_tolerance {
            return Ok(Valuation {
                values: vec![0.0; n],
                std_errors: None,
                evaluations: game.evaluations() - start,
                stop: StopReason::Converged,
                method: Method::Gtg,
            });
        }
        if n == 1 {
            return Ok(ends.one_player(game.evaluations() - start, Method::Gtg));
        }

        let min_walks = self.min_permutations.max(n as u64);
        let mut leaders: Vec<usize> = (0..n).collect();
        let mut walker = Walker::new(n);
        let mut tally = WalkTally::new(n, self.window, self.threshold);
        let mut stop = StopReason::BudgetExhausted;
        'sweeps: loop {
            leaders.shuffle(rng);
            for &leader in &leaders {
                if tally.walks() >= cap || !walker.affordable(game, start, cap) {
                    break 'sweeps;
                }
                let order = walker.order_mut();
                // `order` is a permutation; bring the leader to the front.
                if let Some(at) = order.iter().position(|&p| p == leader) {
                    order.swap(0, at);
                }
                order[1..].shuffle(rng);
                walker.walk(game, ends, |_, previous| {
                    (ends.full - previous).abs() < self.within_tolerance
                })?;
                tally.record(walker.sample());
            }
            if tally.walks() >= min_walks && tally.converged() {
                stop = StopReason::Converged;
                break;
            }
        }

        Ok(tally.finish(game.evaluations() - start, stop, Method::Gtg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Additive, Airport, Counting, Soum};
    use crate::valuation::semivalue::tests::{mean_mse, random_soum};
    use crate::valuation::{Game, Tracked};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(gtg: &GtgShapley, game: impl Game, seed: u64) -> Valuation {
        gtg.estimate(
            &mut Tracked::new(game),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap()
    }

    /// GTG with within-round truncation and convergence disabled.
    fn plain(budget: u64) -> GtgShapley {
        GtgShapley {
            within_tolerance: 0.0,
            threshold: 0.0,
            ..GtgShapley::new(budget)
        }
    }

    #[test]
    fn defaults_follow_the_paper() {
        let g = GtgShapley::new(7);
        assert_eq!(
            (
                g.round_tolerance,
                g.within_tolerance,
                g.min_permutations,
                g.window,
                g.threshold
            ),
            (0.001, 0.001, 30, 10, 0.05)
        );
    }

    #[test]
    fn between_round_truncation_returns_zeros_after_two_evaluations() {
        // v(N) = v({}) although players matter: +1 for {0,1}, -1 for {2,3}.
        let game = Soum {
            n: 4,
            terms: vec![(vec![0, 1], 1.0), (vec![2, 3], -1.0)],
        };
        let v = run(&GtgShapley::new(1000), game, 0);
        assert_eq!(v.values, vec![0.0; 4]);
        assert_eq!(
            (v.evaluations, v.stop, v.std_errors),
            (2, StopReason::Converged, None)
        );
    }

    #[test]
    fn within_round_truncation_buys_more_permutations() {
        // One dominant runway: once player 13 has joined, v(prefix) = v(N) and every
        // later marginal is exactly 0, so truncation is free of bias here.
        let mut costs = vec![1.0; 14];
        costs[13] = 100.0;
        let game = Airport { costs };
        let truth = game.shapley();
        let budget = 2 + 13 * 100;
        let with = GtgShapley {
            threshold: 0.0,
            ..GtgShapley::new(budget)
        };
        let a = run(&with, game.clone(), 3);
        // Truncated prefixes equal v(N): still exactly efficient.
        assert!((a.values.iter().sum::<f64>() - 100.0).abs() < 1e-9);
        let errors = [&with, &plain(budget)]
            .map(|g| mean_mse(&truth, 20, |seed| run(g, game.clone(), seed).values));
        assert!(errors[0] < errors[1] * 0.8, "{errors:?}");
    }

    #[test]
    fn converges_after_the_minimum_on_an_additive_game() {
        let game = Additive {
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0],
        };
        let v = run(&GtgShapley::new(100_000), game, 1);
        assert_eq!(v.stop, StopReason::Converged);
        assert!(
            v.values
                .iter()
                .zip(1..)
                .all(|(x, i)| (x - f64::from(i)).abs() < 1e-12)
        );
        assert!(v.evaluations <= 32);
    }

    #[test]
    fn unbiased_and_mse_falls_with_budget() {
        let game = random_soum(8, 21);
        let truth = game.shapley();
        let mut mean = vec![0.0; 8];
        for seed in 0..100 {
            // 300 evaluations end mid-sweep: the shuffled leaders keep it unbiased.
            let v = run(&plain(300), game.clone(), seed);
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
            .map(|&b| mean_mse(&truth, 20, |seed| run(&plain(b), game.clone(), seed).values))
            .collect();
        assert!(
            errors[0] > 3.0 * errors[1] && errors[1] > 3.0 * errors[2],
            "{errors:?}"
        );
    }

    /// `v(S) = |S|^2`, logging the singletons it is asked for (the leaders: with the
    /// memo each singleton prefix is evaluated once).
    struct LeaderLog {
        n: usize,
        singletons: Vec<usize>,
    }

    impl Game for LeaderLog {
        fn n_players(&self) -> usize {
            self.n
        }
        fn value(&mut self, c: &crate::valuation::Coalition) -> f64 {
            if c.len() == 1 {
                self.singletons.extend(c.members());
            }
            (c.len() * c.len()) as f64
        }
    }

    #[test]
    fn every_player_leads_once_per_sweep() {
        // Budget for exactly one sweep of n = 6 permutations. Uniform permutations would
        // have six distinct leaders with probability 6!/6^6 < 2%.
        let gtg = GtgShapley {
            budget: 2 + 6 * 5,
            ..plain(0)
        };
        for seed in 0..20 {
            let mut game = Tracked::new(LeaderLog {
                n: 6,
                singletons: Vec::new(),
            });
            let v = gtg
                .estimate(&mut game, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            let mut leaders = game.into_inner().singletons;
            leaders.sort_unstable();
            assert_eq!(leaders, vec![0, 1, 2, 3, 4, 5], "seed {seed}");
            // Symmetric game, exact marginals per position: efficiency holds exactly.
            assert!((v.values.iter().sum::<f64>() - 36.0).abs() < 1e-9);
        }
    }

    #[test]
    fn same_seed_same_estimate() {
        let game = random_soum(8, 4);
        let gtg = plain(500);
        let a = run(&gtg, game.clone(), 9);
        assert_eq!(a, run(&gtg, game.clone(), 9));
        assert_ne!(a.values, run(&gtg, game, 10).values);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget_and_truncation_bounds_efficiency(
            game in soum_strategy(8),
            budget in 0u64..300,
            seed: u64,
        ) {
            let n = game.n;
            let full: f64 = game.terms.iter().map(|t| t.1).sum();
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let gtg = GtgShapley::new(budget);
            let result = gtg.estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            match result {
                Ok(v) => {
                    prop_assert!(budget > n as u64);
                    prop_assert_eq!(v.evaluations, calls);
                    let sum = v.values.iter().sum::<f64>();
                    if full.abs() <= gtg.round_tolerance {
                        prop_assert_eq!(sum, 0.0);
                    } else {
                        prop_assert!((sum - full).abs() < gtg.within_tolerance + 1e-9);
                    }
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
