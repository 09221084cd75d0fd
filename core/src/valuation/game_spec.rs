//! Games described as data: a serde [`GameSpec`] (what a JSON game file or a benchmark
//! names) that validates its inputs and builds one of the closed-form [`games`](super::games),
//! plus the seeded generators the valuation benchmark uses and [`TabulatedGame`], a game
//! given by its full utility table so estimators can be timed without utility cost.
//!
//! A game file is a [`GameFile`]: the spec, tagged by `type`, and optionally the exact
//! Shapley values to score estimates against:
//!
//! ```json
//! {"type": "weighted_voting", "n_players": 3, "weights": [50, 49, 1], "quota": 51,
//!  "exact_shapley_values": [0.6666666666666666, 0.16666666666666666, 0.16666666666666666]}
//! ```
//!
//! Generators (chosen to match the shapiq benchmark games where shapiq has them):
//! - [`GameSpec::random_soum`]: 30 unanimity games, each on a uniformly drawn coalition
//!   whose size is uniform in `1..=min(5, n)`, coefficients uniform in `[-1, 1)` (shapiq's
//!   `SOUM(n, n_basis_games=30, min_interaction_size=1, max_interaction_size=5)`, its
//!   first benchmark configuration);
//! - [`GameSpec::glove`]: `n / 2` left-glove holders, `n - n / 2` right;
//! - [`GameSpec::airport`]: costs `1, 2, ..., n`;
//! - [`GameSpec::random_weighted_voting`]: integer weights uniform in `1..=10`, quota half
//!   the total weight.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::games::{Airport, Glove, Soum, WeightedVoting};
use super::{Coalition, Game, IncrementalGame, ValuationError};

/// The most players a [`GameSpec`] may have (coalitions are `u64` masks).
pub const MAX_SPEC_PLAYERS: usize = 64;

/// Unanimity games in [`GameSpec::random_soum`] (shapiq's `n_basis_games = 30`).
pub const SOUM_BASIS_GAMES: usize = 30;

/// Largest carrier in [`GameSpec::random_soum`] (shapiq's `max_interaction_size = 5`).
pub const SOUM_MAX_INTERACTION: usize = 5;

/// A cooperative game as data, tagged by `type` in snake case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GameSpec {
    /// Sum of unanimity games `sum_k c_k u_{T_k}`.
    Soum {
        /// Number of players.
        n_players: usize,
        /// The carriers `T_k` (player indices `< n_players`).
        unanimity_coalitions: Vec<Vec<usize>>,
        /// The coefficients `c_k`, one per carrier.
        coefficients: Vec<f64>,
    },
    /// Weighted voting `[quota; w_1, ..., w_n]`: a coalition wins iff its weight `>= quota`.
    WeightedVoting {
        /// Number of players.
        n_players: usize,
        /// One non-negative weight per player.
        weights: Vec<f64>,
        /// The winning threshold.
        quota: f64,
    },
    /// Glove game: players `0..left` hold left gloves, the next `right` right gloves.
    Glove {
        /// Left-glove holders.
        left: usize,
        /// Right-glove holders.
        right: usize,
    },
    /// Airport game `v(S) = max_{i in S} c_i`.
    Airport {
        /// One cost per player.
        costs: Vec<f64>,
    },
}

/// A game file: a [`GameSpec`] and, optionally, its exact Shapley values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GameFile {
    /// The game.
    #[serde(flatten)]
    pub game: GameSpec,
    /// The exact Shapley values, one per player, if the file provides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_shapley_values: Option<Vec<f64>>,
}

/// A built [`GameSpec`]: one of the closed-form games behind one type.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecGame {
    /// A SOUM game.
    Soum(Soum),
    /// A weighted voting game.
    WeightedVoting(WeightedVoting),
    /// A glove game.
    Glove(Glove),
    /// An airport game.
    Airport(Airport),
}

/// An invalid-game error naming the field.
fn invalid(reason: String) -> ValuationError {
    ValuationError::InvalidGame { reason }
}

