//! SVARM (Kolpaczki et al., AAAI 2024; ALGORITHMS.md 2.4): Shapley values without
//! marginal contributions.
//!
//! `phi_i = phi+_i - phi-_i` with `phi+_i = sum_{S not containing i} w(|S|) v(S u i)` and
//! `phi-_i = sum_{S not containing i} w(|S|) v(S)`, `w(s) = 1 / (n C(n-1, s))`. Drawing
//! `A+ ~ P+`, `P+(A) = 1 / (|A| H_n C(n,|A|))`, makes `v(A+)` an unbiased sample of `phi+_i`
//! for *every* member `i` of `A+` at once (given `i` in `A+`, `A+ \ i` is distributed by `w`);
//! likewise `A- ~ P-`, `P-(A) = 1 / ((n-|A|) H_n C(n,|A|))`, samples `phi-_j` for every
//! non-member `j`.
//!
//! - Warm-up (`2n` evaluations): for each player `i`, `S` drawn by `w` (size uniform in
//!   `0..n`, then a uniform subset of `N \ {i}`) gives `phi+_i = v(S u i)`, and an
//!   independent `S'` gives `phi-_i = v(S')`.
//! - Loop: draws alternate `A+ ~ P+` and `A- ~ P-`; each updates the running means of all
//!   the players it samples. Every draw costs one unit of the budget, even when the meter
//!   already memoised its coalition (the paper's `T` samples); the draws are generated in
//!   batches and evaluated with one [`Metered::values`] call each, independently of values,
//!   so the estimate does not depend on the batch size.
//!
//! Standard errors: `phi+_i` and `phi-_i` are means of independent draws from fixed
//! distributions (the warm-up draw has the same distribution as a loop draw), so
//! `se_i = sqrt(s+_i^2 / c+_i + s-_i^2 / c-_i)`; `None` while some player has fewer than two
//! samples of either mean. With one player the warm-up is exact: `v(N) - v({})`.
//!
//! Any number of players: coalitions are `u64` masks up to 64 players (the fast path) and
//! [`Coalition`] bitsets beyond; memory is `O(n)` beyond the batch.

use rand::Rng;

use super::sampling::{Mask, SizeSampler, Strata, check_players, draw_subset};
use super::{
    Coalition, Estimator, IncrementalGame, Metered, Method, StopReason, Valuation, ValuationError,
};

/// Draws evaluated per [`Metered::values`] call in the loop.
const BATCH: usize = 256;

/// SVARM parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Svarm {
    /// Utility evaluations it may spend (draws; memoised repeats are not re-evaluated).
    pub budget: u64,
}

impl Svarm {
    /// SVARM with `budget` evaluations.
    pub fn new(budget: u64) -> Self {
        Self { budget }
    }

