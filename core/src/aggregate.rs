//! Combining client updates: FedAvg, the sample-weighted mean of parameter vectors.
//!
//! [`WeightedSum`] is the one accumulator behind it: it sums `w * v` in f64 as updates
//! arrive (streaming, so the server need not keep every update) and also supports
//! `remove`, so a Shapley valuation can walk coalitions in Gray-code order adding or removing
//! one client's update per step. [`fedavg`] is that accumulator applied to a slice.

/// Errors from aggregation.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AggregateError {
    /// Nothing to aggregate.
    #[error("no updates to aggregate")]
    Empty,
    /// An update's length differs from the accumulator's.
    #[error("update has {got} values but the model has {expected}")]
    LengthMismatch {
        /// Expected length.
        expected: usize,
        /// Length of the update.
        got: usize,
    },
    /// A weight is negative, NaN or infinite.
    #[error("update weight must be a finite number >= 0, got {weight}")]
    InvalidWeight {
        /// The rejected weight.
        weight: f64,
    },
    /// The weights add up to zero (or less), so there is no mean.
    #[error("total weight is {total}: at least one update needs a positive sample count")]
    NonPositiveTotal {
        /// The total weight.
        total: f64,
    },
}

/// Streaming weighted sum of equal-length vectors, accumulated in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedSum {
    sum: Vec<f64>,
    total: f64,
}

impl WeightedSum {
    /// An empty accumulator for vectors of length `len`.
    pub fn new(len: usize) -> Self {
        Self {
            sum: vec![0.0; len],
            total: 0.0,
        }
    }

    /// Length of the vectors accumulated.
    pub fn len(&self) -> usize {
        self.sum.len()
    }

    /// True if the vectors have length 0.
    pub fn is_empty(&self) -> bool {
        self.sum.is_empty()
    }

    /// Adds `w * v`; fails (changing nothing) on a length mismatch or a negative or
    /// non-finite weight.
    pub fn add(&mut self, v: &[f32], w: f64) -> Result<(), AggregateError> {
        if v.len() != self.sum.len() {
            return Err(AggregateError::LengthMismatch {
                expected: self.sum.len(),
                got: v.len(),
            });
        }
        if !(w.is_finite() && w >= 0.0) {
            return Err(AggregateError::InvalidWeight { weight: w });
        }
        self.accumulate(v, w);
        Ok(())
    }

    /// Subtracts `w * v`, undoing an earlier `add(v, w)` (up to f64 rounding).
    ///
    /// # Panics
    /// If `v.len() != self.len()`: only vectors that [`add`](WeightedSum::add) accepted may
    /// be removed, so a mismatch is a bug in the caller.
    pub fn remove(&mut self, v: &[f32], w: f64) {
        assert_eq!(
            v.len(),
            self.sum.len(),
            "WeightedSum::remove of a vector that was never added"
        );
        self.accumulate(v, -w);
    }

    /// `sum += w * v`, `total += w` (lengths already checked).
    fn accumulate(&mut self, v: &[f32], w: f64) {
        for (s, &x) in self.sum.iter_mut().zip(v) {
            *s += w * f64::from(x);
        }
        self.total += w;
    }

    /// Sum of the weights currently in the accumulator.
    pub fn total_weight(&self) -> f64 {
        self.total
    }

    /// Writes the weighted mean into `out`; fails on a length mismatch or a non-positive
    /// (or non-finite) total weight, leaving `out` untouched.
    pub fn mean_into(&self, out: &mut [f32]) -> Result<(), AggregateError> {
        if out.len() != self.sum.len() {
            return Err(AggregateError::LengthMismatch {
                expected: self.sum.len(),
                got: out.len(),
            });
        }
        if !(self.total.is_finite() && self.total > 0.0) {
            return Err(AggregateError::NonPositiveTotal { total: self.total });
        }
        for (o, &s) in out.iter_mut().zip(&self.sum) {
            *o = (s / self.total) as f32;
        }
        Ok(())
    }

    /// The weighted mean, or `None` if the total weight is not positive.
    pub fn mean(&self) -> Option<Vec<f32>> {
        let mut out = vec![0.0; self.sum.len()];
        self.mean_into(&mut out).ok().map(|()| out)
    }
}

