//! Multinomial logistic regression over a flat parameter vector.
//!
//! Layout: `W [classes x features]` row-major, then `b [classes]`; logits `x W^T + b`.
//! The gradient of the mean cross-entropy is `G^T x` for `W` and the column sums of `G`
//! for `b`, with `G = (softmax(z) - onehot(y)) / batch`.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2};

use super::{ModelError, blocks, blocks_mut, column_sums, mat, mat_mut, softmax_ce_grad, sq_norm};

/// Logits `[rows x classes]` for `x` with dimensions `[features, classes]`.
pub(super) fn logits(
    params: &[f32],
    [f, c]: [usize; 2],
    x: ArrayView2<f32>,
) -> Result<Array2<f32>, ModelError> {
    let [w, b] = blocks(params, [c * f, c])?;
    let mut z = x.dot(&mat(w, c, f)?.t());
    z += &ArrayView1::from(b);
    Ok(z)
}

/// Mean cross-entropy of the batch plus `(l2 / 2) ||W||^2`; its gradient goes into `grad`.
pub(super) fn loss_and_grad(
    params: &[f32],
    [f, c]: [usize; 2],
    x: ArrayView2<f32>,
    labels: &[u32],
    l2: f32,
    grad: &mut [f32],
) -> Result<f64, ModelError> {
    let mut g = logits(params, [f, c], x)?;
    let mut loss = softmax_ce_grad(&mut g, labels);
    let [w, _] = blocks(params, [c * f, c])?;
    let w = mat(w, c, f)?;
    let [gw, gb] = blocks_mut(grad, [c * f, c])?;
    let mut gw = mat_mut(gw, c, f)?;
    general_mat_mul(1.0, &g.t(), &x, 0.0, &mut gw);
    if l2 > 0.0 {
        gw.scaled_add(l2, &w);
        loss += 0.5 * f64::from(l2) * sq_norm(&w);
    }
    column_sums(&g, gb);
    Ok(loss)
}
