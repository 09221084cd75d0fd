//! Exact Shapley values: evaluate `v` on all `2^n` coalitions, then sum weighted
//! marginals in `O(n 2^n)` (ALGORITHMS.md section 1).
//!
//! The utility table is filled in Gray-code order (`g_k = k ^ (k >> 1)`, step `k` flips
//! player `trailing_zeros(k)`), so an [`IncrementalGame`] changes its coalition by
//! exactly one player per evaluation: a federated-learning game adds or removes one
//! client update (`O(d)`) instead of rebuilding the sub-model (`O(|S| d)`).

use rand::Rng;

use super::{
    Coalition, Estimator, Game, IncrementalGame, Metered, Method, StopReason, Valuation,
    ValuationError,
};

/// The largest game exact enumeration accepts: `2^25` utilities (256 MiB of f64).
pub const MAX_EXACT_PLAYERS: usize = 25;

/// Exact Shapley values as an [`Estimator`] (needs `2^n` evaluations; ignores the RNG).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactShapley;

impl Estimator for ExactShapley {
    fn method(&self) -> Method {
        Method::Exact
    }

    fn budget(&self) -> Option<u64> {
        None
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        _rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        exact_metered(game)
    }
}

/// Exact Shapley values of `game`, filling the table in Gray-code order
/// (`evaluations = 2^n`, no standard errors, stop reason [`StopReason::Exact`]).
pub fn exact_shapley<G: IncrementalGame>(game: &mut G) -> Result<Valuation, ValuationError> {
    exact_metered(&mut Metered::new(game, None))
}

/// Exact Shapley through a meter (whose remaining budget must cover `2^n`).
fn exact_metered<G: IncrementalGame>(game: &mut Metered<G>) -> Result<Valuation, ValuationError> {
    let start = game.evaluations();
    let table = gray_table(game)?;
    Ok(Valuation {
        values: shapley_from_table(game.n_players(), &table),
        std_errors: None,
        evaluations: game.evaluations() - start,
        stop: StopReason::Exact,
        method: Method::Exact,
    })
}

/// `v(S)` for every coalition, indexed by mask, visiting coalitions in Gray-code order
/// so consecutive evaluations differ by one player. Needs `1 <= n <= 25`.
pub fn utility_table_gray<G: IncrementalGame>(game: &mut G) -> Result<Vec<f64>, ValuationError> {
    gray_table(&mut Metered::new(game, None))
}

/// The Gray-code sweep behind [`utility_table_gray`], through a meter.
fn gray_table<G: IncrementalGame>(game: &mut Metered<G>) -> Result<Vec<f64>, ValuationError> {
    let n = game.n_players();
    let size = table_size(n)?;
    if let Some(budget) = game.remaining()
        && budget < size as u64
    {
        return Err(ValuationError::BudgetTooSmall {
            budget,
            needed: size as u64,
            n,
            method: Method::Exact,
        });
    }
    let mut table = vec![0.0; size];
    game.reset();
    table[0] = game.current_value()?;
    let mut code = 0usize;
    for k in 1..size {
        let player = k.trailing_zeros() as usize;
        code ^= 1 << player;
        if code >> player & 1 == 1 {
            game.add(player);
        } else {
            game.remove(player);
        }
        table[code] = game.current_value()?;
    }
    Ok(table)
}

/// Coalitions evaluated per batch by [`exact_shapley_batched`].
const EXACT_BATCH: usize = 1024;

/// Exact Shapley values with the utility table filled in batches through
/// [`Game::values`]: each coalition is built from scratch, but a game with costly
/// evaluations (a federated round game) spreads every batch over its threads. Prefer it
/// to [`exact_shapley`] when one evaluation costs far more than adding one update.
pub fn exact_shapley_batched<G: Game>(game: &mut G) -> Result<Valuation, ValuationError> {
    let n = game.n_players();
    let size = table_size(n)?;
    let mut meter = Metered::new(game, None);
    let mut table = Vec::with_capacity(size);
    let mut batch = Vec::with_capacity(EXACT_BATCH.min(size));
    for start in (0..size).step_by(EXACT_BATCH) {
        batch.clear();
        batch.extend(
            (start..(start + EXACT_BATCH).min(size)).map(|m| Coalition::from_mask(n, m as u64)),
        );
        table.extend(meter.values(&batch)?);
    }
    Ok(Valuation {
        values: shapley_from_table(n, &table),
        std_errors: None,
        evaluations: meter.evaluations(),
        stop: StopReason::Exact,
        method: Method::Exact,
    })
}