    /// The run, evaluating loop draws `batch` at a time: `u64` masks up to 64 players,
    /// [`Coalition`]s beyond.
    fn run<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
        batch: usize,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        check_players(n)?;
        if n <= 64 {
            self.run_with::<u64, _, _>(game, rng, batch)
        } else {
            self.run_with::<Coalition, _, _>(game, rng, batch)
        }
    }

    fn run_with<M: Mask, G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
        batch: usize,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        let needed = 2 * n as u64;
        let cap = game.cap_at_least(self.budget, needed, Method::Svarm)?;
        let batch = batch.max(1);
        let start = game.evaluations();
        // Row 0 of each: phi+ and phi- per player.
        let mut plus = Strata::new(1, n);
        let mut minus = Strata::new(1, n);

        // Warm-up: S u {i} and S' for each i, one batch.
        let mut masks: Vec<M> = Vec::with_capacity(2 * n);
        let mut others: Vec<usize> = Vec::with_capacity(n);
        for i in 0..n {
            for with_i in [true, false] {
                others.clear();
                others.extend((0..n).filter(|&j| j != i));
                let size = rng.random_range(0..n);
                let mut s: M = draw_subset(&mut others, size, n, rng);
                if with_i {
                    s.insert(i);
                }
                masks.push(s);
            }
        }
        let coalitions: Vec<Coalition> = masks.iter().map(|m| m.coalition(n)).collect();
        let values = game.values(&coalitions)?;
        for (k, &v) in values.iter().enumerate() {
            let i = k / 2;
            if k % 2 == 0 {
                plus.push(0, i, v);
            } else {
                minus.push(0, i, v);
            }
        }
        let mut units = needed;
        if n == 1 {
            return Ok(finish(
                &plus,
                &minus,
                game.evaluations() - start,
                StopReason::Exact,
            ));
        }

        // Loop: draw t is A+ for even t, A- for odd t.
        let weights_plus: Vec<f64> = (0..=n)
            .map(|k| if k == 0 { 0.0 } else { 1.0 / k as f64 })
            .collect();
        let weights_minus: Vec<f64> = (0..=n)
            .map(|k| if k == n { 0.0 } else { 1.0 / (n - k) as f64 })
            .collect();
        let sampler_plus = SizeSampler::new(&weights_plus, |_| true);
        let sampler_minus = SizeSampler::new(&weights_minus, |_| true);
        let mut order: Vec<usize> = (0..n).collect();
        let mut coalitions = Vec::with_capacity(batch);
        let mut t = 0u64;
        while units < cap {
            let room = usize::try_from(cap - units)
                .unwrap_or(usize::MAX)
                .min(batch);
            masks.clear();
            for _ in 0..room {
                let sampler = if t.is_multiple_of(2) {
                    &sampler_plus
                } else {
                    &sampler_minus
                };
                let size = sampler.sample(rng).unwrap_or(0);
                masks.push(draw_subset(&mut order, size, n, rng));
                t += 1;
            }
            units += room as u64;
            coalitions.clear();
            coalitions.extend(masks.iter().map(|m| m.coalition(n)));
            let values = game.values(&coalitions)?;
            let first = t - room as u64;
            for (k, (mask, &v)) in masks.iter().zip(&values).enumerate() {
                if (first + k as u64).is_multiple_of(2) {
                    mask.for_each_member(|i| plus.push(0, i, v));
                } else {
                    mask.for_each_absent(n, |j| minus.push(0, j, v));
                }
            }
        }
        Ok(finish(
            &plus,
            &minus,
            game.evaluations() - start,
            StopReason::BudgetExhausted,
        ))
    }
}

impl Estimator for Svarm {
    fn method(&self) -> Method {
        Method::Svarm
    }

    fn budget(&self) -> Option<u64> {
        Some(self.budget)
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        self.run(game, rng, BATCH)
    }
}

