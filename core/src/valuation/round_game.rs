//! The per-round federated-learning game (ALGORITHMS.md 2.3): GTG-Shapley's
//! reconstruction of coalition sub-models without retraining.
//!
//! In round t, with global model `M_t`, client updates `d_i` and sample counts `m_i`,
//! the model of coalition S is `M_S = M_t + sum_{i in S} (m_i / sum_{j in S} m_j) d_i`
//! and `v(S)` is its score on the server's validation set; `v(empty)` scores `M_t`
//! and `v(N)` the aggregated next model. The incremental form keeps the weighted sum
//! of the current coalition's updates, so a Gray-code or permutation step costs one
//! vector addition plus one evaluation; a batch of coalitions ([`Game::values`]) is
//! spread over `threads` scoped threads, each with its own buffers.

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

/// What every evaluation reads: the round's inputs, shared by all threads.
#[derive(Debug)]
struct Inputs<'a> {
    spec: &'a ModelSpec,
    base: &'a [f32],
    deltas: Vec<&'a [f32]>,
    weights: Vec<f64>,
    data: &'a Dataset,
    utility: Utility,
}

impl Inputs<'_> {
    /// Scores `base + mean of sum` (or `base` alone when `members == 0`), using
    /// `scratch` for the parameters.
    fn score(&self, sum: &WeightedSum, members: usize, scratch: &mut [f32]) -> f64 {
        if members == 0 {
            scratch.copy_from_slice(self.base);
        } else {
            // The total weight is positive whenever `members > 0` (weights are positive).
            let _ = sum.mean_into(scratch);
            for (s, b) in scratch.iter_mut().zip(self.base) {
                *s += *b;
            }
        }
        // Shapes were checked in `RoundGame::new`, so evaluation cannot fail; NaN would
        // be refused loudly by the meter.
        match self.spec.evaluate(scratch, self.data) {
            Ok(m) => match self.utility {
                Utility::Accuracy => m.accuracy,
                Utility::NegLogLoss => -m.loss,
            },
            Err(_) => f64::NAN,
        }
    }

    /// `v(coalition)` from scratch, with caller-owned buffers.
    fn value(&self, coalition: &Coalition, sum: &mut WeightedSum, scratch: &mut [f32]) -> f64 {
        *sum = WeightedSum::new(self.base.len());
        for i in coalition.members() {
            if let (Some(delta), Some(&w)) = (self.deltas.get(i), self.weights.get(i)) {
                // Lengths and weights were validated in `new`: `add` cannot fail.
                let _ = sum.add(delta, w);
            }
        }
        self.score(sum, coalition.len(), scratch)
    }
}

/// The utility game of one horizontal round.
#[derive(Debug)]
pub struct RoundGame<'a> {
    inputs: Inputs<'a>,
    sum: WeightedSum,
    members: usize,
    scratch: Vec<f32>,
    threads: usize,
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
            inputs: Inputs {
                spec,
                base,
                deltas,
                weights,
                data,
                utility,
            },
            sum: WeightedSum::new(d),
            members: 0,
            scratch: vec![0.0; d],
            threads: 1,
        })
    }

    /// Evaluates batches of coalitions on up to `threads` threads (at least 1).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
}

impl Game for RoundGame<'_> {
    fn n_players(&self) -> usize {
        self.inputs.deltas.len()
    }

    fn value(&mut self, coalition: &Coalition) -> f64 {
        let mut sum = WeightedSum::new(0);
        self.inputs.value(coalition, &mut sum, &mut self.scratch)
    }

    fn values(&mut self, coalitions: &[Coalition], out: &mut [f64]) {
        let threads = self.threads.min(coalitions.len());
        if threads <= 1 {
            for (c, slot) in coalitions.iter().zip(out.iter_mut()) {
                *slot = self.value(c);
            }
            return;
        }
        let per_thread = coalitions.len().div_ceil(threads);
        let inputs = &self.inputs;
        std::thread::scope(|scope| {
            for (chunk, slots) in coalitions
                .chunks(per_thread)
                .zip(out.chunks_mut(per_thread))
            {
                scope.spawn(move || {
                    let mut sum = WeightedSum::new(0);
                    let mut scratch = vec![0.0; inputs.base.len()];
                    for (c, slot) in chunk.iter().zip(slots.iter_mut()) {
                        *slot = inputs.value(c, &mut sum, &mut scratch);
                    }
                });
            }
        });
    }
}