/// FedAvg: the mean of the update vectors weighted by their sample counts.
///
/// Fails on an empty slice, vectors of different lengths, a negative or non-finite weight,
/// or weights that add up to zero.
pub fn fedavg(updates: &[(&[f32], f64)]) -> Result<Vec<f32>, AggregateError> {
    let (first, _) = updates.first().ok_or(AggregateError::Empty)?;
    let mut acc = WeightedSum::new(first.len());
    for (v, w) in updates {
        acc.add(v, *w)?;
    }
    let mut out = vec![0.0; acc.len()];
    acc.mean_into(&mut out)?;
    Ok(out)
}

/// `global + delta`, element-wise: a new global model from an aggregated update.
///
/// # Panics
/// If the lengths differ; callers check update lengths against the model when they receive
/// them.
pub fn apply_update(global: &[f32], delta: &[f32]) -> Vec<f32> {
    assert_eq!(
        global.len(),
        delta.len(),
        "apply_update: delta length differs from the model's"
    );
    global.iter().zip(delta).map(|(g, d)| g + d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedavg_matches_hand_computation() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, 6.0, -3.0];
        // (1 * a + 3 * b) / 4
        let avg = fedavg(&[(&a, 1.0), (&b, 3.0)]).unwrap();
        assert_eq!(avg, vec![2.5, 5.0, -1.5]);
        assert_eq!(fedavg(&[(&a, 7.0)]).unwrap(), a.to_vec());
        // Zero-weight updates are allowed and ignored.
        assert_eq!(fedavg(&[(&a, 2.0), (&b, 0.0)]).unwrap(), a.to_vec());
    }

    #[test]
    fn fedavg_errors() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32];
        assert_eq!(fedavg(&[]), Err(AggregateError::Empty));
        assert_eq!(
            fedavg(&[(&a, 1.0), (&b, 1.0)]),
            Err(AggregateError::LengthMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            fedavg(&[(&a, 0.0)]),
            Err(AggregateError::NonPositiveTotal { total: 0.0 })
        );
        assert_eq!(
            fedavg(&[(&a, -1.0)]),
            Err(AggregateError::InvalidWeight { weight: -1.0 })
        );
        assert!(matches!(
            fedavg(&[(&a, f64::NAN)]),
            Err(AggregateError::InvalidWeight { .. })
        ));
        assert!(matches!(
            fedavg(&[(&a, f64::INFINITY)]),
            Err(AggregateError::InvalidWeight { .. })
        ));
    }

    #[test]
    fn add_then_remove_restores_mean() {
        let a = [0.1f32, -2.0, 3.5];
        let b = [10.0f32, 20.0, 30.0];
        let mut acc = WeightedSum::new(3);
        assert_eq!(acc.mean(), None);
        acc.add(&a, 5.0).unwrap();
        let before = acc.mean().unwrap();
        acc.add(&b, 2.0).unwrap();
        assert_eq!(acc.total_weight(), 7.0);
        assert_ne!(acc.mean().unwrap(), before);
        acc.remove(&b, 2.0);
        assert_eq!(acc.total_weight(), 5.0);
        assert_eq!(acc.mean().unwrap(), before);
        acc.remove(&a, 5.0);
        assert_eq!(acc.total_weight(), 0.0);
        assert_eq!(acc.mean(), None);
    }

    #[test]
    fn weighted_sum_rejects_bad_input() {
        let mut acc = WeightedSum::new(2);
        assert_eq!(
            acc.add(&[1.0], 1.0),
            Err(AggregateError::LengthMismatch {
                expected: 2,
                got: 1
            })
        );
        assert!(acc.add(&[1.0, 2.0], -0.5).is_err());
        assert_eq!(acc.total_weight(), 0.0, "rejected adds change nothing");
        acc.add(&[1.0, 2.0], 1.0).unwrap();
        let mut out = [0.0f32; 3];
        assert!(acc.mean_into(&mut out).is_err());
        let mut out = [0.0f32; 2];
        acc.mean_into(&mut out).unwrap();
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn apply_update_adds() {
        assert_eq!(apply_update(&[1.0, 2.0], &[0.5, -2.0]), vec![1.5, 0.0]);
    }
}
