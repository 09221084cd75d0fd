//! One-hidden-layer perceptron (ReLU hidden layer, softmax output) over a flat parameter
//! vector.
//!
//! Layout: `W1 [hidden x features]`, `b1 [hidden]`, `W2 [classes x hidden]`, `b2 [classes]`,
//! all row-major. Forward: `h = relu(x W1^T + b1)`, logits `h W2^T + b2`; the backward pass
//! is the textbook one, with the ReLU derivative taken as 0 at 0.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView1, ArrayView2, Zip};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ModelError, blocks, blocks_mut, column_sums, mat, mat_mut, softmax_ce_grad, sq_norm};

/// Block lengths `[W1, b1, W2, b2]` for dimensions `[features, hidden, classes]`.
pub(crate) fn lens([f, h, c]: [usize; 3]) -> [usize; 4] {
    [h * f, h, c * h, c]
}

/// Seeded initial parameters: W1 uniform in `±sqrt(6 / features)` (He, for ReLU), W2
/// uniform in `±sqrt(6 / (hidden + classes))` (Glorot), zero biases. Dimensions are valid.
pub(crate) fn init(dims: [usize; 3], seed: u64) -> Vec<f32> {
    let [f, h, c] = dims;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = |n: usize, bound: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
    };
    let [n_w1, n_b1, n_w2, n_b2] = lens(dims);
    let mut params = uniform(n_w1, (6.0 / f as f32).sqrt());
    params.resize(n_w1 + n_b1, 0.0);
    params.extend(uniform(n_w2, (6.0 / (h + c) as f32).sqrt()));
    params.resize(n_w1 + n_b1 + n_w2 + n_b2, 0.0);
    params
}

/// Hidden activations `[rows x hidden]` and logits `[rows x classes]` for `x`.
pub(crate) fn forward(
    params: &[f32],
    dims: [usize; 3],
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, Array2<f32>), ModelError> {
    let [f, h, c] = dims;
    let [w1, b1, w2, b2] = blocks(params, lens(dims))?;
    let mut hidden = x.dot(&mat(w1, h, f)?.t());
    hidden += &ArrayView1::from(b1);
    hidden.mapv_inplace(|v| v.max(0.0));
    let mut z = hidden.dot(&mat(w2, c, h)?.t());
    z += &ArrayView1::from(b2);
    Ok((hidden, z))
}

/// Logits `[rows x classes]` for `x` with dimensions `[features, hidden, classes]`.
pub(super) fn logits(
    params: &[f32],
    dims: [usize; 3],
    x: ArrayView2<f32>,
) -> Result<Array2<f32>, ModelError> {
    forward(params, dims, x).map(|(_, z)| z)
}

/// Mean cross-entropy of the batch plus `(l2 / 2) (||W1||^2 + ||W2||^2)`; its gradient goes
/// into `grad`.
pub(super) fn loss_and_grad(
    params: &[f32],
    dims: [usize; 3],
    x: ArrayView2<f32>,
    labels: &[u32],
    l2: f32,
    grad: &mut [f32],
) -> Result<f64, ModelError> {
    let [f, h, c] = dims;
    let (hidden, mut g) = forward(params, dims, x)?;
    let mut loss = softmax_ce_grad(&mut g, labels);
    backward(params, dims, x, &hidden, &g, grad)?;
    if l2 > 0.0 {
        let [w1, _, w2, _] = blocks(params, lens(dims))?;
        let (w1, w2) = (mat(w1, h, f)?, mat(w2, c, h)?);
        let [gw1, _, gw2, _] = blocks_mut(grad, lens(dims))?;
        mat_mut(gw1, h, f)?.scaled_add(l2, &w1);
        mat_mut(gw2, c, h)?.scaled_add(l2, &w2);
        loss += 0.5 * f64::from(l2) * (sq_norm(&w1) + sq_norm(&w2));
    }
    Ok(loss)
}

/// Backpropagates `g`, the gradient of a loss with respect to the outputs `[rows x
/// classes]` of the forward pass that produced `hidden` from `x`, into `grad` (all four
/// blocks overwritten; no L2 term). Shared with the vertical party models, whose upstream
/// gradient comes from the label holder instead of a local softmax.
pub(crate) fn backward(
    params: &[f32],
    dims: [usize; 3],
    x: ArrayView2<f32>,
    hidden: &Array2<f32>,
    g: &Array2<f32>,
    grad: &mut [f32],
) -> Result<(), ModelError> {
    let [f, h, c] = dims;
    let [_, _, w2, _] = blocks(params, lens(dims))?;
    let w2 = mat(w2, c, h)?;
    let [gw1, gb1, gw2, gb2] = blocks_mut(grad, lens(dims))?;

    let mut gw2 = mat_mut(gw2, c, h)?;
    general_mat_mul(1.0, &g.t(), hidden, 0.0, &mut gw2);
    column_sums(g, gb2);

    // Back through W2 and the ReLU.
    let mut dh = g.dot(&w2);
    Zip::from(&mut dh).and(hidden).for_each(|d, &a| {
        if a <= 0.0 {
            *d = 0.0;
        }
    });
    let mut gw1 = mat_mut(gw1, h, f)?;
    general_mat_mul(1.0, &dh.t(), &x, 0.0, &mut gw1);
    column_sums(&dh, gb1);
    Ok(())
}