/// `phi+ - phi-` with standard errors where every mean has two samples or more.
fn finish(plus: &Strata, minus: &Strata, evaluations: u64, stop: StopReason) -> Valuation {
    let values = plus
        .mean
        .iter()
        .zip(&minus.mean)
        .map(|(p, m)| p - m)
        .collect();
    let variance = |s: &Strata, i: usize| {
        let c = s.count[i];
        (c >= 2).then(|| s.m2[i] / (c - 1) as f64 / c as f64)
    };
    let std_errors = if stop == StopReason::Exact {
        Some(vec![0.0; plus.mean.len()])
    } else {
        (0..plus.mean.len())
            .map(|i| Some((variance(plus, i)? + variance(minus, i)?).sqrt()))
            .collect()
    };
    Valuation {
        values,
        std_errors,
        evaluations,
        stop,
        method: Method::Svarm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Airport, Counting};
    use crate::valuation::stratified::tests::{
        bias_in_standard_errors, exact, mse, random_soum, soum8,
    };
    use crate::valuation::{Game, Tracked};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(game: impl Game, budget: u64, seed: u64) -> Valuation {
        Svarm::new(budget)
            .estimate(
                &mut Tracked::new(game),
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
            .unwrap()
    }

    fn run_batched(game: impl Game, budget: u64, seed: u64, batch: usize) -> Valuation {
        let mut game = Tracked::new(game);
        let mut meter = Metered::new(&mut game, Some(budget));
        Svarm::new(budget)
            .run(&mut meter, &mut ChaCha8Rng::seed_from_u64(seed), batch)
            .unwrap()
    }

    #[test]
    fn mean_over_seeds_is_near_exact() {
        let game = random_soum(8, 12, 5, 11);
        let truth = exact(game.clone());
        let z = bias_in_standard_errors(&truth, 400, |seed| run(game.clone(), 120, seed).values);
        assert!(z < 4.0, "z = {z}");
    }

    #[test]
    fn mse_shrinks_as_the_budget_grows() {
        let truth = exact(soum8());
        let errors: Vec<f64> = [100, 1000, 10_000]
            .iter()
            .map(|&b| {
                (0..20)
                    .map(|s| mse(&run(soum8(), b, s).values, &truth))
                    .sum::<f64>()
                    / 20.0
            })
            .collect();
        assert!(errors[0] > errors[1] && errors[1] > errors[2], "{errors:?}");
        assert!(errors[2] < errors[0] / 20.0, "{errors:?}");
    }

    #[test]
    fn same_seed_same_estimate_whatever_the_batch() {
        let a = run_batched(soum8(), 300, 7, BATCH);
        for batch in [1, 5, 64] {
            assert_eq!(a, run_batched(soum8(), 300, 7, batch), "{batch}");
        }
        assert_ne!(a.values, run_batched(soum8(), 300, 8, BATCH).values);
    }

    #[test]
    fn standard_errors_cover_the_truth() {
        let game = Airport {
            costs: (1..=8).map(f64::from).collect(),
        };
        let truth = exact(game.clone());
        let (mut inside, mut total) = (0, 0);
        for seed in 0..30 {
            let v = run(game.clone(), 600, seed);
            let se = v.std_errors.unwrap();
            for ((x, s), t) in v.values.iter().zip(&se).zip(&truth) {
                inside += usize::from((x - t).abs() <= 2.0 * s);
                total += 1;
            }
        }
        assert!(inside as f64 / total as f64 > 0.85, "{inside} / {total}");
    }

    #[test]
    fn one_player_is_exact_and_small_budgets_are_refused() {
        let v = run(Airport { costs: vec![2.5] }, 2, 0);
        assert_eq!(
            (v.values, v.evaluations, v.stop),
            (vec![2.5], 2, StopReason::Exact)
        );
        let err = Svarm::new(15)
            .estimate(
                &mut Tracked::new(soum8()),
                &mut ChaCha8Rng::seed_from_u64(0),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ValuationError::BudgetTooSmall {
                budget: 15,
                needed: 16,
                n: 8,
                method: Method::Svarm
            }
        ));
    }

    #[test]
    fn warm_up_alone_has_no_standard_errors() {
        let v = run(soum8(), 16, 1);
        assert_eq!((v.evaluations <= 16, v.std_errors), (true, None));
        assert!(v.values.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn a_hundred_players_are_valued() {
        // Beyond 64 players coalitions are `Coalition` bitsets instead of `u64` masks.
        let game = random_soum(100, 40, 3, 9);
        let truth = game.shapley();
        let budget = 50_000;
        let mut counted = Tracked::new(Counting {
            game: game.clone(),
            calls: 0,
        });
        let v = Svarm::new(budget)
            .estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(1))
            .unwrap();
        let calls = counted.into_inner().calls;
        assert!(calls <= budget && v.evaluations == calls, "{calls}");
        // Measured 1.5e-3 (values up to about 1 in size).
        let err = mse(&v.values, &truth);
        assert!(err < 5e-3, "mse {err:e}");
        assert_eq!(v, run(game.clone(), budget, 1));
        assert_ne!(v.values, run(game.clone(), budget, 2).values);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget(
            game in soum_strategy(9),
            budget in 0u64..300,
            seed: u64,
        ) {
            let n = game.n as u64;
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let result = Svarm::new(budget).estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            match result {
                Ok(v) => {
                    prop_assert!(budget >= 2 * n);
                    prop_assert_eq!(v.evaluations, calls);
                }
                Err(e) => {
                    prop_assert!(budget < 2 * n);
                    prop_assert_eq!(calls, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