/// `v(S)` for every coalition, indexed by mask, each evaluated from scratch with
/// [`Game::value`] (the reference the Gray-code sweep is tested against).
pub fn utility_table_naive<G: Game>(game: &mut G) -> Result<Vec<f64>, ValuationError> {
    let n = game.n_players();
    let size = table_size(n)?;
    (0..size)
        .map(|mask| {
            let value = game.value(&Coalition::from_mask(n, mask as u64));
            if value.is_finite() {
                Ok(value)
            } else {
                Err(ValuationError::NonFiniteUtility {
                    value,
                    evaluation: mask as u64 + 1,
                })
            }
        })
        .collect()
}

/// `2^n`, after checking `1 <= n <= MAX_EXACT_PLAYERS`.
fn table_size(n: usize) -> Result<usize, ValuationError> {
    if n == 0 {
        return Err(ValuationError::NoPlayers);
    }
    if n > MAX_EXACT_PLAYERS {
        return Err(ValuationError::TooManyPlayers {
            n,
            max: MAX_EXACT_PLAYERS,
        });
    }
    Ok(1 << n)
}

/// The Shapley weights `w(s) = 1 / (n C(n-1, s))` for `s = 0..n`, by the recurrence
/// `w(s+1) = w(s) (s+1) / (n-1-s)` (no factorials, no overflow).
pub fn shapley_weights(n: usize) -> Vec<f64> {
    let mut w = Vec::with_capacity(n);
    let mut current = 1.0 / n as f64;
    for s in 0..n {
        w.push(current);
        if s + 1 < n {
            current *= (s + 1) as f64 / (n - 1 - s) as f64;
        }
    }
    w
}

/// Coalitions summed per block in [`shapley_from_table`] (two-level summation).
const SUM_BLOCK: usize = 1024;

