//! Banzhaf values by maximum sample reuse, MSR (Wang & Jia 2023, "Data Banzhaf";
//! ALGORITHMS.md 2.5).
//!
//! The Banzhaf value is `beta_i = (1 / 2^(n-1)) sum_{S not containing i} D_i(S)
//! = E[v(S) | i in S] - E[v(S) | i not in S]` for `S` uniform over all `2^n` coalitions.
//! MSR draws `S` uniformly (each player in independently with probability 1/2) and
//! estimates both conditional means from the same samples, so every sample updates every
//! player: `beta_i = mean{v(S): i in S} - mean{v(S): i not in S}`. A budget of `B` buys
//! `B` samples (memo hits on repeated coalitions are free; the sample count is capped at
//! `B` so a tiny game does not loop forever), drawn and evaluated in batches through
//! [`Metered::values`] (a costly game scores each batch in parallel).
//!
//! Standard errors: `sqrt(s_in^2 / k_in + s_out^2 / k_out)` per player (the two means use
//! disjoint samples). A player never drawn on one side (probability `2^-B`, so only for
//! tiny budgets) has no estimate: its value falls back to 0 (no evidence either way) and,
//! as soon as one player has fewer than two samples on a side, `std_errors` is `None`,
//! which is how the fallback is reported. Banzhaf values are not efficient.

use rand::Rng;

use super::{
    Coalition, Estimator, IncrementalGame, Metered, Method, StopReason, Valuation, ValuationError,
};

/// Coalitions drawn and evaluated per batch (bounds memory for large budgets).
const BATCH: u64 = 4096;

/// MSR Banzhaf estimator.
#[derive(Clone, Debug, PartialEq)]
pub struct MsrBanzhaf {
    /// Hard cap on utility evaluations (and on samples).
    pub budget: u64,
}

impl MsrBanzhaf {
    /// MSR Banzhaf with `budget` evaluations.
    pub fn new(budget: u64) -> Self {
        Self { budget }
    }
}

impl Estimator for MsrBanzhaf {
    fn method(&self) -> Method {
        Method::Banzhaf
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
        let cap = game.cap_at_least(self.budget, 1, Method::Banzhaf)?;
        let start = game.evaluations();
        let mut sums = SideSums::new(n);
        let mut batch = Vec::new();
        let mut drawn = 0;
        while drawn < cap {
            let size = BATCH.min(cap - drawn);
            batch.clear();
            batch.extend((0..size).map(|_| uniform_coalition(n, rng)));
            // At most `size` misses and `drawn + size <= cap`: the batch always fits.
            let values = game.values(&batch)?;
            for (coalition, &v) in batch.iter().zip(&values) {
                sums.add(coalition, v);
            }
            drawn += size;
        }
        let (values, std_errors) = sums.estimate();
        Ok(Valuation {
            values,
            std_errors,
            evaluations: game.evaluations() - start,
            stop: StopReason::BudgetExhausted,
            method: Method::Banzhaf,
        })
    }
}

/// A coalition with every player in independently with probability 1/2 (uniform over
/// all `2^n` coalitions).
fn uniform_coalition<R: Rng + ?Sized>(n: usize, rng: &mut R) -> Coalition {
    if n <= 64 {
        return Coalition::from_mask(n, rng.random::<u64>());
    }
    let mut c = Coalition::empty(n);
    for base in (0..n).step_by(64) {
        let mut bits = rng.random::<u64>();
        while bits != 0 {
            let i = base + bits.trailing_zeros() as usize;
            if i < n {
                c.insert(i);
            }
            bits &= bits - 1;
        }
    }
    c
}

/// Per-player sums of `v(S)` over samples with the player in `S`, plus the totals over
/// all samples (the "out" side is total minus "in"): `O(|S|)` work per sample. Values
/// are shifted by the first sample to keep the sums of squares well conditioned.
#[derive(Debug)]
struct SideSums {
    shift: Option<f64>,
    count: u64,
    sum: f64,
    squares: f64,
    in_count: Vec<u64>,
    in_sum: Vec<f64>,
    in_squares: Vec<f64>,
}

impl SideSums {
    fn new(n: usize) -> Self {
        Self {
            shift: None,
            count: 0,
            sum: 0.0,
            squares: 0.0,
            in_count: vec![0; n],
            in_sum: vec![0.0; n],
            in_squares: vec![0.0; n],
        }
    }

    fn add(&mut self, coalition: &Coalition, v: f64) {
        let x = v - *self.shift.get_or_insert(v);
        self.count += 1;
        self.sum += x;
        self.squares += x * x;
        for i in coalition.members() {
            self.in_count[i] += 1;
            self.in_sum[i] += x;
            self.in_squares[i] += x * x;
        }
    }

