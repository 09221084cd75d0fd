//! The per-round federated-learning game (ALGORITHMS.md 2.3): GTG-Shapley's
//! reconstruction of coalition sub-models without retraining.
//!
//! In round t, with global model `M_t`, client updates `d_i` and sample counts `m_i`,
//! the model of coalition S is `M_S = M_t + sum_{i in S} (m_i / sum_{j in S} m_j) d_i`
//! and `v(S)` is its score on the server's validation set; `v(empty)` scores `M_t`
//! and `v(N)` the aggregated next model. The incremental form keeps the weighted sum
//! of the current coalition's updates, so a Gray-code or permutation step costs one
//! vector addition plus one evaluation.

use crate::aggregate::WeightedSum;
use crate::data::Dataset;
use crate::model::ModelSpec;

use super::{Coalition, Game, IncrementalGame, ValuationError};

/// Which validation score is the utility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Utility {
    /// Fraction of validation samples classified correctly.
    Accuracy,
    /// Minus the mean cross-entropy (higher is better, like accuracy).
    NegLogLoss,
}

/// The utility game of one horizontal round.
#[derive(Debug)]
pub struct RoundGame<'a> {
    spec: &'a ModelSpec,
    base: &'a [f32],
    deltas: Vec<&'a [f32]>,
    weights: Vec<f64>,
    data: &'a Dataset,
    utility: Utility,
    sum: WeightedSum,
    members: usize,
    scratch: Vec<f32>,
}

impl<'a> RoundGame<'a> {
    /// The game of a round whose global model is `base` and whose participants sent
    /// `deltas` computed on `weights` samples each, scored on `data`.
    pub fn new(
        spec: &'a ModelSpec,
        base: &'a [f32],
        deltas: Vec<&'a [f32]>,
        weights: Vec<f64>,
        data: &'a Dataset,
        utility: Utility,
    ) -> Result<Self, ValuationError> {
        let d = spec.num_params();
        let invalid = |reason: String| ValuationError::InvalidGame { reason };
        if base.len() != d {
            return Err(invalid(format!(
                "global model has {} parameters, the model spec {d}",
                base.len()
            )));
        }
        if deltas.len() != weights.len() {
            return Err(invalid(format!(
                "{} updates but {} weights",
                deltas.len(),
                weights.len()
            )));
        }
        if let Some((i, delta)) = deltas.iter().enumerate().find(|(_, u)| u.len() != d) {
            return Err(invalid(format!(
                "update {i} has {} parameters, expected {d}",
                delta.len()
            )));
        }
        if let Some((i, w)) = weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && **w > 0.0))
        {
            return Err(invalid(format!(
                "weight {i} is {w}; weights must be positive and finite"
            )));
        }
        spec.evaluate(base, data)
            .map_err(|e| invalid(format!("validation set does not fit the model: {e}")))?;
        Ok(RoundGame {
            spec,
            base,
            deltas,
            weights,
            data,
            utility,
            sum: WeightedSum::new(d),
            members: 0,
            scratch: vec![0.0; d],
        })
    }

    /// Scores `base + mean of the accumulated updates` (or `base` alone when empty).
    fn score(&mut self, sum: &WeightedSum, members: usize) -> f64 {
        if members == 0 {
            self.scratch.copy_from_slice(self.base);
        } else {
            // The total weight is positive whenever `members > 0` (weights are positive).
            let _ = sum.mean_into(&mut self.scratch);
            for (s, b) in self.scratch.iter_mut().zip(self.base) {
                *s += *b;
            }
        }
        // Shapes were checked in `new`, so evaluation cannot fail; NaN marks a bug loudly.
        match self.spec.evaluate(&self.scratch, self.data) {
            Ok(m) => match self.utility {
                Utility::Accuracy => m.accuracy,
                Utility::NegLogLoss => -m.loss,
            },
            Err(_) => f64::NAN,
        }
    }
}

impl Game for RoundGame<'_> {
    fn n_players(&self) -> usize {
        self.deltas.len()
    }

    fn value(&mut self, coalition: &Coalition) -> f64 {
        let mut sum = WeightedSum::new(self.base.len());
        for i in coalition.members() {
            if let (Some(delta), Some(&w)) = (self.deltas.get(i), self.weights.get(i)) {
                // Lengths and weights were validated in `new`: `add` cannot fail.
                let _ = sum.add(delta, w);
            }
        }
        self.score(&sum, coalition.len())
    }
}

impl IncrementalGame for RoundGame<'_> {
    fn reset(&mut self) {
        self.sum = WeightedSum::new(self.base.len());
        self.members = 0;
    }

    fn add(&mut self, player: usize) {
        if let (Some(delta), Some(&w)) = (self.deltas.get(player), self.weights.get(player)) {
            // Lengths and weights were validated in `new`: `add` cannot fail.
            let _ = self.sum.add(delta, w);
            self.members += 1;
        }
    }

    fn remove(&mut self, player: usize) {
        if let (Some(delta), Some(&w)) = (self.deltas.get(player), self.weights.get(player)) {
            self.sum.remove(delta, w);
            self.members -= 1;
        }
    }

    fn current_value(&mut self) -> f64 {
        let sum = std::mem::replace(&mut self.sum, WeightedSum::new(0));
        let v = self.score(&sum, self.members);
        self.sum = sum;
        v
    }
}
