//! The label holder's arithmetic of one synchronous round or asynchronous step, pure and
//! seeded (no I/O).
//!
//! Round `t`'s mini-batch is drawn from the training ids by a ChaCha8 generator seeded
//! with the federation's seed on stream `t`; party `m`'s asynchronous step `k` on stream
//! `(m + 1) 2^32 + k` (step numbers stay below 2^32, so no two streams meet). A restarted
//! server therefore redraws the same batches. Closing the round combines `z = sum_m h^m + b` (a party that missed the
//! deadline contributes zeros), asks the core [`Objective`] for the mean loss and the
//! per-sample gradients `g_i = dl/dz_i` (the same for every party, since `dz/dh^m` is the
//! identity), and moves the bias by `-lr * mean_i g_i`, exactly as the reference loop
//! `fedval_core::vertical::train_sync` does.

use fedval_core::vertical::{Objective, VerticalError, VerticalMetrics, combine};
use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;

/// Round `round`'s mini-batch: `min(batch_size, train_ids.len())` distinct training ids,
/// ascending, from `ChaCha8Rng::seed_from_u64(seed)` on stream `round`.
pub fn draw_batch(seed: u64, round: u64, train_ids: &[u32], batch_size: usize) -> Vec<u32> {
    draw_on_stream(seed, round, train_ids, batch_size)
}

/// Party `party`'s (enrollment index) asynchronous step `step`: drawn like
/// [`draw_batch`] on stream `(party + 1) 2^32 + step`.
pub fn draw_step_batch(
    seed: u64,
    party: usize,
    step: u64,
    train_ids: &[u32],
    batch_size: usize,
) -> Vec<u32> {
    let stream = ((party as u64).wrapping_add(1) << 32).wrapping_add(step);
    draw_on_stream(seed, stream, train_ids, batch_size)
}

fn draw_on_stream(seed: u64, stream: u64, train_ids: &[u32], batch_size: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let k = batch_size.min(train_ids.len());
    let mut batch: Vec<u32> = index::sample(&mut rng, train_ids.len(), k)
        .into_iter()
        .filter_map(|i| train_ids.get(i).copied())
        .collect();
    batch.sort_unstable();
    batch
}

/// What closing a training round produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedBatch {
    /// Mean loss of the batch, before the update.
    pub loss: f64,
    /// `[rows x C]` per-sample gradients `dl/dz_i` (not divided by the batch size), in
    /// the batch's order.
    pub gradients: Array2<f32>,
    /// The bias after `b <- b - lr * mean_i g_i`.
    pub bias: Vec<f32>,
}

