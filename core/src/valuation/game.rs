//! Cooperative games (the problem) and the meter every estimator evaluates them through.
//!
//! - [`Game`]: a utility `v(S)` over coalitions.
//! - [`IncrementalGame`]: a game whose *current* coalition changes one player at a time,
//!   so a federated-learning game can update its sub-model in `O(d)` per step instead of
//!   rebuilding it in `O(|S| d)` (Gray-code enumeration, permutation walks).
//!   [`Tracked`] turns any [`Game`] into one.
//! - [`Metered`]: wraps a game, memoises `v` by coalition, counts the evaluations of the
//!   inner game and refuses, with [`ValuationError::BudgetExhausted`], to evaluate
//!   beyond a hard budget. Estimators only ever see a `Metered` game, so none can
//!   overspend, and the count they report is the meter's, not their own bookkeeping.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::{Coalition, Method, ValuationError};

/// A cooperative game: `n` players and a utility for every coalition.
///
/// `value` takes `&mut self` so a game may keep scratch buffers or caches.
pub trait Game {
    /// The number of players `n`; players are `0..n`.
    fn n_players(&self) -> usize;
    /// The utility `v(S)` of a coalition of this game's `n` players.
    fn value(&mut self, coalition: &Coalition) -> f64;

    /// The utilities of several coalitions, written to `out` (same length). The default
    /// evaluates them one after the other; a game whose evaluations are expensive (a
    /// federated round game) overrides it to spread them over threads.
    fn values(&mut self, coalitions: &[Coalition], out: &mut [f64]) {
        for (coalition, slot) in coalitions.iter().zip(out.iter_mut()) {
            *slot = self.value(coalition);
        }
    }
}

/// A game evaluated at a current coalition that changes one player at a time.
///
/// After [`reset`](Self::reset) the current coalition is empty. Implementations may
/// assume `add` is only called for absent players and `remove` only for present ones
/// ([`Metered`] guarantees it).
pub trait IncrementalGame: Game {
    /// Makes the current coalition empty.
    fn reset(&mut self);
    /// Adds `player` to the current coalition.
    fn add(&mut self, player: usize);
    /// Removes `player` from the current coalition.
    fn remove(&mut self, player: usize);
    /// The utility of the current coalition.
    fn current_value(&mut self) -> f64;
}

impl<G: Game + ?Sized> Game for &mut G {
    fn n_players(&self) -> usize {
        (**self).n_players()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        (**self).value(coalition)
    }
    fn values(&mut self, coalitions: &[Coalition], out: &mut [f64]) {
        (**self).values(coalitions, out)
    }
}

impl<G: IncrementalGame + ?Sized> IncrementalGame for &mut G {
    fn reset(&mut self) {
        (**self).reset()
    }
    fn add(&mut self, player: usize) {
        (**self).add(player)
    }
    fn remove(&mut self, player: usize) {
        (**self).remove(player)
    }
    fn current_value(&mut self) -> f64 {
        (**self).current_value()
    }
}

/// Adapter making any [`Game`] incremental by tracking the current [`Coalition`]
/// (each step is a bit flip; `current_value` calls [`Game::value`]).
#[derive(Clone, Debug)]
pub struct Tracked<G> {
    game: G,
    current: Coalition,
}

impl<G: Game> Tracked<G> {
    /// Wraps `game`, starting from the empty coalition.
    pub fn new(game: G) -> Self {
        let current = Coalition::empty(game.n_players());
        Self { game, current }
    }

    /// The wrapped game.
    pub fn inner(&self) -> &G {
        &self.game
    }

    /// Unwraps the game.
    pub fn into_inner(self) -> G {
        self.game
    }
}

impl<G: Game> Game for Tracked<G> {
    fn n_players(&self) -> usize {
        self.game.n_players()
    }
    fn value(&mut self, coalition: &Coalition) -> f64 {
        self.game.value(coalition)
    }
    fn values(&mut self, coalitions: &[Coalition], out: &mut [f64]) {
        self.game.values(coalitions, out)
    }
}

impl<G: Game> IncrementalGame for Tracked<G> {
    fn reset(&mut self) {
        self.current.clear();
    }
    fn add(&mut self, player: usize) {
        self.current.insert(player);
    }
    fn remove(&mut self, player: usize) {
        self.current.remove(player);
    }
    fn current_value(&mut self) -> f64 {
        self.game.value(&self.current)
    }
}