/// Checks `1 <= n <= MAX_SPEC_PLAYERS` for the field `field`.
fn check_players(field: &str, n: usize) -> Result<(), ValuationError> {
    if n == 0 || n > MAX_SPEC_PLAYERS {
        return Err(invalid(format!(
            "{field} must be between 1 and {MAX_SPEC_PLAYERS}, got {n}"
        )));
    }
    Ok(())
}

/// Checks `values.len() == n` and that every value is finite.
fn check_reals(field: &str, values: &[f64], n: usize) -> Result<(), ValuationError> {
    if values.len() != n {
        return Err(invalid(format!(
            "{field} has {} entries but the game has {n} players",
            values.len()
        )));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(invalid(format!("{field}[{i}] is {v}; it must be finite")));
    }
    Ok(())
}

impl GameSpec {
    /// Number of players.
    pub fn n_players(&self) -> usize {
        match self {
            GameSpec::Soum { n_players, .. } | GameSpec::WeightedVoting { n_players, .. } => {
                *n_players
            }
            GameSpec::Glove { left, right } => left.saturating_add(*right),
            GameSpec::Airport { costs } => costs.len(),
        }
    }

    /// The `type` tag: `soum`, `weighted_voting`, `glove` or `airport`.
    pub fn kind(&self) -> &'static str {
        match self {
            GameSpec::Soum { .. } => "soum",
            GameSpec::WeightedVoting { .. } => "weighted_voting",
            GameSpec::Glove { .. } => "glove",
            GameSpec::Airport { .. } => "airport",
        }
    }

    /// Checks sizes, player indices and finiteness; errors name the offending field.
    pub fn validate(&self) -> Result<(), ValuationError> {
        match self {
            GameSpec::Soum {
                n_players,
                unanimity_coalitions,
                coefficients,
            } => {
                check_players("n_players", *n_players)?;
                if coefficients.len() != unanimity_coalitions.len() {
                    return Err(invalid(format!(
                        "coefficients has {} entries but unanimity_coalitions has {}; they \
                         must match",
                        coefficients.len(),
                        unanimity_coalitions.len()
                    )));
                }
                check_reals("coefficients", coefficients, coefficients.len())?;
                for (k, members) in unanimity_coalitions.iter().enumerate() {
                    let mut seen = 0u64;
                    for &i in members {
                        if i >= *n_players {
                            return Err(invalid(format!(
                                "unanimity_coalitions[{k}] names player {i} but n_players is \
                                 {n_players}"
                            )));
                        }
                        if seen >> i & 1 == 1 {
                            return Err(invalid(format!(
                                "unanimity_coalitions[{k}] names player {i} twice"
                            )));
                        }
                        seen |= 1 << i;
                    }
                }
                Ok(())
            }
            GameSpec::WeightedVoting {
                n_players,
                weights,
                quota,
            } => {
                check_players("n_players", *n_players)?;
                check_reals("weights", weights, *n_players)?;
                if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| **w < 0.0) {
                    return Err(invalid(format!(
                        "weights[{i}] is {w}; weights must be non-negative"
                    )));
                }
                if !quota.is_finite() {
                    return Err(invalid(format!("quota is {quota}; it must be finite")));
                }
                Ok(())
            }
            GameSpec::Glove { left, right } => {
                check_players("left + right", left.saturating_add(*right))
            }
            GameSpec::Airport { costs } => {
                check_players("costs (one per player)", costs.len())?;
                check_reals("costs", costs, costs.len())
            }
        }
    }

    /// Validates and builds the game.
    pub fn build(&self) -> Result<SpecGame, ValuationError> {
        self.validate()?;
        Ok(match self {
            GameSpec::Soum {
                n_players,
                unanimity_coalitions,
                coefficients,
            } => SpecGame::Soum(Soum {
                n: *n_players,
                terms: unanimity_coalitions
                    .iter()
                    .cloned()
                    .zip(coefficients.iter().copied())
                    .collect(),
            }),
            GameSpec::WeightedVoting { weights, quota, .. } => {
                SpecGame::WeightedVoting(WeightedVoting {
                    weights: weights.clone(),
                    quota: *quota,
                })
            }
            GameSpec::Glove { left, right } => SpecGame::Glove(Glove {
                left: *left,
                right: *right,
            }),
            GameSpec::Airport { costs } => SpecGame::Airport(Airport {
                costs: costs.clone(),
            }),
        })
    }

    /// A seeded random SOUM on `n` players: [`SOUM_BASIS_GAMES`] unanimity games whose
    /// carrier size is uniform in `1..=min(SOUM_MAX_INTERACTION, n)`, members uniform
    /// without replacement, coefficients uniform in `[-1, 1)` (shapiq's SOUM benchmark).
    pub fn random_soum(n: usize, seed: u64) -> GameSpec {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let max_size = SOUM_MAX_INTERACTION.min(n).max(1);
        let mut unanimity_coalitions = Vec::with_capacity(SOUM_BASIS_GAMES);
        let mut coefficients = Vec::with_capacity(SOUM_BASIS_GAMES);
        for _ in 0..SOUM_BASIS_GAMES {
            coefficients.push(rng.random::<f64>() * 2.0 - 1.0);
            let size = rng.random_range(1..=max_size).min(n);
            let mut members = sample(&mut rng, n, size).into_vec();
            members.sort_unstable();
            unanimity_coalitions.push(members);
        }
        GameSpec::Soum {
            n_players: n,
            unanimity_coalitions,
            coefficients,
        }
    }

    /// The glove game with `n / 2` left and `n - n / 2` right gloves.
    pub fn glove(n: usize) -> GameSpec {
        GameSpec::Glove {
            left: n / 2,
            right: n - n / 2,
        }
    }

    /// The airport game with costs `1, 2, ..., n`.
    pub fn airport(n: usize) -> GameSpec {
        GameSpec::Airport {
            costs: (1..=n).map(|c| c as f64).collect(),
        }
    }

    /// A seeded weighted voting game: integer weights uniform in `1..=10`, quota half the
    /// total weight.
    pub fn random_weighted_voting(n: usize, seed: u64) -> GameSpec {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let weights: Vec<f64> = (0..n).map(|_| rng.random_range(1..=10u32) as f64).collect();
        let quota = weights.iter().sum::<f64>() / 2.0;
        GameSpec::WeightedVoting {
            n_players: n,
            weights,
            quota,
        }
    }
}

