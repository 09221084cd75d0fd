//! A party's local embedding model: it maps the party's own feature columns `x_i^m` to an
//! embedding `h_i^m` in `R^C` and updates itself from the per-sample gradients `g_i` the
//! label holder returns (ALGORITHMS.md section 3).
//!
//! Two kinds, both over one flat `Vec<f32>` (the unit that travels and is checkpointed):
//! - [`PartyModelSpec::Linear`]: `h = W x`, `W [output_dim x features]` row-major, no bias
//!   (the label holder owns the bias). Initialised to zero: the first combined output is
//!   then exactly the server bias, and parties holding identical columns stay identical, so
//!   VerFedSV's symmetry holds exactly.
//! - [`PartyModelSpec::Mlp`]: one hidden ReLU layer, `h = relu(x W1^T + b1) W2^T + b2`, with
//!   the layout, seeded initialisation and backward pass of [`crate::model`]'s MLP.
//!
//! An update with step `eta` and weight decay `lambda` on a batch `B` is
//! `p <- (1 - eta lambda) p - eta/|B| sum_i J_i^T g_i` for weight matrices (biases get no
//! decay), where `J_i = dh_i/dp`; for the linear model this is
//! `W <- (1 - eta lambda) W - eta/|B| sum_i g_i x_i^T`.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use serde::{Deserialize, Serialize};

use super::{VerticalError, check_finite, check_shape};
use crate::model::{MAX_PARAMS, ModelError, mlp};

/// Which embedding model a party runs, with its dimensions. Serialised with a `kind` tag,
/// e.g. `{"kind": "linear", "num_features": 16, "output_dim": 10}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartyModelSpec {
    /// `h = W x` with `W [output_dim x num_features]`.
    Linear {
        /// The party's feature columns.
        num_features: usize,
        /// Embedding width (the objective's output dimension).
        output_dim: usize,
    },
    /// `h = relu(x W1^T + b1) W2^T + b2`.
    Mlp {
        /// The party's feature columns.
        num_features: usize,
        /// Hidden ReLU units.
        hidden: usize,
        /// Embedding width (the objective's output dimension).
        output_dim: usize,
    },
}

impl PartyModelSpec {
    /// The party's feature column count.
    pub fn num_features(&self) -> usize {
        match *self {
            Self::Linear { num_features, .. } | Self::Mlp { num_features, .. } => num_features,
        }
    }

    /// Embedding width.
    pub fn output_dim(&self) -> usize {
        match *self {
            Self::Linear { output_dim, .. } | Self::Mlp { output_dim, .. } => output_dim,
        }
    }

    /// Length of the flat parameter vector (saturating, so absurd specs fail
    /// [`validate`](PartyModelSpec::validate) instead of overflowing).
    pub fn num_params(&self) -> usize {
        match *self {
            Self::Linear {
                num_features,
                output_dim,
            } => num_features.saturating_mul(output_dim),
            Self::Mlp {
                num_features,
                hidden,
                output_dim,
            } => hidden
                .saturating_mul(num_features)
                .saturating_add(hidden)
                .saturating_add(output_dim.saturating_mul(hidden))
                .saturating_add(output_dim),
        }
    }

    /// Checks every dimension is at least 1 and the size is at most [`MAX_PARAMS`].
    pub fn validate(&self) -> Result<(), VerticalError> {
        let invalid = |reason: String| Err(VerticalError::InvalidModel { reason });
        if self.num_features() == 0 {
            return invalid("num_features must be at least 1".into());
        }
        if self.output_dim() == 0 {
            return invalid("output_dim must be at least 1".into());
        }
        if let Self::Mlp { hidden: 0, .. } = self {
            return invalid("hidden must be at least 1".into());
        }
        if self.num_params() > MAX_PARAMS {
            return invalid(format!(
                "{} parameters exceed the limit of {MAX_PARAMS}",
                self.num_params()
            ));
        }
        Ok(())
    }

