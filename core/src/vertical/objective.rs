//! The label holder's objective: the loss of the combined output `z_i = sum_m h_i^m + b`
//! against sample `i`'s label, and its per-sample gradient, which the server returns to
//! every party (the same `g_i` for all of them, since `dz_i / dh_i^m` is the identity).
//!
//! Classification uses the crate's one softmax cross-entropy (shared with
//! [`crate::model`]); regression uses `0.5 (z - y)^2` on one output. Losses are means over
//! the requested sample ids, accumulated in f64. Because the enum is public and
//! deserialisable, every call re-checks the labels/targets it touches, so an objective built
//! without [`Objective::new_classification`] / [`Objective::new_regression`] still cannot
//! panic.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::{VerticalError, check_finite, check_shape};
use crate::model::{cross_entropy, softmax_ce_rows};

/// What the label holder (the server) optimises on z_i = sum_m h_i^m + b.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// Softmax cross-entropy over `num_classes` outputs.
    Classification {
        /// Label of each sample id, each `< num_classes`.
        labels: Vec<u32>,
        /// Number of outputs (classes), at least 2.
        num_classes: usize,
    },
    /// Squared error 0.5 (z - y)^2 on one output.
    Regression {
        /// Finite target of each sample id.
        targets: Vec<f32>,
    },
}

impl Objective {
    /// A classification objective; fails on fewer than 2 classes, no samples, or a label
    /// `>= num_classes`.
    pub fn new_classification(labels: Vec<u32>, num_classes: usize) -> Result<Self, VerticalError> {
        if num_classes < 2 {
            return Err(VerticalError::TooFewClasses { num_classes });
        }
        let objective = Self::Classification {
            labels,
            num_classes,
        };
        objective.validate()?;
        Ok(objective)
    }

    /// A regression objective; fails on no samples or a non-finite target.
    pub fn new_regression(targets: Vec<f32>) -> Result<Self, VerticalError> {
        let objective = Self::Regression { targets };
        objective.validate()?;
        Ok(objective)
    }

    /// Checks the whole objective as the constructors do (for deserialised values).
    pub fn validate(&self) -> Result<(), VerticalError> {
        if self.num_samples() == 0 {
            return Err(VerticalError::NoSamples);
        }
        if let Self::Classification { num_classes, .. } = *self
            && num_classes < 2
        {
            return Err(VerticalError::TooFewClasses { num_classes });
        }
        (0..self.num_samples()).try_for_each(|i| self.check_sample(i))
    }

    /// Width of the combined output and of every embedding: `num_classes`, or 1.
    pub fn output_dim(&self) -> usize {
        match self {
            Self::Classification { num_classes, .. } => *num_classes,
            Self::Regression { .. } => 1,
        }
    }

    /// Number of samples (ids `0..num_samples()`).
    pub fn num_samples(&self) -> usize {
        match self {
            Self::Classification { labels, .. } => labels.len(),
            Self::Regression { targets } => targets.len(),
        }
    }

    /// Mean loss over `rows` (sample ids) of z, whose row k belongs to sample `rows[k]`;
    /// z has rows.len() rows and output_dim() columns.
    ///
    /// Fails on an empty `rows`, a shape mismatch, an id out of range, a non-finite `z`
    /// or an invalid label/target of a requested sample.
    pub fn mean_loss(&self, z: ArrayView2<f32>, rows: &[usize]) -> Result<f64, VerticalError> {
        self.check_inputs(z, rows)?;
        Ok(match self {
            Self::Classification { labels, .. } => {
                let y = gather(labels, rows);
                cross_entropy(z, &y).0 / rows.len() as f64
            }
            Self::Regression { targets } => {
                let sum: f64 = z
                    .column(0)
                    .iter()
                    .zip(rows)
                    .map(|(&zk, &i)| {
                        let d = f64::from(zk) - f64::from(targets[i]);
                        0.5 * d * d
                    })
                    .sum();
                sum / rows.len() as f64
            }
        })
    }