impl GameFile {
    /// Validates the game and the optional exact values (one finite value per player).
    pub fn validate(&self) -> Result<(), ValuationError> {
        self.game.validate()?;
        if let Some(values) = &self.exact_shapley_values {
            check_reals("exact_shapley_values", values, self.game.n_players())?;
        }
        Ok(())
    }
}

impl SpecGame {
    /// The Shapley values in closed form where a formula exists (SOUM, airport).
    pub fn closed_form_shapley(&self) -> Option<Vec<f64>> {
        match self {
            SpecGame::Soum(g) => Some(g.shapley()),
            SpecGame::Airport(g) => Some(g.shapley()),
            SpecGame::WeightedVoting(_) | SpecGame::Glove(_) => None,
        }
    }
}

impl Game for SpecGame {
    fn n_players(&self) -> usize {
        match self {
            SpecGame::Soum(g) => g.n_players(),
            SpecGame::WeightedVoting(g) => g.n_players(),
            SpecGame::Glove(g) => g.n_players(),
            SpecGame::Airport(g) => g.n_players(),
        }
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        match self {
            SpecGame::Soum(g) => g.value(coalition),
            SpecGame::WeightedVoting(g) => g.value(coalition),
            SpecGame::Glove(g) => g.value(coalition),
            SpecGame::Airport(g) => g.value(coalition),
        }
    }
}

/// A game given by its full utility table (`table[mask] = v(S)`): each evaluation is one
/// load, so timing an estimator on it measures the estimator, not the utility. It is
/// incremental on a `u64` mask. A coalition outside the table evaluates to NaN, which
/// [`Metered`](super::Metered) rejects.
#[derive(Clone, Debug, PartialEq)]
pub struct TabulatedGame {
    n: usize,
    table: Vec<f64>,
    current: usize,
}