    /// `[features, hidden, output]` of an MLP spec (the argument of [`crate::model::mlp`]).
    fn mlp_dims(&self) -> Option<[usize; 3]> {
        match *self {
            Self::Linear { .. } => None,
            Self::Mlp {
                num_features,
                hidden,
                output_dim,
            } => Some([num_features, hidden, output_dim]),
        }
    }
}

/// A party's embedding model: a validated spec and its flat parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PartyModel {
    spec: PartyModelSpec,
    params: Vec<f32>,
}

impl PartyModel {
    /// A fresh model: zeros for [`PartyModelSpec::Linear`] (see the module docs), seeded
    /// He/Glorot-uniform weights and zero biases for [`PartyModelSpec::Mlp`].
    pub fn new(spec: PartyModelSpec, seed: u64) -> Result<Self, VerticalError> {
        spec.validate()?;
        let params = match spec.mlp_dims() {
            None => vec![0.0; spec.num_params()],
            Some(dims) => mlp::init(dims, seed),
        };
        Ok(Self { spec, params })
    }

    /// A model with the given parameters (e.g. restored from a checkpoint); fails on an
    /// invalid spec, a wrong length or a non-finite value.
    pub fn from_params(spec: PartyModelSpec, params: Vec<f32>) -> Result<Self, VerticalError> {
        spec.validate()?;
        if params.len() != spec.num_params() {
            return Err(VerticalError::InvalidModel {
                reason: format!(
                    "parameter vector has {} values but the model needs {}",
                    params.len(),
                    spec.num_params()
                ),
            });
        }
        if let Some((index, value)) = params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(VerticalError::InvalidModel {
                reason: format!("parameter {index} is {value}: parameters must be finite"),
            });
        }
        Ok(Self { spec, params })
    }

    /// The model's spec.
    pub fn spec(&self) -> &PartyModelSpec {
        &self.spec
    }

    /// The flat parameters (layout in the module docs).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Length of the flat parameter vector.
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// Embeddings `[rows x output_dim]` of the rows of `features` (`[rows x num_features]`,
    /// finite). Zero rows give an empty matrix.
    pub fn embed(&self, features: ArrayView2<f32>) -> Result<Array2<f32>, VerticalError> {
        self.check_features(features)?;
        Ok(self.forward(features)?.1)
    }

    /// One SGD step on a batch: `features` are the batch rows' columns
    /// (`[batch x num_features]`), `g` their per-sample gradients `dl/dh` (`[batch x
    /// output_dim]`, not divided by the batch size), `eta` the step and `lambda` the weight
    /// decay: `W <- (1 - eta lambda) W - eta/|B| sum_i g_i x_i^T` (module docs).
    ///
    /// Fails on an empty batch, shape mismatches, non-finite inputs, a non-positive `eta`
    /// or a negative `lambda`; if the step would make a parameter NaN/inf it fails with
    /// [`VerticalError::UpdateDiverged`] and leaves the model unchanged.
    pub fn apply_gradients(
        &mut self,
        features: ArrayView2<f32>,
        g: ArrayView2<f32>,
        eta: f32,
        lambda: f32,
    ) -> Result<(), VerticalError> {
        check_step(eta, lambda)?;
        self.check_features(features)?;
        if features.nrows() == 0 {
            return Err(VerticalError::EmptyBatch {
                what: "gradient batch",
            });
        }
        check_shape("gradient g", g, features.nrows(), self.spec.output_dim())?;
        check_finite("gradient g", g)?;
        let mean_g = g.mapv(|v| v / features.nrows() as f32);
        let mut grad = vec![0.0f32; self.params.len()];
        // Weight blocks as (start, end): they get the decay, biases do not.
        let decayed: Vec<(usize, usize)> = match self.spec.mlp_dims() {
            None => {
                let (c, f) = (self.spec.output_dim(), self.spec.num_features());
                let mut gw = ArrayViewMut2::from_shape((c, f), &mut grad[..])
                    .map_err(|e| invalid_layout(&e))?;
                general_mat_mul(1.0, &mean_g.t(), &features, 0.0, &mut gw);
                vec![(0, self.params.len())]
            }
            Some(dims) => {
                let (hidden, _) = self.forward(features)?;
                mlp::backward(&self.params, dims, features, &hidden, &mean_g, &mut grad)
                    .map_err(|e| from_model(&e))?;
                let [w1, b1, w2, _] = mlp::lens(dims);
                vec![(0, w1), (w1 + b1, w1 + b1 + w2)]
            }
        };
        let mut next = self.params.clone();
        for (p, d) in next.iter_mut().zip(&grad) {
            *p -= eta * d;
        }
        let shrink = 1.0 - eta * lambda;
        for (start, end) in decayed {
            let range = start..end;
            let (weights, grads) = (self.params.get(range.clone()), grad.get(range.clone()));
            let (Some(weights), Some(grads), Some(out)) = (weights, grads, next.get_mut(range))
            else {
                continue;
            };
            for ((o, &w), &d) in out.iter_mut().zip(weights).zip(grads) {
                *o = shrink * w - eta * d;
            }
        }
        if next.iter().any(|p| !p.is_finite()) {
            return Err(VerticalError::UpdateDiverged { eta });
        }
        self.params = next;
        Ok(())
    }

    /// Hidden activations (empty for the linear model) and embeddings; inputs checked.
    fn forward(
        &self,
        features: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>), VerticalError> {
        match self.spec.mlp_dims() {
            None => {
                let (c, f) = (self.spec.output_dim(), self.spec.num_features());
                let w = ArrayView2::from_shape((c, f), &self.params[..])
                    .map_err(|e| invalid_layout(&e))?;
                Ok((Array2::zeros((0, 0)), features.dot(&w.t())))
            }
            Some(dims) => mlp::forward(&self.params, dims, features).map_err(|e| from_model(&e)),
        }
    }

    /// Checks `features` has the model's column count and finite values.
    fn check_features(&self, features: ArrayView2<f32>) -> Result<(), VerticalError> {
        check_shape(
            "party features",
            features,
            features.nrows(),
            self.spec.num_features(),
        )?;
        check_finite("party features", features)
    }
}

