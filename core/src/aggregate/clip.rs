//! Norm clipping: every update is scaled down to L2 norm at most `max_norm` (updates
//! already within the bound are untouched), then the clipped updates are averaged with
//! FedAvg. One oversized update can then move the aggregate by at most `max_norm` times its
//! weight share. [`clip_to_norm`] is the one clipping routine (RFFL's client-side clipping
//! uses the same rule).

use super::check_updates;
use super::{Aggregate, AggregateError, Aggregator, AggregatorSpec, Update, WeightedSum};

/// FedAvg of the updates clipped to L2 norm `max_norm` (finite, > 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormClip {
    /// The largest L2 norm an update keeps.
    pub max_norm: f64,
}

impl Aggregator for NormClip {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        let (first, n) = check_updates(updates)?;
        AggregatorSpec::NormClip {
            max_norm: self.max_norm,
        }
        .validate(n)?;
        let mut acc = WeightedSum::new(first.len());
        let mut clipped = vec![0.0f32; first.len()];
        for u in updates {
            clipped.copy_from_slice(u.delta);
            clip_to_norm(&mut clipped, self.max_norm);
            acc.add(&clipped, u.weight)?;
        }
        let mut delta = vec![0.0; first.len()];
        acc.mean_into(&mut delta)?;
        Ok(Aggregate::all(delta))
    }
}

/// Scales `v` in place so its L2 norm (computed in f64) is at most `max_norm`; returns the
/// factor applied (1 when `v` was within the bound, or when its norm is not finite: such
/// an update is refused elsewhere, and scaling it would only hide the problem).
pub fn clip_to_norm(v: &mut [f32], max_norm: f64) -> f64 {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm <= max_norm {
        return 1.0;
    }
    let scale = max_norm / norm;
    for x in v.iter_mut() {
        *x = (f64::from(*x) * scale) as f32;
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn clips_long_updates_to_exactly_the_bound() {
        let mut v = vec![6.0f32, 8.0];
        assert_eq!(clip_to_norm(&mut v, 5.0), 0.5);
        assert_eq!(v, vec![3.0, 4.0]);
        assert_eq!(norm(&v), 5.0);
        let mut short = vec![0.3f32, -0.4];
        assert_eq!(clip_to_norm(&mut short, 5.0), 1.0);
        assert_eq!(short, vec![0.3, -0.4]);
    }

    #[test]
    fn aggregates_the_clipped_updates() {
        let long = [6.0f32, 8.0];
        let short = [1.0f32, -1.0];
        let updates = [
            Update {
                delta: &long,
                weight: 1.0,
            },
            Update {
                delta: &short,
                weight: 3.0,
            },
        ];
        // (1 * (3, 4) + 3 * (1, -1)) / 4 = (1.5, 0.25).
        let agg = NormClip { max_norm: 5.0 }.aggregate(&updates).unwrap();
        assert_eq!(agg.delta, vec![1.5, 0.25]);
        assert_eq!(agg.selected, None);
    }

    #[test]
    fn rejects_a_bad_bound() {
        let v = [1.0f32];
        let updates = [Update {
            delta: &v,
            weight: 1.0,
        }];
        for max_norm in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = NormClip { max_norm }.aggregate(&updates).unwrap_err();
            assert!(
                matches!(err, AggregateError::InvalidMaxNorm { max_norm: m } if m.to_bits() == max_norm.to_bits()),
                "{err}"
            );
        }
    }
}