    /// Mean loss and the per-sample gradients g_k = d l(z_k, y_`rows[k]`) / d z_k (NOT divided by
    /// the batch size), same shape as z.
    ///
    /// Classification: `g_k = softmax(z_k) - onehot(y)`; regression: `g_k = z_k - y`. Fails
    /// like [`mean_loss`](Objective::mean_loss). The loss equals `mean_loss` up to f32
    /// rounding (the two are computed by different, equally stable formulas).
    pub fn loss_and_grad(
        &self,
        z: ArrayView2<f32>,
        rows: &[usize],
    ) -> Result<(f64, Array2<f32>), VerticalError> {
        self.check_inputs(z, rows)?;
        let mut g = z.to_owned();
        let loss = match self {
            Self::Classification { labels, .. } => {
                softmax_ce_rows(&mut g, &gather(labels, rows), 1.0)
            }
            Self::Regression { targets } => {
                let mut sum = 0.0f64;
                for (gk, &i) in g.iter_mut().zip(rows) {
                    *gk -= targets[i];
                    sum += 0.5 * f64::from(*gk) * f64::from(*gk);
                }
                sum / rows.len() as f64
            }
        };
        Ok((loss, g))
    }

    /// Checks that `rows` is non-empty and in range with valid labels/targets, and that `z`
    /// is finite and `rows.len() x output_dim()`. After it, `rows` may be used as indices.
    fn check_inputs(&self, z: ArrayView2<f32>, rows: &[usize]) -> Result<(), VerticalError> {
        if rows.is_empty() {
            return Err(VerticalError::EmptyBatch { what: "batch" });
        }
        if let Self::Classification { num_classes, .. } = *self
            && num_classes < 2
        {
            return Err(VerticalError::TooFewClasses { num_classes });
        }
        check_shape("combined output z", z, rows.len(), self.output_dim())?;
        rows.iter().try_for_each(|&i| self.check_sample(i))?;
        check_finite("combined output z", z)
    }

    /// Checks that sample `i` exists and has a valid label or target.
    fn check_sample(&self, i: usize) -> Result<(), VerticalError> {
        let num_samples = self.num_samples();
        let out_of_range = VerticalError::SampleOutOfRange {
            sample: i,
            num_samples,
        };
        match self {
            Self::Classification {
                labels,
                num_classes,
            } => match labels.get(i) {
                None => Err(out_of_range),
                Some(&label) if label as usize >= *num_classes => {
                    Err(VerticalError::LabelOutOfRange {
                        sample: i,
                        label,
                        num_classes: *num_classes,
                    })
                }
                Some(_) => Ok(()),
            },
            Self::Regression { targets } => match targets.get(i) {
                None => Err(out_of_range),
                Some(&value) if !value.is_finite() => {
                    Err(VerticalError::NonFiniteTarget { sample: i, value })
                }
                Some(_) => Ok(()),
            },
        }
    }
}

