//! Combining client updates: FedAvg and the robust aggregators users compare a reputation
//! mechanism against, behind one interface.
//!
//! [`WeightedSum`] is the one accumulator behind every mean: it sums `w * v` in f64 as
//! updates arrive (streaming, so the server need not keep every update) and also supports
//! `remove`, so a Shapley valuation can walk coalitions in Gray-code order adding or removing
//! one client's update per step. [`fedavg`] is that accumulator applied to a slice.
//!
//! The [`Aggregator`] trait is the hook a federation's round close calls: data in (the
//! round's [`Update`]s), data out (an [`Aggregate`]). The aggregators, one per module, are
//! [`FedAvg`], [`Median`] (coordinate-wise), [`TrimmedMean`], [`Krum`] and [`MultiKrum`],
//! and [`NormClip`]. [`AggregatorSpec`] is the serde form a federation configuration
//! chooses one with; [`AggregatorSpec::validate`] says whether a round has enough updates
//! for it. RFFL's reputation-weighted aggregation (ALGORITHMS.md section 4) will plug in
//! here as one more [`Aggregator`] and [`AggregatorSpec`] variant once the reputation
//! module exists: its weights are the normalised reputations instead of sample counts.

mod clip;
mod krum;
mod median;
mod trimmed;

pub use clip::{NormClip, clip_to_norm};
pub use krum::{Krum, MultiKrum};
pub use median::Median;
pub use trimmed::TrimmedMean;

use serde::{Deserialize, Serialize};

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
    /// A value of an update is NaN or infinite (robust aggregators sort and measure
    /// distances, which need finite values).
    #[error("update {update} has a non-finite value at index {index}")]
    NonFinite {
        /// Position of the update in the slice.
        update: usize,
        /// Index of the first non-finite value.
        index: usize,
    },
    /// The round has fewer updates than the aggregator's parameters need.
    #[error("{aggregator} needs at least {needed} updates, got {got}")]
    TooFewUpdates {
        /// The aggregator with its parameters (displayed as e.g. `krum (byzantine = 2)`).
        aggregator: AggregatorSpec,
        /// The fewest updates it accepts.
        needed: usize,
        /// The updates it was given.
        got: usize,
    },
    /// Norm clipping's bound is not a finite number > 0.
    #[error("max_norm must be a finite number > 0, got {max_norm}")]
    InvalidMaxNorm {
        /// The rejected bound.
        max_norm: f64,
    },
    /// Multi-Krum asked to average no update.
    #[error("multi-krum must select at least 1 update, got {selected}")]
    InvalidSelected {
        /// The rejected count.
        selected: usize,
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

/// One client's update as an aggregator sees it: the delta (client parameters minus global
/// parameters) and its weight (the client's sample count for FedAvg).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update<'a> {
    /// The parameter delta.
    pub delta: &'a [f32],
    /// Non-negative finite weight; aggregators that treat updates equally ignore it.
    pub weight: f64,
}

/// What an aggregator produced: the aggregated delta, and for the selecting aggregators
/// (Krum, Multi-Krum) which updates they picked, for round reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The aggregated delta, to add to the global model.
    pub delta: Vec<f32>,
    /// Indices (into the input slice) of the updates chosen, best score first; `None` for
    /// aggregators that use every update.
    pub selected: Option<Vec<usize>>,
}

impl Aggregate {
    /// An aggregate that used every update.
    fn all(delta: Vec<f32>) -> Self {
        Self {
            delta,
            selected: None,
        }
    }
}

/// Combines a round's updates into one delta (Flower's `aggregate_fit` hook, as data in and
/// data out). Implementations check their input and their parameters against it.
pub trait Aggregator: Send + Sync {
    /// Aggregates `updates` (all of the same length, finite values, weights finite >= 0).
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError>;
}

/// FedAvg behind the [`Aggregator`] interface: the weight-weighted mean, as [`fedavg`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FedAvg;

impl Aggregator for FedAvg {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        let (first, _) = check_updates(updates)?;
        let mut acc = WeightedSum::new(first.len());
        for u in updates {
            acc.add(u.delta, u.weight)?;
        }
        let mut out = vec![0.0; acc.len()];
        acc.mean_into(&mut out)?;
        Ok(Aggregate::all(out))
    }
}