impl IncrementalGame for RoundGame<'_> {
    fn reset(&mut self) {
        self.sum = WeightedSum::new(self.inputs.base.len());
        self.members = 0;
    }

    fn add(&mut self, player: usize) {
        let inputs = &self.inputs;
        if let (Some(delta), Some(&w)) = (inputs.deltas.get(player), inputs.weights.get(player)) {
            // Lengths and weights were validated in `new`: `add` cannot fail.
            let _ = self.sum.add(delta, w);
            self.members += 1;
        }
    }

    fn remove(&mut self, player: usize) {
        let inputs = &self.inputs;
        if let (Some(delta), Some(&w)) = (inputs.deltas.get(player), inputs.weights.get(player)) {
            self.sum.remove(delta, w);
            self.members -= 1;
        }
    }

    fn current_value(&mut self) -> f64 {
        self.inputs
            .score(&self.sum, self.members, &mut self.scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin;
    use crate::valuation::{exact_shapley, utility_table_naive};

    fn round_inputs() -> (ModelSpec, Vec<f32>, Vec<Vec<f32>>, Dataset) {
        let data = builtin::iris();
        let spec = ModelSpec::LogisticRegression {
            num_features: 4,
            num_classes: 3,
        };
        let base = vec![0.0; spec.num_params()];
        let deltas = (0..5)
            .map(|k| {
                (0..spec.num_params())
                    .map(|j| (((j * 7 + k * 13) % 11) as f32 - 5.0) * 0.05)
                    .collect()
            })
            .collect();
        (spec, base, deltas, data)
    }

    #[test]
    fn batched_parallel_values_equal_sequential_and_incremental_ones() {
        let (spec, base, deltas, data) = round_inputs();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let weights = vec![3.0, 1.0, 4.0, 1.0, 5.0];
        let mut game = RoundGame::new(
            &spec,
            &base,
            refs.clone(),
            weights.clone(),
            &data,
            Utility::NegLogLoss,
        )
        .expect("game");
        let naive = utility_table_naive(&mut game).expect("table");
        let all: Vec<Coalition> = (0..32u64).map(|m| Coalition::from_mask(5, m)).collect();
        let mut parallel = RoundGame::new(&spec, &base, refs, weights, &data, Utility::NegLogLoss)
            .expect("game")
            .with_threads(3);
        let mut out = vec![0.0; 32];
        parallel.values(&all, &mut out);
        assert_eq!(
            out, naive,
            "parallel batches compute the same utilities bit for bit"
        );
        // Gray-code (incremental) values agree up to f64 summation order.
        let exact = exact_shapley(&mut game).expect("exact");
        let sum: f64 = exact.values.iter().sum();
        assert!((sum - (naive[31] - naive[0])).abs() < 1e-9);
    }

    #[test]
    fn the_empty_coalition_scores_the_global_model() {
        let (spec, base, deltas, data) = round_inputs();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let mut game = RoundGame::new(&spec, &base, refs, vec![1.0; 5], &data, Utility::Accuracy)
            .expect("game");
        let global = spec.evaluate(&base, &data).expect("evaluate").accuracy;
        assert_eq!(game.value(&Coalition::empty(5)), global);
        game.reset();
        assert_eq!(game.current_value(), global);
    }

    #[test]
    fn inconsistent_inputs_are_refused() {
        let (spec, base, deltas, data) = round_inputs();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let short = &base[..3];
        assert!(
            RoundGame::new(
                &spec,
                short,
                refs.clone(),
                vec![1.0; 5],
                &data,
                Utility::Accuracy
            )
            .is_err()
        );
        assert!(
            RoundGame::new(
                &spec,
                &base,
                refs.clone(),
                vec![1.0; 4],
                &data,
                Utility::Accuracy
            )
            .is_err()
        );
        assert!(
            RoundGame::new(&spec, &base, refs, vec![0.0; 5], &data, Utility::Accuracy).is_err()
        );
    }
}