/// The memo's hasher: coalition keys are a few machine words chosen by the estimator,
/// not by an adversary, so a multiply-rotate hash (as in rustc's FxHash) replaces
/// SipHash, which dominated the cost of a memoised lookup.
#[derive(Clone, Copy, Debug, Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_isize(&mut self, x: isize) {
        self.write_u64(x as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hash builder of the memo.
type MemoHash = BuildHasherDefault<FastHasher>;

/// A game behind a meter: memoised values, an evaluation count and a hard budget.
///
/// Two ways to evaluate:
/// - [`value`](Self::value): memoised by coalition; only the first evaluation of a
///   coalition is charged.
/// - the incremental path ([`reset`](Self::reset), [`add`](Self::add),
///   [`remove`](Self::remove), [`current_value`](Self::current_value)): not memoised,
///   every `current_value` is charged; for permutation walks and Gray-code sweeps where
///   the caller already knows it never repeats a coalition.
///
/// Either way an evaluation that would exceed the budget is refused with
/// [`ValuationError::BudgetExhausted`] before the inner game is called, and every
/// utility must be finite.
#[derive(Debug)]
pub struct Metered<G> {
    game: G,
    n: usize,
    budget: Option<u64>,
    evaluations: u64,
    cache: HashMap<Coalition, f64, MemoHash>,
    current: Coalition,
}

impl<G: Game> Metered<G> {
    /// Wraps `game`; `budget` caps the number of inner evaluations (`None`: unbounded).
    pub fn new(game: G, budget: Option<u64>) -> Self {
        let n = game.n_players();
        Self {
            game,
            n,
            budget,
            evaluations: 0,
            cache: HashMap::default(),
            current: Coalition::empty(n),
        }
    }

    /// The number of players of the wrapped game.
    pub fn n_players(&self) -> usize {
        self.n
    }

    /// The memoised utility of `coalition`; charges the budget only on a cache miss.
    pub fn value(&mut self, coalition: &Coalition) -> Result<f64, ValuationError> {
        if let Some(&v) = self.cache.get(coalition) {
            return Ok(v);
        }
        if coalition.n_players() != self.n {
            return Err(ValuationError::PlayerCountMismatch {
                expected: self.n,
                got: coalition.n_players(),
            });
        }
        self.charge()?;
        let v = self.game.value(coalition);
        let v = self.checked(v)?;
        self.cache.insert(coalition.clone(), v);
        Ok(v)
    }

    /// The memoised utilities of a batch of coalitions, in order. The distinct coalitions
    /// not yet cached are evaluated together through [`Game::values`] (in parallel when
    /// the game supports it) and each is charged once. All or nothing: if the budget
    /// cannot pay for every miss, nothing is evaluated and
    /// [`ValuationError::BudgetExhausted`] is returned; size batches with
    /// [`remaining`](Self::remaining).
    pub fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, ValuationError> {
        let mut misses: Vec<Coalition> = Vec::new();
        let mut seen: HashSet<&Coalition, MemoHash> = HashSet::default();
        for c in coalitions {
            if c.n_players() != self.n {
                return Err(ValuationError::PlayerCountMismatch {
                    expected: self.n,
                    got: c.n_players(),
                });
            }
            if !self.cache.contains_key(c) && seen.insert(c) {
                misses.push(c.clone());
            }
        }
        if let Some(budget) = self.budget
            && self.evaluations + misses.len() as u64 > budget
        {
            return Err(ValuationError::BudgetExhausted { budget });
        }
        let mut fresh = vec![0.0; misses.len()];
        self.game.values(&misses, &mut fresh);
        for (c, v) in misses.into_iter().zip(fresh) {
            self.evaluations += 1;
            let v = self.checked(v)?;
            self.cache.insert(c, v);
        }
        coalitions
            .iter()
            .map(|c| {
                self.cache
                    .get(c)
                    .copied()
                    .ok_or_else(|| ValuationError::InvalidGame {
                        reason: "a batch value went missing from the memo".into(),
                    })
            })
            .collect()
    }

    /// Inner evaluations spent so far (distinct coalitions on the memoised path plus
    /// every incremental evaluation).
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// The budget given at construction.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The evaluations a run with its own `budget` may spend here: that budget, capped by
    /// what the meter has left (estimators sharing one meter never overspend it).
    pub fn cap(&self, budget: u64) -> u64 {
        self.remaining().map_or(budget, |left| left.min(budget))
    }

    /// [`cap`](Self::cap), or [`ValuationError::BudgetTooSmall`] for `method` when it is
    /// below the `needed` evaluations of the smallest run (the shared budget check of the
    /// sampling estimators).
    pub fn cap_at_least(
        &self,
        budget: u64,
        needed: u64,
        method: Method,
    ) -> Result<u64, ValuationError> {
        let cap = self.cap(budget);
        if cap < needed {
            return Err(ValuationError::BudgetTooSmall {
                budget: cap,
                needed,
                n: self.n_players(),
                method,
            });
        }
        Ok(cap)
    }

    /// Evaluations left before the budget is exhausted (`None`: unbounded).
    pub fn remaining(&self) -> Option<u64> {
        self.budget.map(|b| b.saturating_sub(self.evaluations))
    }

    /// The wrapped game.
    pub fn inner(&self) -> &G {
        &self.game
    }

    /// Unwraps the game.
    pub fn into_inner(self) -> G {
        self.game
    }

    /// Takes one evaluation from the budget, or refuses.
    fn charge(&mut self) -> Result<(), ValuationError> {
        if let Some(budget) = self.budget
            && self.evaluations >= budget
        {
            return Err(ValuationError::BudgetExhausted { budget });
        }
        self.evaluations += 1;
        Ok(())
    }

    /// Rejects NaN and infinite utilities, which would silently poison every estimate.
    fn checked(&self, value: f64) -> Result<f64, ValuationError> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(ValuationError::NonFiniteUtility {
                value,
                evaluation: self.evaluations,
            })
        }
    }
}