/// Checks what every aggregator needs of its input: at least one update, equal lengths,
/// finite values and weights finite >= 0. Returns the first delta and the update count.
fn check_updates<'a>(updates: &[Update<'a>]) -> Result<(&'a [f32], usize), AggregateError> {
    let first = updates.first().ok_or(AggregateError::Empty)?.delta;
    for (i, u) in updates.iter().enumerate() {
        if u.delta.len() != first.len() {
            return Err(AggregateError::LengthMismatch {
                expected: first.len(),
                got: u.delta.len(),
            });
        }
        if !(u.weight.is_finite() && u.weight >= 0.0) {
            return Err(AggregateError::InvalidWeight { weight: u.weight });
        }
        if let Some(index) = u.delta.iter().position(|x| !x.is_finite()) {
            return Err(AggregateError::NonFinite { update: i, index });
        }
    }
    Ok((first, updates.len()))
}

/// Fails with [`AggregateError::TooFewUpdates`] unless `got >= needed`.
fn require(spec: AggregatorSpec, needed: usize, got: usize) -> Result<(), AggregateError> {
    if got < needed {
        return Err(AggregateError::TooFewUpdates {
            aggregator: spec,
            needed,
            got,
        });
    }
    Ok(())
}

/// The aggregator a federation uses, as configured (TOML/JSON: `kind = "median"`,
/// `kind = "krum", byzantine = 2`, ...). The default is FedAvg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AggregatorSpec {
    /// Sample-weighted mean ([`FedAvg`]).
    #[default]
    #[serde(rename = "fedavg")]
    FedAvg,
    /// Coordinate-wise median ([`Median`]).
    Median,
    /// Coordinate-wise mean after dropping the `trim` largest and `trim` smallest values
    /// ([`TrimmedMean`]); needs more than `2 trim` updates.
    TrimmedMean {
        /// Values dropped at each end of every coordinate.
        trim: usize,
    },
    /// The one update closest to its neighbours ([`Krum`]); needs more than
    /// `2 byzantine + 2` updates.
    Krum {
        /// Adversaries tolerated (`f`).
        byzantine: usize,
    },
    /// Sample-weighted mean of the `selected` best Krum scores ([`MultiKrum`]); needs more
    /// than `2 byzantine + 2` updates and at least `selected + byzantine`.
    MultiKrum {
        /// Adversaries tolerated (`f`).
        byzantine: usize,
        /// Updates averaged (`m`, at least 1).
        selected: usize,
    },
    /// FedAvg of the updates each clipped to L2 norm `max_norm` ([`NormClip`]).
    NormClip {
        /// The largest L2 norm an update keeps (finite, > 0).
        max_norm: f64,
    },
}

impl AggregatorSpec {
    /// The configuration spelling of the kind (`"fedavg"`, `"trimmed_mean"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            AggregatorSpec::FedAvg => "fedavg",
            AggregatorSpec::Median => "median",
            AggregatorSpec::TrimmedMean { .. } => "trimmed_mean",
            AggregatorSpec::Krum { .. } => "krum",
            AggregatorSpec::MultiKrum { .. } => "multi_krum",
            AggregatorSpec::NormClip { .. } => "norm_clip",
        }
    }

    /// Checks the parameters that do not depend on the round (`max_norm`, `selected`).
    pub fn check_params(&self) -> Result<(), AggregateError> {
        match *self {
            AggregatorSpec::MultiKrum { selected, .. } if selected == 0 => {
                Err(AggregateError::InvalidSelected { selected })
            }
            AggregatorSpec::NormClip { max_norm } if !(max_norm.is_finite() && max_norm > 0.0) => {
                Err(AggregateError::InvalidMaxNorm { max_norm })
            }
            _ => Ok(()),
        }
    }

    /// The fewest updates this aggregator accepts (1 for those without a requirement).
    pub fn min_updates(&self) -> usize {
        match *self {
            AggregatorSpec::FedAvg | AggregatorSpec::Median | AggregatorSpec::NormClip { .. } => 1,
            AggregatorSpec::TrimmedMean { trim } => trim.saturating_mul(2).saturating_add(1),
            AggregatorSpec::Krum { byzantine } => krum::min_updates(byzantine),
            AggregatorSpec::MultiKrum {
                byzantine,
                selected,
            } => krum::min_updates(byzantine).max(selected.saturating_add(byzantine)),
        }
    }

    /// Checks the parameters and that `n_updates` updates are enough: trimmed mean needs
    /// `n > 2 trim`, Krum `n > 2 byzantine + 2`, Multi-Krum also `n >= selected + byzantine`.
    pub fn validate(&self, n_updates: usize) -> Result<(), AggregateError> {
        self.check_params()?;
        require(*self, self.min_updates(), n_updates)
    }

    /// The aggregator this spec describes.
    pub fn aggregator(&self) -> Box<dyn Aggregator> {
        match *self {
            AggregatorSpec::FedAvg => Box::new(FedAvg),
            AggregatorSpec::Median => Box::new(Median),
            AggregatorSpec::TrimmedMean { trim } => Box::new(TrimmedMean { trim }),
            AggregatorSpec::Krum { byzantine } => Box::new(Krum { byzantine }),
            AggregatorSpec::MultiKrum {
                byzantine,
                selected,
            } => Box::new(MultiKrum {
                byzantine,
                selected,
            }),
            AggregatorSpec::NormClip { max_norm } => Box::new(NormClip { max_norm }),
        }
    }

    /// Validates against `updates.len()`, then aggregates with [`Self::aggregator`].
    pub fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        self.validate(updates.len())?;
        self.aggregator().aggregate(updates)
    }
}

