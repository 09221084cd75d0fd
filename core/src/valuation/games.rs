//! Closed-form cooperative games with known Shapley values (ALGORITHMS.md section 1).
//!
//! They are the ground truth for estimator tests and benchmarks (the same games shapiq
//! benchmarks on: SOUM, glove, airport). Where ALGORITHMS.md gives a formula, the game
//! has a `shapley()` method returning it; the glove and weighted-voting games are
//! checked against the literal numbers there instead. Every `value` is allocation-free.

use super::{Coalition, Game};

/// Unanimity game `u_T`: `v(S) = 1` iff `T` is a subset of `S`.
#[derive(Clone, Debug, PartialEq)]
pub struct Unanimity {
    /// Number of players.
    pub n: usize,
    /// The carrier `T` (players `< n`).
    pub members: Vec<usize>,
}

/// Sum of unanimity games `sum_k c_k u_{T_k}` (SOUM).
#[derive(Clone, Debug, PartialEq)]
pub struct Soum {
    /// Number of players.
    pub n: usize,
    /// The terms `(T_k, c_k)`.
    pub terms: Vec<(Vec<usize>, f64)>,
}

/// Additive game `v(S) = sum_{i in S} a_i` (player `i`'s value is `a_i`).
#[derive(Clone, Debug, PartialEq)]
pub struct Additive {
    /// The per-player amounts `a_i`; `n = values.len()`.
    pub values: Vec<f64>,
}

/// Glove game: players `0..left` hold a left glove, the next `right` a right glove;
/// `v(S) = min(#left in S, #right in S)` (pairs formed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glove {
    /// Number of left-glove holders (players `0..left`).
    pub left: usize,
    /// Number of right-glove holders (players `left..left + right`).
    pub right: usize,
}

/// Weighted voting game `[quota; w_1, ..., w_n]`: `v(S) = 1` iff `sum_{i in S} w_i >= quota`.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedVoting {
    /// The players' weights; `n = weights.len()`.
    pub weights: Vec<f64>,
    /// The winning threshold.
    pub quota: f64,
}

/// Symmetric majority game: `v(S) = 1` iff `|S| > n / 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Majority {
    /// Number of players.
    pub n: usize,
}

/// Airport game: `v(S) = max_{i in S} c_i` (the runway the coalition needs), `v({}) = 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct Airport {
    /// The players' costs; `n = costs.len()`.
    pub costs: Vec<f64>,
}

/// Whether the carrier `members` is inside `coalition` (an empty carrier always is).
fn carried(members: &[usize], coalition: &Coalition) -> bool {
    members.iter().all(|&i| coalition.contains(i))
}

/// Adds `c / |T|` to every member of the carrier `T` (Shapley value of `c u_T`).
/// An empty carrier is a constant game and contributes nothing; a carrier naming a
/// player `>= n` is never satisfied, so it contributes nothing either.
fn add_unanimity_share(phi: &mut [f64], members: &[usize], c: f64) {
    let mut distinct = members.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() || distinct.iter().any(|&i| i >= phi.len()) {
        return;
    }
    let share = c / distinct.len() as f64;
    for i in distinct {
        phi[i] += share;
    }
}

impl Unanimity {
    /// `phi_i = 1 / |T|` for `i` in `T`, else 0.
    pub fn shapley(&self) -> Vec<f64> {
        let mut phi = vec![0.0; self.n];
        add_unanimity_share(&mut phi, &self.members, 1.0);
        phi
    }
}

impl Game for Unanimity {
    fn n_players(&self) -> usize {
        self.n
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        if carried(&self.members, coalition) {
            1.0
        } else {
            0.0
        }
    }
}

impl Soum {
    /// `phi_i = sum_{k : i in T_k} c_k / |T_k|`.
    pub fn shapley(&self) -> Vec<f64> {
        let mut phi = vec![0.0; self.n];
        for (members, c) in &self.terms {
            add_unanimity_share(&mut phi, members, *c);
        }
        phi
    }
}

impl Game for Soum {
    fn n_players(&self) -> usize {
        self.n
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        self.terms
            .iter()
            .filter(|(t, _)| carried(t, coalition))
            .map(|(_, c)| c)
            .sum()
    }
}

impl Additive {
    /// `phi_i = a_i`.
    pub fn shapley(&self) -> Vec<f64> {
        self.values.clone()
    }
}

impl Game for Additive {
    fn n_players(&self) -> usize {
        self.values.len()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        coalition.members().filter_map(|i| self.values.get(i)).sum()
    }
}

impl Game for Glove {
    fn n_players(&self) -> usize {
        self.left + self.right
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        let (mut left, mut right) = (0usize, 0usize);
        for i in coalition.members() {
            if i < self.left {
                left += 1;
            } else if i < self.left + self.right {
                right += 1;
            }
        }
        left.min(right) as f64
    }
}

impl Game for WeightedVoting {
    fn n_players(&self) -> usize {
        self.weights.len()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        let weight: f64 = coalition
            .members()
            .filter_map(|i| self.weights.get(i))
            .sum();
        if weight >= self.quota { 1.0 } else { 0.0 }
    }
}

impl Majority {
    /// `1 / n` each (symmetric players sharing `v(N) = 1`).
    pub fn shapley(&self) -> Vec<f64> {
        vec![1.0 / self.n as f64; self.n]
    }
}

impl Game for Majority {
    fn n_players(&self) -> usize {
        self.n
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        if 2 * coalition.len() > self.n {
            1.0
        } else {
            0.0
        }
    }
}