/// `values[rows[k]]` for each k; `rows` are already checked to be in range.
fn gather<T: Copy>(values: &[T], rows: &[usize]) -> Vec<T> {
    rows.iter()
        .filter_map(|&i| values.get(i).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn classification_loss_and_grad_by_hand() {
        // Two samples, three classes. Sample 0: z = (0, 0, 0), label 2: uniform softmax,
        // loss ln 3, g = (1/3, 1/3, -2/3). Sample 2: z = (ln 2, 0, 0) -> p = (1/2, 1/4, 1/4),
        // label 0: loss ln 2, g = (-1/2, 1/4, 1/4).
        let obj = Objective::new_classification(vec![2, 1, 0], 3).unwrap();
        assert_eq!((obj.output_dim(), obj.num_samples()), (3, 3));
        let ln2 = std::f32::consts::LN_2;
        let z = array![[0.0f32, 0.0, 0.0], [ln2, 0.0, 0.0]];
        let rows = [0, 2];
        let expected_loss = (3f64.ln() + 2f64.ln()) / 2.0;
        let (loss, g) = obj.loss_and_grad(z.view(), &rows).unwrap();
        assert!(close(loss, expected_loss, 1e-6), "{loss}");
        assert!(close(
            obj.mean_loss(z.view(), &rows).unwrap(),
            expected_loss,
            1e-6
        ));
        let want = array![[1.0f32 / 3.0, 1.0 / 3.0, -2.0 / 3.0], [-0.5, 0.25, 0.25]];
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        // Per-sample gradients of cross-entropy sum to zero across classes.
        for row in g.rows() {
            assert!(row.sum().abs() < 1e-6);
        }
    }

    #[test]
    fn classification_is_stable_for_huge_logits() {
        let obj = Objective::new_classification(vec![0, 1], 2).unwrap();
        let z = array![[1000.0f32, 0.0], [1000.0, 0.0]];
        let (loss, g) = obj.loss_and_grad(z.view(), &[0, 1]).unwrap();
        // Sample 0 is right with certainty (loss 0), sample 1 wrong by 1000.
        assert!(close(loss, 500.0, 1e-3), "{loss}");
        assert!(close(
            obj.mean_loss(z.view(), &[0, 1]).unwrap(),
            500.0,
            1e-3
        ));
        assert_eq!(g, array![[0.0f32, 0.0], [1.0, -1.0]]);
    }

    #[test]
    fn regression_loss_and_grad_by_hand() {
        let obj = Objective::new_regression(vec![1.0, -2.0, 0.5]).unwrap();
        assert_eq!((obj.output_dim(), obj.num_samples()), (1, 3));
        // Rows 1, 0, 1 (a repeated id is allowed): residuals 1, 2, -1.
        let z = array![[-1.0f32], [3.0], [-3.0]];
        let rows = [1, 0, 1];
        let (loss, g) = obj.loss_and_grad(z.view(), &rows).unwrap();
        assert_eq!(loss, (0.5 + 2.0 + 0.5) / 3.0);
        assert_eq!(obj.mean_loss(z.view(), &rows).unwrap(), 1.0);
        assert_eq!(g, array![[1.0f32], [2.0], [-1.0]]);
    }

    /// Central finite differences of `mean_loss` times the batch size equal the per-sample
    /// gradients (the mean's gradient is `g_k / |B|`).
    fn finite_difference_check(obj: &Objective, z: Array2<f32>, rows: &[usize]) {
        let (_, g) = obj.loss_and_grad(z.view(), rows).unwrap();
        let eps = 1e-2f32;
        let n = rows.len() as f64;
        for ((k, c), &analytic) in g.indexed_iter() {
            let mut plus = z.clone();
            plus[[k, c]] += eps;
            let mut minus = z.clone();
            minus[[k, c]] -= eps;
            let numeric = (obj.mean_loss(plus.view(), rows).unwrap()
                - obj.mean_loss(minus.view(), rows).unwrap())
                / (2.0 * f64::from(eps))
                * n;
            let analytic = f64::from(analytic);
            assert!(
                close(numeric, analytic, 1e-3 + 1e-2 * analytic.abs()),
                "({k}, {c}): numeric {numeric} vs analytic {analytic}"
            );
        }
        assert!(g.iter().any(|v| v.abs() > 1e-2));
    }

    #[test]
    fn gradients_match_finite_differences() {
        let cls = Objective::new_classification(vec![0, 3, 1, 2, 3], 4).unwrap();
        let z = array![
            [0.3f32, -1.2, 0.8, 0.1],
            [1.5, 0.2, -0.4, 0.9],
            [-0.7, 0.6, 0.0, -1.1]
        ];
        finite_difference_check(&cls, z, &[4, 0, 2]);
        let reg = Objective::new_regression(vec![0.25, -1.5, 2.0]).unwrap();
        finite_difference_check(&reg, array![[0.5f32], [1.0], [-0.75]], &[2, 1, 0]);
    }

    #[test]
    fn constructors_reject_invalid_labels_and_targets() {
        assert_eq!(
            Objective::new_classification(vec![0, 0], 1),
            Err(VerticalError::TooFewClasses { num_classes: 1 })
        );
        assert_eq!(
            Objective::new_classification(vec![0, 1, 3], 3),
            Err(VerticalError::LabelOutOfRange {
                sample: 2,
                label: 3,
                num_classes: 3
            })
        );
        assert_eq!(
            Objective::new_classification(vec![], 3),
            Err(VerticalError::NoSamples)
        );
        assert!(matches!(
            Objective::new_regression(vec![0.0, f32::INFINITY]),
            Err(VerticalError::NonFiniteTarget { sample: 1, .. })
        ));
        assert!(matches!(
            Objective::new_regression(vec![f32::NAN]),
            Err(VerticalError::NonFiniteTarget { sample: 0, .. })
        ));
        let err = Objective::new_classification(vec![7], 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "label 7 of sample 0 is out of range for 3 classes"
        );
    }

    #[test]
    fn calls_reject_bad_shapes_rows_and_values() {
        let obj = Objective::new_classification(vec![0, 1, 2], 3).unwrap();
        let z = Array2::<f32>::zeros((2, 3));
        assert_eq!(
            obj.mean_loss(z.view(), &[0]),
            Err(VerticalError::ShapeMismatch {
                what: "combined output z",
                rows: 2,
                cols: 3,
                expected_rows: 1,
                expected_cols: 3
            })
        );
        let narrow = Array2::<f32>::zeros((2, 2));
        assert!(matches!(
            obj.loss_and_grad(narrow.view(), &[0, 1]),
            Err(VerticalError::ShapeMismatch { .. })
        ));
        assert_eq!(
            obj.loss_and_grad(z.view(), &[0, 3]),
            Err(VerticalError::SampleOutOfRange {
                sample: 3,
                num_samples: 3
            })
        );
        assert_eq!(
            obj.mean_loss(Array2::zeros((0, 3)).view(), &[]),
            Err(VerticalError::EmptyBatch { what: "batch" })
        );
        let mut bad = z.clone();
        bad[[1, 2]] = f32::NAN;
        assert!(matches!(
            obj.loss_and_grad(bad.view(), &[0, 1]),
            Err(VerticalError::NonFinite { row: 1, col: 2, .. })
        ));
        let reg = Objective::new_regression(vec![1.0]).unwrap();
        assert!(matches!(
            reg.mean_loss(array![[f32::NEG_INFINITY]].view(), &[0]),
            Err(VerticalError::NonFinite { row: 0, col: 0, .. })
        ));
    }

    #[test]
    fn deserialised_invalid_objectives_fail_without_panicking() {
        let bad = Objective::Classification {
            labels: vec![0, 9],
            num_classes: 3,
        };
        assert!(bad.validate().is_err());
        let z = Array2::<f32>::zeros((1, 3));
        assert!(matches!(
            bad.mean_loss(z.view(), &[1]),
            Err(VerticalError::LabelOutOfRange { label: 9, .. })
        ));
        assert!(
            bad.mean_loss(z.view(), &[0]).is_ok(),
            "valid rows still work"
        );
        let degenerate = Objective::Classification {
            labels: vec![0],
            num_classes: 0,
        };
        assert!(
            degenerate
                .loss_and_grad(Array2::zeros((1, 0)).view(), &[0])
                .is_err()
        );
        let reg = Objective::Regression {
            targets: vec![f32::NAN],
        };
        assert!(reg.loss_and_grad(array![[0.0f32]].view(), &[0]).is_err());
        let json = serde_json::to_string(&Objective::new_regression(vec![1.5]).unwrap()).unwrap();
        let back: Objective = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Objective::Regression { targets: vec![1.5] });
    }
}