impl<G: IncrementalGame> Metered<G> {
    /// Empties the current coalition (free).
    pub fn reset(&mut self) {
        self.current.clear();
        self.game.reset();
    }

    /// Adds `player` to the current coalition (free; a no-op if already present).
    ///
    /// # Panics
    /// If `player >= n` (a programming error in the estimator).
    pub fn add(&mut self, player: usize) {
        if self.current.insert(player) {
            self.game.add(player);
        }
    }

    /// Removes `player` from the current coalition (free; a no-op if absent).
    pub fn remove(&mut self, player: usize) {
        if self.current.remove(player) {
            self.game.remove(player);
        }
    }

    /// The current coalition.
    pub fn current(&self) -> &Coalition {
        &self.current
    }

    /// The utility of the current coalition; always charged, never memoised.
    pub fn current_value(&mut self) -> Result<f64, ValuationError> {
        self.charge()?;
        let v = self.game.current_value();
        self.checked(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valuation::games::Counting;
    use crate::valuation::games::{Additive, Majority};

    fn additive() -> Counting<Additive> {
        Counting {
            game: Additive {
                values: vec![1.0, 2.0, 4.0],
            },
            calls: 0,
        }
    }

    #[test]
    fn memoised_values_are_charged_once() {
        let mut m = Metered::new(additive(), Some(2));
        let a = Coalition::from_members(3, &[0, 2]);
        let b = Coalition::from_members(3, &[1]);
        assert_eq!(m.value(&a), Ok(5.0));
        assert_eq!(m.value(&a), Ok(5.0));
        assert_eq!(m.value(&b), Ok(2.0));
        assert_eq!((m.evaluations(), m.remaining()), (2, Some(0)));
        assert_eq!(
            m.value(&a),
            Ok(5.0),
            "cached values stay free after exhaustion"
        );
        assert_eq!(
            m.value(&Coalition::full(3)),
            Err(ValuationError::BudgetExhausted { budget: 2 })
        );
        assert_eq!(m.inner().calls, 2);
    }

    #[test]
    fn incremental_path_charges_every_evaluation() {
        let mut m = Metered::new(Tracked::new(additive()), Some(3));
        m.reset();
        assert_eq!(m.current_value(), Ok(0.0));
        m.add(1);
        m.add(1);
        assert_eq!(m.current_value(), Ok(2.0));
        assert_eq!(m.current_value(), Ok(2.0));
        m.remove(1);
        m.remove(1);
        assert_eq!(m.current(), &Coalition::empty(3));
        assert_eq!(
            m.current_value(),
            Err(ValuationError::BudgetExhausted { budget: 3 })
        );
        assert_eq!((m.evaluations(), m.remaining()), (3, Some(0)));
        assert_eq!(m.into_inner().into_inner().calls, 3);
    }

    #[test]
    fn unbounded_meter_reports_no_remaining() {
        let mut m = Metered::new(Majority { n: 3 }, None);
        assert_eq!(m.value(&Coalition::full(3)), Ok(1.0));
        assert_eq!(
            (m.evaluations(), m.remaining(), m.budget()),
            (1, None, None)
        );
    }

    #[test]
    fn coalition_of_another_game_is_rejected() {
        let mut m = Metered::new(Majority { n: 3 }, None);
        let err = m.value(&Coalition::full(4)).unwrap_err();
        assert_eq!(
            err,
            ValuationError::PlayerCountMismatch {
                expected: 3,
                got: 4
            }
        );
        assert_eq!(m.evaluations(), 0);
    }

    #[test]
    fn non_finite_utilities_are_rejected() {
        let mut m = Metered::new(
            Additive {
                values: vec![f64::NAN],
            },
            None,
        );
        let err = m.value(&Coalition::full(1)).unwrap_err();
        assert!(matches!(
            err,
            ValuationError::NonFiniteUtility { evaluation: 1, .. }
        ));
        assert!(err.to_string().contains("finite"), "{err}");
    }

    #[test]
    fn tracked_current_value_equals_value() {
        let mut t = Tracked::new(Additive {
            values: vec![1.0, 10.0, 100.0],
        });
        t.add(0);
        t.add(2);
        assert_eq!(
            t.current_value(),
            t.value(&Coalition::from_members(3, &[0, 2]))
        );
        t.remove(0);
        assert_eq!(t.current_value(), 100.0);
        t.reset();
        assert_eq!(t.current_value(), 0.0);
    }
}