/// Shapley values from a full utility table (`table[mask] = v(S)`, `len = 2^n`).
///
/// Uses `phi_i = sum_{S containing i} w(|S|-1) v(S) - sum_{S not containing i} w(|S|) v(S)`,
/// which reads each table entry once: per coalition, every player outside it gets
/// `-w(|S|) v(S)` (accumulated once as a common offset) and every member gets
/// `w(|S|-1) v(S)`. `O(n 2^n)` with precomputed weights and no allocation in the loop.
///
/// # Panics
/// If `table.len() != 2^n` or `n >= 64` (the table is built by this module's callers).
pub fn shapley_from_table(n: usize, table: &[f64]) -> Vec<f64> {
    assert!(
        n < 64 && table.len() == 1usize << n,
        "utility table has {} entries, expected 2^{n}",
        table.len()
    );
    let w = shapley_weights(n);
    // Any constant shift leaves phi unchanged (each player's coefficients sum to 0);
    // centring on the mean and summing in blocks keeps the rounding error of 2^n-term
    // sums small (FL utilities are large values with small differences).
    let shift = table.iter().sum::<f64>() / table.len() as f64;
    let mut phi = vec![0.0; n];
    let mut block = vec![0.0; n];
    let mut outside = 0.0;
    for (b, chunk) in table.chunks(SUM_BLOCK).enumerate() {
        let mut block_outside = 0.0;
        for (k, &v) in chunk.iter().enumerate() {
            let mask = b * SUM_BLOCK + k;
            let v = v - shift;
            let s = mask.count_ones() as usize;
            let member = if s > 0 { w[s - 1] * v } else { 0.0 };
            let non_member = if s < n { w[s] * v } else { 0.0 };
            block_outside += non_member;
            // Members also receive the common `-non_member` through `outside`; add it back.
            let add = member + non_member;
            let mut bits = mask;
            while bits != 0 {
                block[bits.trailing_zeros() as usize] += add;
                bits &= bits - 1;
            }
        }
        outside += block_outside;
        for (p, x) in phi.iter_mut().zip(&mut block) {
            *p += *x;
            *x = 0.0;
        }
    }
    phi.iter_mut().for_each(|p| *p -= outside);
    phi
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::valuation::games::{Additive, Soum};
    use proptest::prelude::*;

    /// A game given by an arbitrary table (catches any mask/index mix-up).
    pub(crate) struct TableGame {
        pub n: usize,
        pub table: Vec<f64>,
    }

    impl Game for TableGame {
        fn n_players(&self) -> usize {
            self.n
        }
        fn value(&mut self, c: &Coalition) -> f64 {
            self.table[c.mask().unwrap() as usize]
        }
    }

    /// Random SOUM games on `1..=max_n` players with up to 6 terms.
    pub(crate) fn soum_strategy(max_n: usize) -> impl Strategy<Value = Soum> {
        (1..=max_n).prop_flat_map(|n| {
            proptest::collection::vec((1u64..(1u64 << n), -2.0f64..2.0), 1..7).prop_map(
                move |terms| Soum {
                    n,
                    terms: terms
                        .into_iter()
                        .map(|(mask, c)| (Coalition::from_mask(n, mask).members().collect(), c))
                        .collect(),
                },
            )
        })
    }

    fn exact(game: impl Game) -> Valuation {
        exact_shapley(&mut crate::valuation::Tracked::new(game)).unwrap()
    }

    #[test]
    fn weights_of_all_coalitions_sum_to_one() {
        // sum_s C(n-1, s) w(s) = 1: a player's weights over all S not containing it.
        for n in 1..=30usize {
            let w = shapley_weights(n);
            let mut binom = 1.0;
            let mut total = 0.0;
            for (s, ws) in w.iter().enumerate() {
                total += binom * ws;
                binom = binom * (n - 1 - s) as f64 / (s + 1) as f64;
            }
            assert!((total - 1.0).abs() < 1e-12, "n = {n}: {total}");
        }
    }

    #[test]
    fn batched_exact_equals_gray_code_exact() {
        // n = 11 spans two batches of the table.
        let game = Soum {
            n: 11,
            terms: vec![(vec![0, 3], 0.7), (vec![2, 5, 7, 10], -0.2), (vec![9], 1.5)],
        };
        let batched = exact_shapley_batched(&mut game.clone()).unwrap();
        let gray = exact(game.clone());
        assert_eq!(batched.evaluations, 1 << 11);
        for ((b, g), c) in batched.values.iter().zip(&gray.values).zip(game.shapley()) {
            assert!((b - g).abs() < 1e-12 && (b - c).abs() < 1e-12);
        }
    }

    #[test]
    fn exact_reports_its_evaluations() {
        let v = exact(Additive {
            values: vec![1.0, 2.0, 3.0, 4.0],
        });
        assert_eq!(v.evaluations, 16);
        assert_eq!(
            (v.stop, v.method, v.std_errors),
            (StopReason::Exact, Method::Exact, None)
        );
    }

    #[test]
    fn too_many_or_zero_players_are_refused() {
        let mut big = crate::valuation::Tracked::new(Additive {
            values: vec![0.0; 26],
        });
        let err = exact_shapley(&mut big).unwrap_err();
        assert_eq!(err, ValuationError::TooManyPlayers { n: 26, max: 25 });
        let mut none = Additive { values: vec![] };
        assert_eq!(
            utility_table_naive(&mut none),
            Err(ValuationError::NoPlayers)
        );
    }

    #[test]
    fn exact_estimator_respects_a_meter_that_cannot_afford_it() {
        let mut game = crate::valuation::Tracked::new(Additive {
            values: vec![1.0; 4],
        });
        let mut meter = Metered::new(&mut game, Some(15));
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let err = ExactShapley
            .estimate_metered(&mut meter, &mut rng)
            .unwrap_err();
        assert!(matches!(
            err,
            ValuationError::BudgetTooSmall {
                budget: 15,
                needed: 16,
                ..
            }
        ));
        assert_eq!(meter.evaluations(), 0);
    }

    #[test]
    fn gray_sweep_changes_one_player_per_evaluation() {
        /// Records the coalition size at every evaluation and checks each step.
        struct Steps {
            n: usize,
            current: Coalition,
            flips_since_eval: usize,
            evaluated: Vec<u64>,
        }
        impl Game for Steps {
            fn n_players(&self) -> usize {
                self.n
            }
            fn value(&mut self, _: &Coalition) -> f64 {
                0.0
            }
        }
        impl IncrementalGame for Steps {
            fn reset(&mut self) {
                self.current.clear();
                self.flips_since_eval = 0;
            }
            fn add(&mut self, p: usize) {
                assert!(self.current.insert(p));
                self.flips_since_eval += 1;
            }
            fn remove(&mut self, p: usize) {
                assert!(self.current.remove(p));
                self.flips_since_eval += 1;
            }
            fn current_value(&mut self) -> f64 {
                let first = self.evaluated.is_empty();
                assert_eq!(self.flips_since_eval, usize::from(!first));
                self.flips_since_eval = 0;
                self.evaluated.push(self.current.mask().unwrap());
                0.0
            }
        }
        let n = 6;
        let mut g = Steps {
            n,
            current: Coalition::empty(n),
            flips_since_eval: 0,
            evaluated: vec![],
        };
        utility_table_gray(&mut g).unwrap();
        let mut seen = g.evaluated.clone();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..1u64 << n).collect::<Vec<_>>(),
            "every coalition exactly once"
        );
    }

    #[test]
    fn large_tables_with_a_large_offset_stay_accurate() {
        // FL-like utilities: a big common level, small differences, 2^18 coalitions.
        let n = 18;
        let mut table = utility_table_naive(&mut crate::valuation::games::Majority { n }).unwrap();
        table.iter_mut().for_each(|v| *v = 1000.0 + 1e-3 * *v);
        for phi in shapley_from_table(n, &table) {
            assert!((phi - 1e-3 / n as f64).abs() < 1e-13, "{phi}");
        }
    }

    proptest! {
        #[test]
        fn gray_table_equals_naive_table_for_random_tables(
            n in 1usize..=8,
            seed_values in proptest::collection::vec(-10.0f64..10.0, 256),
        ) {
            let mut game = TableGame { n, table: seed_values[..1 << n].to_vec() };
            let naive = utility_table_naive(&mut game).unwrap();
            let gray = utility_table_gray(&mut crate::valuation::Tracked::new(game)).unwrap();
            prop_assert_eq!(gray, naive);
        }

        #[test]
        fn gray_table_equals_naive_table_for_soum(mut game in soum_strategy(10)) {
            let naive = utility_table_naive(&mut game).unwrap();
            let gray = utility_table_gray(&mut crate::valuation::Tracked::new(game)).unwrap();
            prop_assert_eq!(gray, naive);
        }

        #[test]
        fn efficiency(game in soum_strategy(10)) {
            let (n, full) = (game.n, game.terms.iter().map(|t| t.1).sum::<f64>());
            let v = exact(game);
            prop_assert_eq!(v.values.len(), n);
            // v(empty) = 0 because every term is non-empty.
            prop_assert!((v.values.iter().sum::<f64>() - full).abs() < 1e-12);
        }

        #[test]
        fn symmetry(game in soum_strategy(10), a in 0usize..10, b in 0usize..10) {
            let n = game.n;
            let (a, b) = (a % n, b % n);
            // Add the a<->b mirror of every term: a and b become interchangeable.
            let swap = |i: usize| if i == a { b } else if i == b { a } else { i };
            let mut terms = game.terms.clone();
            terms.extend(game.terms.iter().map(|(t, c)| (t.iter().map(|&i| swap(i)).collect(), *c)));
            let v = exact(Soum { n, terms });
            prop_assert!((v.values[a] - v.values[b]).abs() < 1e-12);
        }

        #[test]
        fn null_player_gets_zero(game in soum_strategy(10), p in 0usize..10) {
            let n = game.n;
            let p = p % n;
            // Drop every term that mentions p: p never changes the utility.
            let terms = game.terms.into_iter().filter(|(t, _)| !t.contains(&p)).collect();
            let v = exact(Soum { n, terms });
            prop_assert!(v.values[p].abs() < 1e-12);
        }

        #[test]
        fn shift_leaves_values_unchanged_and_scaling_scales_them(
            n in 1usize..=8,
            values in proptest::collection::vec(-10.0f64..10.0, 256),
            shift in -100.0f64..100.0,
            scale in -3.0f64..3.0,
        ) {
            let table = values[..1 << n].to_vec();
            let base = shapley_from_table(n, &table);
            let moved: Vec<f64> = table.iter().map(|v| scale * v + shift).collect();
            let got = shapley_from_table(n, &moved);
            for (g, b) in got.iter().zip(&base) {
                prop_assert!((g - scale * b).abs() < 1e-9, "{} vs {}", g, scale * b);
            }
        }
    }
}