impl std::fmt::Display for AggregatorSpec {
    /// `fedavg`, `trimmed_mean (trim = 1)`, `multi_krum (byzantine = 1, selected = 3)`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind();
        match *self {
            AggregatorSpec::FedAvg | AggregatorSpec::Median => write!(f, "{kind}"),
            AggregatorSpec::TrimmedMean { trim } => write!(f, "{kind} (trim = {trim})"),
            AggregatorSpec::Krum { byzantine } => write!(f, "{kind} (byzantine = {byzantine})"),
            AggregatorSpec::MultiKrum {
                byzantine,
                selected,
            } => write!(f, "{kind} (byzantine = {byzantine}, selected = {selected})"),
            AggregatorSpec::NormClip { max_norm } => write!(f, "{kind} (max_norm = {max_norm})"),
        }
    }
}

/// Applies `reduce` to every coordinate's `n` values (gathered into one reused buffer, in
/// update order, which `reduce` may permute): no allocation per coordinate.
fn coordinatewise(updates: &[Update<'_>], mut reduce: impl FnMut(&mut [f32]) -> f32) -> Vec<f32> {
    let d = updates.first().map_or(0, |u| u.delta.len());
    let mut column = vec![0.0f32; updates.len()];
    (0..d)
        .map(|j| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u.delta[j];
            }
            reduce(&mut column)
        })
        .collect()
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

    #[test]
    fn fedavg_through_the_trait_equals_fedavg() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [3.0f32, 6.0, -3.0];
        let updates = [
            Update {
                delta: &a,
                weight: 1.0,
            },
            Update {
                delta: &b,
                weight: 3.0,
            },
        ];
        let expected = fedavg(&[(&a, 1.0), (&b, 3.0)]).unwrap();
        for agg in [
            FedAvg.aggregate(&updates).unwrap(),
            AggregatorSpec::default().aggregate(&updates).unwrap(),
            AggregatorSpec::FedAvg
                .aggregator()
                .aggregate(&updates)
                .unwrap(),
        ] {
            assert_eq!(agg.delta, expected);
            assert_eq!(agg.selected, None);
        }
        assert_eq!(FedAvg.aggregate(&[]), Err(AggregateError::Empty));
    }

    #[test]
    fn spec_validation_carries_the_offending_values() {
        assert_eq!(AggregatorSpec::default(), AggregatorSpec::FedAvg);
        assert_eq!(AggregatorSpec::FedAvg.validate(1), Ok(()));
        assert_eq!(AggregatorSpec::Median.validate(1), Ok(()));
        let trimmed = AggregatorSpec::TrimmedMean { trim: 2 };
        assert_eq!(trimmed.validate(5), Ok(()));
        let err = trimmed.validate(4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "trimmed_mean (trim = 2) needs at least 5 updates, got 4"
        );
        let krum = AggregatorSpec::Krum { byzantine: 1 };
        assert_eq!(krum.validate(5), Ok(()));
        assert_eq!(
            krum.validate(4),
            Err(AggregateError::TooFewUpdates {
                aggregator: krum,
                needed: 5,
                got: 4
            })
        );
        // Multi-Krum: n > 2f + 2 and n >= m + f.
        let multi = AggregatorSpec::MultiKrum {
            byzantine: 1,
            selected: 5,
        };
        assert_eq!(multi.min_updates(), 6);
        assert!(multi.validate(5).is_err());
        assert_eq!(multi.validate(6), Ok(()));
        assert_eq!(
            AggregatorSpec::NormClip { max_norm: -1.0 }.validate(3),
            Err(AggregateError::InvalidMaxNorm { max_norm: -1.0 })
        );
        assert_eq!(
            AggregatorSpec::MultiKrum {
                byzantine: 0,
                selected: 0
            }
            .check_params(),
            Err(AggregateError::InvalidSelected { selected: 0 })
        );
        // Huge parameters saturate instead of overflowing.
        assert_eq!(
            AggregatorSpec::Krum {
                byzantine: usize::MAX
            }
            .min_updates(),
            usize::MAX
        );
    }

    #[test]
    fn spec_serde_spelling() {
        let cases = [
            (r#"{"kind":"fedavg"}"#, AggregatorSpec::FedAvg),
            (r#"{"kind":"median"}"#, AggregatorSpec::Median),
            (
                r#"{"kind":"trimmed_mean","trim":1}"#,
                AggregatorSpec::TrimmedMean { trim: 1 },
            ),
            (
                r#"{"kind":"krum","byzantine":2}"#,
                AggregatorSpec::Krum { byzantine: 2 },
            ),
            (
                r#"{"kind":"multi_krum","byzantine":1,"selected":3}"#,
                AggregatorSpec::MultiKrum {
                    byzantine: 1,
                    selected: 3,
                },
            ),
            (
                r#"{"kind":"norm_clip","max_norm":0.5}"#,
                AggregatorSpec::NormClip { max_norm: 0.5 },
            ),
        ];
        for (json, spec) in cases {
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            assert_eq!(serde_json::from_str::<AggregatorSpec>(json).unwrap(), spec);
            assert_eq!(spec.to_string().split(' ').next(), Some(spec.kind()));
        }
        assert!(serde_json::from_str::<AggregatorSpec>(r#"{"kind":"krum"}"#).is_err());
        let extra = r#"{"kind":"krum","byzantine":1,"trim":1}"#;
        assert!(serde_json::from_str::<AggregatorSpec>(extra).is_err());
        assert!(serde_json::from_str::<AggregatorSpec>(r#"{"kind":"bulyan"}"#).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// One update blown up in one coordinate cannot push the median or the trimmed
            /// mean (trim >= 1) outside the honest updates' range in that coordinate.
            #[test]
            fn one_outlier_stays_out_of_the_robust_aggregates(
                honest in prop::collection::vec(prop::collection::vec(-10.0f32..10.0, 4), 2..8),
                which in 0usize..4,
                blow in prop_oneof![Just(1e30f32), Just(-1e30f32)],
            ) {
                let mut outlier = honest[0].clone();
                outlier[which] = blow;
                let mut all = honest.clone();
                all.push(outlier);
                let updates: Vec<Update<'_>> = all
                    .iter()
                    .map(|v| Update { delta: v, weight: 1.0 })
                    .collect();
                let lo = honest.iter().map(|v| v[which]).fold(f32::INFINITY, f32::min);
                let hi = honest.iter().map(|v| v[which]).fold(f32::NEG_INFINITY, f32::max);
                let median = Median.aggregate(&updates).unwrap().delta;
                let trimmed = TrimmedMean { trim: 1 }.aggregate(&updates).unwrap().delta;
                for value in [median[which], trimmed[which]] {
                    prop_assert!(lo <= value && value <= hi, "{value} outside [{lo}, {hi}]");
                }
                // FedAvg, by contrast, is dragged far away.
                let mean = FedAvg.aggregate(&updates).unwrap().delta;
                prop_assert!(mean[which].abs() > 1e20);
            }
        }
    }
}