/// Rejects a non-positive or non-finite step and a negative or non-finite weight decay.
pub(crate) fn check_step(eta: f32, lambda: f32) -> Result<(), VerticalError> {
    if !(eta.is_finite() && eta > 0.0) {
        return Err(VerticalError::InvalidConfig {
            reason: format!("learning rate eta must be positive and finite, got {eta}"),
        });
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(VerticalError::InvalidConfig {
            reason: format!("weight decay lambda must be non-negative and finite, got {lambda}"),
        });
    }
    Ok(())
}

/// A parameter-layout error (unreachable after validation; reported, never panicked on).
fn invalid_layout(e: &ndarray::ShapeError) -> VerticalError {
    VerticalError::InvalidModel {
        reason: format!("parameter layout: {e}"),
    }
}

/// Wraps an error of the shared MLP code.
fn from_model(e: &ModelError) -> VerticalError {
    VerticalError::InvalidModel {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vertical::Objective;
    use ndarray::array;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const LINEAR: PartyModelSpec = PartyModelSpec::Linear {
        num_features: 2,
        output_dim: 3,
    };
    const MLP: PartyModelSpec = PartyModelSpec::Mlp {
        num_features: 3,
        hidden: 4,
        output_dim: 3,
    };

    fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((rows, cols), |_| r.random_range(-1.0f32..1.0))
    }

    #[test]
    fn linear_embed_and_update_by_hand() {
        // W = [[1, 0], [0, 2], [-1, 1]] (3 x 2).
        let mut m = PartyModel::from_params(LINEAR, vec![1.0, 0.0, 0.0, 2.0, -1.0, 1.0]).unwrap();
        let x = array![[1.0f32, 2.0], [3.0, -1.0]];
        assert_eq!(
            m.embed(x.view()).unwrap(),
            array![[1.0f32, 4.0, 1.0], [3.0, -2.0, -4.0]]
        );
        // sum_i g_i x_i^T with g_0 = (1, 0, 2), g_1 = (0, -1, 1):
        // [[1, 2], [-3, 1], [2 + 3, 4 - 1]] = [[1, 2], [-3, 1], [5, 3]].
        let g = array![[1.0f32, 0.0, 2.0], [0.0, -1.0, 1.0]];
        let (eta, lambda) = (0.5f32, 0.2f32);
        m.apply_gradients(x.view(), g.view(), eta, lambda).unwrap();
        // (1 - 0.1) W - 0.25 * sum.
        let want = [
            0.9 - 0.25,
            0.0 - 0.5,
            0.0 + 0.75,
            1.8 - 0.25,
            -0.9 - 1.25,
            0.9 - 0.75,
        ];
        for (a, b) in m.params().iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", m.params());
        }
    }

    /// `apply_gradients` with lambda 0 and the objective's per-sample gradients moves the
    /// parameters by `-eta * d mean_loss / d params`, checked by central finite differences of
    /// the mean loss through `embed`.
    fn update_is_loss_gradient(spec: PartyModelSpec) {
        let m = PartyModel::new(spec.clone(), 3).unwrap();
        // Random starting parameters so the linear model is not at zero.
        let start: Vec<f32> = random(1, m.num_params(), 4)
            .iter()
            .map(|v| v * 0.5)
            .collect();
        let m = PartyModel::from_params(spec.clone(), start).unwrap();
        let x = random(5, spec.num_features(), 5);
        let other = random(5, 3, 6);
        let rows = [4, 0, 3, 1, 2];
        let obj = Objective::new_classification(vec![0, 2, 1, 1, 0], 3).unwrap();
        let loss_at = |p: &[f32]| {
            let model = PartyModel::from_params(spec.clone(), p.to_vec()).unwrap();
            let z = model.embed(x.view()).unwrap() + &other;
            obj.mean_loss(z.view(), &rows).unwrap()
        };
        let z = m.embed(x.view()).unwrap() + &other;
        let (_, g) = obj.loss_and_grad(z.view(), &rows).unwrap();
        let eta = 1e-2f32;
        let mut stepped = m.clone();
        stepped
            .apply_gradients(x.view(), g.view(), eta, 0.0)
            .unwrap();
        let eps = 1e-2f32;
        for i in 0..m.num_params() {
            let analytic = f64::from(m.params()[i] - stepped.params()[i]) / f64::from(eta);
            let mut plus = m.params().to_vec();
            plus[i] += eps;
            let mut minus = m.params().to_vec();
            minus[i] -= eps;
            let numeric = (loss_at(&plus) - loss_at(&minus)) / (2.0 * f64::from(eps));
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "{spec:?} param {i}: numeric {numeric} vs update {analytic}"
            );
        }
        assert_ne!(m.params(), stepped.params());
    }

    #[test]
    fn linear_update_is_the_loss_gradient() {
        update_is_loss_gradient(PartyModelSpec::Linear {
            num_features: 4,
            output_dim: 3,
        });
    }

    #[test]
    fn mlp_update_is_the_loss_gradient() {
        update_is_loss_gradient(MLP);
    }

    #[test]
    fn weight_decay_shrinks_weights_not_mlp_biases() {
        let mut m = PartyModel::new(MLP, 1).unwrap();
        let mut params = m.params().to_vec();
        params.iter_mut().for_each(|p| *p += 0.5);
        m = PartyModel::from_params(MLP, params.clone()).unwrap();
        let x = random(2, 3, 2);
        let g = Array2::zeros((2, 3));
        m.apply_gradients(x.view(), g.view(), 0.5, 0.2).unwrap();
        let [w1, b1, w2, _] = mlp::lens([3, 4, 3]);
        for (i, (&after, &before)) in m.params().iter().zip(&params).enumerate() {
            let weight = i < w1 || (w1 + b1..w1 + b1 + w2).contains(&i);
            let want = if weight { 0.9 * before } else { before };
            assert!((after - want).abs() < 1e-6, "param {i}");
        }
    }

    #[test]
    fn init_is_zero_linear_and_seeded_mlp() {
        let lin = PartyModel::new(LINEAR, 5).unwrap();
        assert_eq!(lin.params(), &[0.0f32; 6][..]);
        assert_eq!(
            lin.embed(array![[3.0f32, 4.0]].view()).unwrap(),
            Array2::<f32>::zeros((1, 3))
        );
        assert_eq!(MLP.num_params(), 12 + 4 + 12 + 3);
        let a = PartyModel::new(MLP, 5).unwrap();
        assert_eq!(a.num_params(), 31);
        assert_eq!(a, PartyModel::new(MLP, 5).unwrap());
        assert_ne!(a, PartyModel::new(MLP, 6).unwrap());
        let regression = PartyModelSpec::Mlp {
            num_features: 2,
            hidden: 3,
            output_dim: 1,
        };
        let r = PartyModel::new(regression, 0).unwrap();
        assert_eq!(r.embed(random(4, 2, 0).view()).unwrap().dim(), (4, 1));
        assert_eq!(
            serde_json::to_string(&LINEAR).unwrap(),
            r#"{"kind":"linear","num_features":2,"output_dim":3}"#
        );
    }

    #[test]
    fn invalid_specs_shapes_and_values_are_rejected() {
        for spec in [
            PartyModelSpec::Linear {
                num_features: 0,
                output_dim: 3,
            },
            PartyModelSpec::Linear {
                num_features: 2,
                output_dim: 0,
            },
            PartyModelSpec::Mlp {
                num_features: 2,
                hidden: 0,
                output_dim: 2,
            },
            PartyModelSpec::Mlp {
                num_features: usize::MAX,
                hidden: usize::MAX,
                output_dim: 2,
            },
        ] {
            assert!(
                matches!(
                    PartyModel::new(spec.clone(), 0),
                    Err(VerticalError::InvalidModel { .. })
                ),
                "{spec:?}"
            );
        }
        assert!(PartyModel::from_params(LINEAR, vec![0.0; 5]).is_err());
        assert!(PartyModel::from_params(LINEAR, vec![0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0]).is_err());
        let mut m = PartyModel::new(LINEAR, 0).unwrap();
        let wide = Array2::<f32>::zeros((2, 3));
        assert_eq!(
            m.embed(wide.view()),
            Err(VerticalError::ShapeMismatch {
                what: "party features",
                rows: 2,
                cols: 3,
                expected_rows: 2,
                expected_cols: 2
            })
        );
        let x = array![[1.0f32, f32::INFINITY]];
        assert!(matches!(
            m.embed(x.view()),
            Err(VerticalError::NonFinite { col: 1, .. })
        ));
        let x = array![[1.0f32, 2.0]];
        let g = array![[1.0f32, 2.0, 3.0]];
        let before = m.clone();
        assert!(
            m.apply_gradients(x.view(), array![[1.0f32, 2.0]].view(), 0.1, 0.0)
                .is_err()
        );
        assert!(
            m.apply_gradients(x.view(), array![[f32::NAN, 0.0, 0.0]].view(), 0.1, 0.0)
                .is_err()
        );
        assert!(m.apply_gradients(x.view(), g.view(), 0.0, 0.0).is_err());
        assert!(m.apply_gradients(x.view(), g.view(), 0.1, -1.0).is_err());
        assert!(
            m.apply_gradients(
                Array2::zeros((0, 2)).view(),
                Array2::zeros((0, 3)).view(),
                0.1,
                0.0
            )
            .is_err()
        );
        assert_eq!(
            m.apply_gradients(x.view(), g.view(), f32::MAX, 0.0),
            Err(VerticalError::UpdateDiverged { eta: f32::MAX })
        );
        assert_eq!(m, before, "failed updates leave the model unchanged");
    }
}