    /// The MSR values (0 where a side is empty) and the standard errors (`None` unless
    /// every player has at least two samples on each side).
    fn estimate(&self) -> (Vec<f64>, Option<Vec<f64>>) {
        let mut defined = true;
        let mut values = Vec::with_capacity(self.in_count.len());
        let mut errors = Vec::with_capacity(self.in_count.len());
        for ((&k_in, &s_in), &q_in) in self.in_count.iter().zip(&self.in_sum).zip(&self.in_squares)
        {
            let inside = Side::new(k_in, s_in, q_in);
            let outside = Side::new(self.count - k_in, self.sum - s_in, self.squares - q_in);
            values.push(match (inside.mean(), outside.mean()) {
                (Some(a), Some(b)) => a - b,
                _ => 0.0,
            });
            match (inside.variance_of_mean(), outside.variance_of_mean()) {
                (Some(a), Some(b)) => errors.push((a + b).sqrt()),
                _ => defined = false,
            }
        }
        (values, defined.then_some(errors))
    }
}

/// One side's count, sum and sum of squares.
struct Side {
    count: u64,
    sum: f64,
    squares: f64,
}

impl Side {
    fn new(count: u64, sum: f64, squares: f64) -> Self {
        Self {
            count,
            sum,
            squares,
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// `s^2 / k`, the squared standard error of the mean (needs two samples).
    fn variance_of_mean(&self) -> Option<f64> {
        (self.count > 1).then(|| {
            let k = self.count as f64;
            let var = ((self.squares - self.sum * self.sum / k) / (k - 1.0)).max(0.0);
            var / k
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Counting, WeightedVoting};
    use crate::valuation::semivalue::tests::{brute_force, mean_mse, random_soum};
    use crate::valuation::{Game, SemivalueWeights, Tracked};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(game: impl Game, budget: u64, seed: u64) -> Valuation {
        MsrBanzhaf::new(budget)
            .estimate(
                &mut Tracked::new(game),
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
            .unwrap()
    }

    fn exact_banzhaf(game: impl Game) -> Vec<f64> {
        brute_force(game, SemivalueWeights::Banzhaf)
    }

    fn voting() -> WeightedVoting {
        WeightedVoting {
            weights: vec![50.0, 49.0, 1.0],
            quota: 51.0,
        }
    }

    #[test]
    fn brute_force_banzhaf_of_51_50_49_1_is_three_quarters_one_quarter() {
        let exact = exact_banzhaf(voting());
        for (e, want) in exact.iter().zip([0.75, 0.25, 0.25]) {
            assert!((e - want).abs() < 1e-12, "{exact:?}");
        }
        // MSR converges to it: standard error about 1/sqrt(B) here.
        let v = run(voting(), 40_000, 1);
        for ((x, e), se) in v.values.iter().zip(&exact).zip(v.std_errors.unwrap()) {
            assert!(
                (x - e).abs() < 4.0 * se && se < 0.02,
                "{x} vs {e} (se {se})"
            );
        }
    }

    #[test]
    fn unbiased_and_mse_falls_with_budget() {
        let game = random_soum(8, 31);
        let truth = exact_banzhaf(game.clone());
        let mut mean = vec![0.0; 8];
        for seed in 0..200 {
            let v = run(game.clone(), 100, seed);
            mean.iter_mut()
                .zip(&v.values)
                .for_each(|(m, x)| *m += x / 200.0);
        }
        let worst = mean
            .iter()
            .zip(&truth)
            .map(|(m, t)| (m - t).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.05, "{mean:?} vs {truth:?}");
        // Up to 256 evaluations (2^8 coalitions) the budget buys fresh samples.
        let errors: Vec<f64> = [20, 200, 2000]
            .iter()
            .map(|&b| mean_mse(&truth, 20, |seed| run(game.clone(), b, seed).values))
            .collect();
        assert!(
            errors[0] > 3.0 * errors[1] && errors[1] > 3.0 * errors[2],
            "{errors:?}"
        );
    }

    #[test]
    fn a_player_seen_on_one_side_only_falls_back_to_zero() {
        // One sample: every player is on exactly one side.
        let v = run(voting(), 1, 0);
        assert_eq!(
            (v.values, v.std_errors, v.evaluations),
            (vec![0.0; 3], None, 1)
        );
    }

    #[test]
    fn large_games_draw_every_player() {
        // n = 100 (beyond one u64 word): each player is in about half the samples.
        let game = crate::valuation::games::Additive {
            values: (0..100).map(f64::from).collect(),
        };
        let v = run(game, 2000, 3);
        // Additive: beta_i = a_i; the estimate's error is about 2 sigma_v / sqrt(B) ~ 13.
        assert!(
            v.values
                .iter()
                .zip(0..)
                .all(|(x, i)| (x - f64::from(i)).abs() < 65.0)
        );
        assert!(v.values[99] > v.values[0] + 50.0);
    }

    #[test]
    fn same_seed_same_estimate() {
        let a = run(random_soum(8, 2), 300, 4);
        assert_eq!(a, run(random_soum(8, 2), 300, 4));
        assert_ne!(a.values, run(random_soum(8, 2), 300, 5).values);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget(game in soum_strategy(8), budget in 0u64..300, seed: u64) {
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let result = MsrBanzhaf::new(budget)
                .estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            match result {
                Ok(v) => prop_assert_eq!(v.evaluations, calls),
                Err(e) => {
                    prop_assert_eq!(budget, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