/// `z = sum_m h^m + bias` over the rows of `ids`; `embeddings[m]` is party `m`'s
/// row-major `[ids x C]` block, `None` (zeros) for a party that sent nothing.
fn combined(
    bias: &[f32],
    ids: &[u32],
    embeddings: &[Option<&[f32]>],
) -> Result<Array2<f32>, VerticalError> {
    let shape = (ids.len(), bias.len());
    let blocks = embeddings
        .iter()
        .map(|e| match e {
            Some(values) => Array2::from_shape_vec(shape, values.to_vec()).map_err(|_| {
                VerticalError::ShapeMismatch {
                    what: "party embedding",
                    rows: values.len() / bias.len().max(1),
                    cols: bias.len(),
                    expected_rows: ids.len(),
                    expected_cols: bias.len(),
                }
            }),
            None => Ok(Array2::zeros(shape)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    combine(&blocks, bias)
}

/// Closes a training round over `batch` with the parties' `embeddings` (module docs).
///
/// Fails on no parties, an embedding block of the wrong size, non-finite sums, an id out
/// of the objective's range, or a bias that becomes non-finite.
pub fn close_batch(
    objective: &Objective,
    bias: &[f32],
    batch: &[u32],
    embeddings: &[Option<&[f32]>],
    learning_rate: f32,
    round: u64,
) -> Result<ClosedBatch, VerticalError> {
    let z = combined(bias, batch, embeddings)?;
    let rows: Vec<usize> = batch.iter().map(|&i| i as usize).collect();
    let (loss, gradients) = objective.loss_and_grad(z.view(), &rows)?;
    let mean = gradients
        .mean_axis(Axis(0))
        .ok_or(VerticalError::EmptyBatch { what: "batch" })?;
    let bias: Vec<f32> = bias
        .iter()
        .zip(mean.iter())
        .map(|(b, g)| b - learning_rate * g)
        .collect();
    if bias.iter().any(|b| !b.is_finite()) {
        return Err(VerticalError::Diverged {
            step: usize::try_from(round).unwrap_or(usize::MAX),
        });
    }
    Ok(ClosedBatch {
        loss,
        gradients,
        bias,
    })
}

/// Scores the evaluation pass: `z = sum_m h^m + bias` over `ids` (parties that sent
/// nothing count as zeros) against the objective; fails like [`close_batch`].
pub fn evaluate_ids(
    objective: &Objective,
    bias: &[f32],
    ids: &[u32],
    embeddings: &[Option<&[f32]>],
) -> Result<VerticalMetrics, VerticalError> {
    let z = combined(bias, ids, embeddings)?;
    let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
    fedval_core::vertical::score(objective, z.view(), &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Regression on 3 samples, 2 parties: every number below is computed by hand.
    #[test]
    fn a_regression_round_matches_hand_computation() {
        let objective = Objective::new_regression(vec![1.0, 2.0, -1.0, 0.5]).expect("valid");
        let batch = [0u32, 2, 3];
        // Party A and B embeddings of samples 0, 2, 3 (one output).
        let a = [0.5f32, 1.0, 0.0];
        let b = [0.25f32, -1.0, 1.0];
        let bias = [0.25f32];
        let closed =
            close_batch(&objective, &bias, &batch, &[Some(&a), Some(&b)], 0.5, 1).expect("ok");
        // z = a + b + 0.25 = [1.0, 0.25, 1.25]; targets [1, -1, 0.5]; g = z - y.
        assert_eq!(closed.gradients, array![[0.0f32], [1.25], [0.75]]);
        // loss = mean(0.5 g^2) = (0 + 0.78125 + 0.28125) / 3.
        assert!(
            (closed.loss - 1.0625 / 3.0).abs() < 1e-12,
            "{}",
            closed.loss
        );
        // bias = 0.25 - 0.5 * mean(g) = 0.25 - 0.5 * (2 / 3).
        assert!((closed.bias[0] - (0.25 - 1.0 / 3.0)).abs() < 1e-6);

        // A straggler contributes zeros: z = a + 0.25 = [0.75, 1.25, 0.25].
        let closed = close_batch(&objective, &bias, &batch, &[Some(&a), None], 0.5, 1).expect("ok");
        assert_eq!(closed.gradients, array![[-0.25f32], [2.25], [-0.25]]);
    }

    #[test]
    fn a_classification_round_returns_softmax_minus_onehot() {
        let objective = Objective::new_classification(vec![0, 1, 1], 2).expect("valid");
        let batch = [0u32, 1, 2];
        // z rows: [0, 0], [ln 3, 0], [0, 0]: softmax [1/2, 1/2], [3/4, 1/4], [1/2, 1/2].
        let a = [0.0f32, 0.0, 3f32.ln(), 0.0, 0.0, 0.0];
        let closed =
            close_batch(&objective, &[0.0, 0.0], &batch, &[Some(&a), None], 1.0, 1).expect("ok");
        let expected = array![[-0.5f32, 0.5], [0.75, -0.75], [0.5, -0.5]];
        assert!(
            closed
                .gradients
                .iter()
                .zip(expected.iter())
                .all(|(g, e)| (g - e).abs() < 1e-6),
            "{:?}",
            closed.gradients
        );
        let loss = (2f64.ln() + 4f64.ln() + 2f64.ln()) / 3.0;
        assert!((closed.loss - loss).abs() < 1e-6);
        // mean g = [0.25, -0.25]; lr 1.
        assert!((closed.bias[0] + 0.25).abs() < 1e-6 && (closed.bias[1] - 0.25).abs() < 1e-6);
        let metrics = evaluate_ids(&objective, &[0.0, 0.0], &batch, &[Some(&a)]).expect("ok");
        // Ties go to class 0: samples 0 (label 0) and 1 (argmax 0, label 1) -> 1 of 3.
        assert_eq!(metrics.accuracy, Some(1.0 / 3.0));
    }

    #[test]
    fn wrong_sizes_and_divergence_are_errors() {
        let objective = Objective::new_regression(vec![1.0, 2.0]).expect("valid");
        let err = close_batch(&objective, &[0.0], &[0, 1], &[Some(&[1.0])], 0.1, 1)
            .expect_err("one row for two");
        assert!(matches!(err, VerticalError::ShapeMismatch { .. }), "{err}");
        let err = close_batch(&objective, &[0.0], &[0, 1], &[Some(&[3e38, 3e38])], 1e30, 4)
            .expect_err("bias overflows");
        assert!(matches!(err, VerticalError::Diverged { step: 4 }), "{err}");
    }

    #[test]
    fn step_batches_differ_by_party_and_step_and_never_meet_round_batches() {
        let train: Vec<u32> = (0..200).collect();
        let b = draw_step_batch(7, 0, 1, &train, 16);
        assert_eq!(b, draw_step_batch(7, 0, 1, &train, 16));
        assert_ne!(b, draw_step_batch(7, 1, 1, &train, 16));
        assert_ne!(b, draw_step_batch(7, 0, 2, &train, 16));
        assert_ne!(b, draw_batch(7, 1, &train, 16));
        assert_eq!(
            draw_step_batch(7, 2, 5, &train, 16),
            draw_batch(7, (3 << 32) + 5, &train, 16)
        );
    }

    #[test]
    fn batches_are_reproducible_and_drawn_from_the_training_ids() {
        let train: Vec<u32> = (0..50).filter(|i| i % 5 != 0).collect();
        let b1 = draw_batch(7, 3, &train, 8);
        assert_eq!(b1, draw_batch(7, 3, &train, 8));
        assert_ne!(b1, draw_batch(7, 4, &train, 8));
        assert_eq!(b1.len(), 8);
        assert!(b1.windows(2).all(|w| w[0] < w[1]));
        assert!(b1.iter().all(|i| train.contains(i)));
        assert_eq!(draw_batch(7, 1, &train, 1000).len(), train.len());
    }
}