impl Airport {
    /// With costs sorted `c_(1) <= ... <= c_(n)` and `c_(0) = 0`:
    /// `phi_(k) = sum_{j <= k} (c_(j) - c_(j-1)) / (n - j + 1)` (each runway segment is
    /// split equally among the players who need it), mapped back to player order.
    pub fn shapley(&self) -> Vec<f64> {
        let n = self.costs.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| self.costs[a].total_cmp(&self.costs[b]));
        let mut phi = vec![0.0; n];
        let (mut previous, mut running) = (0.0, 0.0);
        for (j, &player) in order.iter().enumerate() {
            let cost = self.costs[player];
            running += (cost - previous) / (n - j) as f64;
            previous = cost;
            phi[player] = running;
        }
        phi
    }
}

impl Game for Airport {
    fn n_players(&self) -> usize {
        self.costs.len()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        coalition
            .members()
            .filter_map(|i| self.costs.get(i))
            .copied()
            .reduce(f64::max)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::{Tracked, exact_shapley};
    use proptest::prelude::*;

    /// Exact Shapley values of `game` equal `expected` to 1e-12.
    fn check(game: impl Game, expected: &[f64]) {
        let got = exact_shapley(&mut Tracked::new(game)).unwrap().values;
        assert_eq!(got.len(), expected.len(), "{got:?} vs {expected:?}");
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!(
                (g - e).abs() < 1e-12,
                "player {i}: got {g}, expected {e} ({got:?})"
            );
        }
    }

    #[test]
    fn glove_one_left_two_right() {
        check(
            Glove { left: 1, right: 2 },
            &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0],
        );
    }

    #[test]
    fn glove_two_left_three_right() {
        let (l, r) = (13.0 / 20.0, 7.0 / 30.0);
        check(Glove { left: 2, right: 3 }, &[l, l, r, r, r]);
    }

    #[test]
    fn weighted_voting_51_50_49_1() {
        let game = WeightedVoting {
            weights: vec![50.0, 49.0, 1.0],
            quota: 51.0,
        };
        check(game, &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0]);
    }

    #[test]
    fn weighted_voting_4_3_2_1_1() {
        let game = WeightedVoting {
            weights: vec![3.0, 2.0, 1.0, 1.0],
            quota: 4.0,
        };
        check(game, &[0.5, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0]);
    }

    #[test]
    fn majority_gives_one_over_n() {
        for n in 1..=9 {
            check(Majority { n }, &vec![1.0 / n as f64; n]);
            assert_eq!(Majority { n }.shapley(), vec![1.0 / n as f64; n]);
        }
    }

    #[test]
    fn airport_1_2_2_3() {
        let expected = [0.25, 7.0 / 12.0, 7.0 / 12.0, 19.0 / 12.0];
        check(
            Airport {
                costs: vec![1.0, 2.0, 2.0, 3.0],
            },
            &expected,
        );
        // Unsorted input: the formula maps back to player order.
        let shuffled = Airport {
            costs: vec![2.0, 3.0, 1.0, 2.0],
        };
        let phi = shuffled.shapley();
        let want = [7.0 / 12.0, 19.0 / 12.0, 0.25, 7.0 / 12.0];
        assert!(
            phi.iter().zip(want).all(|(p, w)| (p - w).abs() < 1e-12),
            "{phi:?}"
        );
        check(shuffled, &want);
    }

    #[test]
    fn unanimity_splits_among_its_carrier() {
        check(
            Unanimity {
                n: 5,
                members: vec![1, 3, 4],
            },
            &[0.0, 1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0],
        );
        check(
            Unanimity {
                n: 3,
                members: vec![],
            },
            &[0.0; 3],
        );
    }

    #[test]
    fn soum_sums_unanimity_shares() {
        let game = Soum {
            n: 4,
            terms: vec![(vec![0, 1], 2.0), (vec![1, 2, 3], -3.0), (vec![3], 0.5)],
        };
        check(game, &[1.0, 0.0, -1.0, -0.5]);
    }

    #[test]
    fn additive_returns_its_amounts() {
        check(
            Additive {
                values: vec![1.5, -2.0, 0.0, 7.25],
            },
            &[1.5, -2.0, 0.0, 7.25],
        );
    }

    proptest! {
        #[test]
        fn soum_formula_matches_exact(game in soum_strategy(10)) {
            let expected = game.shapley();
            check(game, &expected);
        }

        #[test]
        fn airport_formula_matches_exact(costs in proptest::collection::vec(0.0f64..10.0, 1..=10)) {
            let game = Airport { costs };
            let expected = game.shapley();
            check(game, &expected);
        }

        #[test]
        fn unanimity_and_additive_formulas_match_exact(
            n in 1usize..=10,
            mask in 0u64..1024,
            values in proptest::collection::vec(-5.0f64..5.0, 1..=10),
        ) {
            let members: Vec<usize> = Coalition::from_mask(n, mask).members().collect();
            let game = Unanimity { n, members };
            let expected = game.shapley();
            check(game, &expected);
            let game = Additive { values };
            let expected = game.shapley();
            check(game, &expected);
        }
    }
}

/// Wraps a game and counts every call to [`Game::value`], independently of any meter:
/// the ground truth for "no estimator spends more than its budget".
#[derive(Clone, Debug)]
pub struct Counting<G> {
    /// The wrapped game.
    pub game: G,
    /// Calls of `value` so far.
    pub calls: u64,
}

impl<G: Game> Game for Counting<G> {
    fn n_players(&self) -> usize {
        self.game.n_players()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        self.calls += 1;
        self.game.value(coalition)
    }
}