impl TabulatedGame {
    /// The table of an `n`-player game; `table.len()` must be `2^n` (`1 <= n <= 25`).
    pub fn new(n: usize, table: Vec<f64>) -> Result<Self, ValuationError> {
        if n == 0 {
            return Err(ValuationError::NoPlayers);
        }
        if n > super::MAX_EXACT_PLAYERS || table.len() != 1usize << n {
            return Err(invalid(format!(
                "utility table has {} entries, expected 2^{n} (at most 2^{})",
                table.len(),
                super::MAX_EXACT_PLAYERS
            )));
        }
        Ok(Self {
            n,
            table,
            current: 0,
        })
    }

    /// Tabulates `game` (evaluates all `2^n` coalitions).
    pub fn from_game<G: Game>(game: &mut G) -> Result<Self, ValuationError> {
        let table = super::utility_table_naive(game)?;
        Self::new(game.n_players(), table)
    }

    /// The utility table, indexed by coalition mask.
    pub fn table(&self) -> &[f64] {
        &self.table
    }
}

impl Game for TabulatedGame {
    fn n_players(&self) -> usize {
        self.n
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        coalition
            .mask()
            .and_then(|m| self.table.get(m as usize))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

impl IncrementalGame for TabulatedGame {
    fn reset(&mut self) {
        self.current = 0;
    }
    fn add(&mut self, player: usize) {
        self.current |= 1 << player;
    }
    fn remove(&mut self, player: usize) {
        self.current &= !(1 << player);
    }
    fn current_value(&mut self) -> f64 {
        self.table.get(self.current).copied().unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::{Tracked, exact_shapley, utility_table_gray};

    fn parse(json: &str) -> Result<GameFile, String> {
        let file: GameFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        file.validate().map_err(|e| e.to_string())?;
        Ok(file)
    }

    fn exact(game: SpecGame) -> Vec<f64> {
        exact_shapley(&mut Tracked::new(game)).unwrap().values
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn example_files_parse_build_and_match_their_values() {
        let examples = [
            r#"{"type": "soum", "n_players": 4,
                "unanimity_coalitions": [[0, 1], [1, 2, 3], [3]],
                "coefficients": [2.0, -3.0, 0.5],
                "exact_shapley_values": [1.0, 0.0, -1.0, -0.5]}"#,
            r#"{"type": "weighted_voting", "n_players": 3, "weights": [50, 49, 1], "quota": 51,
                "exact_shapley_values": [0.6666666666666666, 0.16666666666666666,
                                         0.16666666666666666]}"#,
            r#"{"type": "glove", "left": 1, "right": 2,
                "exact_shapley_values": [0.6666666666666666, 0.16666666666666666,
                                         0.16666666666666666]}"#,
            r#"{"type": "airport", "costs": [1, 2, 2, 3],
                "exact_shapley_values": [0.25, 0.5833333333333334, 0.5833333333333334,
                                         1.5833333333333333]}"#,
        ];
        let kinds = ["soum", "weighted_voting", "glove", "airport"];
        for (json, kind) in examples.iter().zip(kinds) {
            let file = parse(json).unwrap();
            assert_eq!(file.game.kind(), kind);
            let want = file.exact_shapley_values.clone().unwrap();
            let game = file.game.build().unwrap();
            if let Some(closed) = game.closed_form_shapley() {
                close(&closed, &want);
            }
            close(&exact(game), &want);
            // Serialising and parsing again gives the same file.
            let again: GameFile =
                serde_json::from_str(&serde_json::to_string(&file).unwrap()).unwrap();
            assert_eq!(again, file);
        }
        let bare = parse(r#"{"type": "glove", "left": 2, "right": 3}"#).unwrap();
        assert_eq!(bare.exact_shapley_values, None);
    }

    #[test]
    fn invalid_files_name_the_field() {
        let cases = [
            (
                r#"{"type": "soum", "n_players": 3, "unanimity_coalitions": [[0, 3]],
                 "coefficients": [1.0]}"#,
                "unanimity_coalitions[0] names player 3",
            ),
            (
                r#"{"type": "soum", "n_players": 3, "unanimity_coalitions": [[1, 1]],
                 "coefficients": [1.0]}"#,
                "twice",
            ),
            (
                r#"{"type": "soum", "n_players": 3, "unanimity_coalitions": [[0], [1]],
                 "coefficients": [1.0]}"#,
                "coefficients has 1 entries",
            ),
            (
                r#"{"type": "soum", "n_players": 0, "unanimity_coalitions": [],
                 "coefficients": []}"#,
                "n_players must be between 1 and 64",
            ),
            (
                r#"{"type": "soum", "n_players": 65, "unanimity_coalitions": [],
                 "coefficients": []}"#,
                "got 65",
            ),
            (
                r#"{"type": "weighted_voting", "n_players": 3, "weights": [1, 2], "quota": 2}"#,
                "weights has 2 entries",
            ),
            (
                r#"{"type": "weighted_voting", "n_players": 2, "weights": [1, -2], "quota": 2}"#,
                "weights[1] is -2",
            ),
            (
                r#"{"type": "weighted_voting", "n_players": 2, "weights": [1, 2]}"#,
                "missing field `quota`",
            ),
            (
                r#"{"type": "glove", "left": 0, "right": 0}"#,
                "left + right",
            ),
            (r#"{"type": "airport", "costs": []}"#, "costs"),
            (
                r#"{"type": "airport", "costs": [1, 2], "exact_shapley_values": [1]}"#,
                "exact_shapley_values has 1 entries",
            ),
            (
                r#"{"type": "poker", "players": 3}"#,
                "unknown variant `poker`",
            ),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn generators_are_seeded_and_shaped_like_shapiq() {
        let a = GameSpec::random_soum(14, 3);
        assert_eq!(a, GameSpec::random_soum(14, 3));
        assert_ne!(a, GameSpec::random_soum(14, 4));
        a.validate().unwrap();
        let GameSpec::Soum {
            unanimity_coalitions,
            coefficients,
            ..
        } = &a
        else {
            panic!("not a soum: {a:?}");
        };
        assert_eq!(unanimity_coalitions.len(), SOUM_BASIS_GAMES);
        assert!(
            unanimity_coalitions
                .iter()
                .all(|t| (1..=SOUM_MAX_INTERACTION).contains(&t.len()))
        );
        assert!(coefficients.iter().all(|c| (-1.0..1.0).contains(c)));
        // Few players: carriers shrink to fit.
        GameSpec::random_soum(2, 0).validate().unwrap();

        assert_eq!(GameSpec::glove(5), GameSpec::Glove { left: 2, right: 3 });
        assert_eq!(
            GameSpec::airport(3),
            GameSpec::Airport {
                costs: vec![1.0, 2.0, 3.0]
            }
        );
        let wv = GameSpec::random_weighted_voting(10, 1);
        wv.validate().unwrap();
        let GameSpec::WeightedVoting { weights, quota, .. } = &wv else {
            panic!("not weighted voting: {wv:?}");
        };
        assert!(
            weights
                .iter()
                .all(|w| (1.0..=10.0).contains(w) && w.fract() == 0.0)
        );
        assert_eq!(*quota, weights.iter().sum::<f64>() / 2.0);
    }

    #[test]
    fn tabulated_game_matches_the_game_both_ways() {
        let mut game = GameSpec::random_soum(8, 5).build().unwrap();
        let mut tab = TabulatedGame::from_game(&mut game).unwrap();
        let naive = crate::valuation::utility_table_naive(&mut game).unwrap();
        assert_eq!(tab.table(), &naive[..]);
        assert_eq!(utility_table_gray(&mut tab.clone()).unwrap(), naive);
        let c = Coalition::from_members(8, &[1, 4, 7]);
        assert_eq!(tab.value(&c), game.value(&c));
        assert!(tab.value(&Coalition::full(9)).is_nan());
        assert!(TabulatedGame::new(3, vec![0.0; 7]).is_err());
        assert_eq!(
            TabulatedGame::new(0, vec![0.0]),
            Err(ValuationError::NoPlayers)
        );
    }
}
