//! Coordinate-wise median: each coordinate of the aggregate is the median of that
//! coordinate over the updates (the mean of the two middle values for an even count).
//!
//! Updates count equally (weights are ignored): a weighted median would let one client
//! claiming many samples decide the result, which is what a robust aggregator must avoid.
//! Each coordinate costs O(n) with `select_nth_unstable` on one reused buffer.

use super::{Aggregate, AggregateError, Aggregator, Update, check_updates, coordinatewise};

/// The coordinate-wise median aggregator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Median;

impl Aggregator for Median {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        check_updates(updates)?;
        Ok(Aggregate::all(coordinatewise(updates, median_of)))
    }
}

/// The median of `values` (non-empty, finite), permuting them; for an even count the mean
/// (in f64) of the two middle values.
fn median_of(values: &mut [f32]) -> f32 {
    let n = values.len();
    let (lower, upper, _) = values.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n % 2 == 1 {
        return *upper;
    }
    // Even n: `upper` is the (n/2 + 1)-th smallest; the n/2-th is the largest below it.
    let below = lower.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ((f64::from(below) + f64::from(*upper)) / 2.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorSpec;

    fn ups<'a>(vs: &'a [Vec<f32>]) -> Vec<Update<'a>> {
        vs.iter()
            .map(|v| Update {
                delta: v,
                weight: 1.0,
            })
            .collect()
    }

    #[test]
    fn odd_count_takes_the_middle_value() {
        let vs = vec![
            vec![1.0, -5.0, 3.0],
            vec![9.0, 0.0, 3.0],
            vec![2.0, 7.0, -1.0],
        ];
        let agg = Median.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![2.0, 0.0, 3.0]);
        assert_eq!(agg.selected, None);
    }

    #[test]
    fn even_count_averages_the_two_middle_values() {
        let vs = vec![
            vec![4.0, 1.0],
            vec![1.0, 1.0],
            vec![100.0, -3.0],
            vec![2.0, 2.0],
        ];
        // Coordinate 0: sorted 1, 2, 4, 100 -> (2 + 4) / 2; coordinate 1: -3, 1, 1, 2 -> 1.
        assert_eq!(Median.aggregate(&ups(&vs)).unwrap().delta, vec![3.0, 1.0]);
        // Weights do not matter.
        let mut weighted = ups(&vs);
        weighted[2].weight = 1e6;
        assert_eq!(Median.aggregate(&weighted).unwrap().delta, vec![3.0, 1.0]);
        // Through the spec as well.
        assert_eq!(
            AggregatorSpec::Median.aggregate(&ups(&vs)).unwrap().delta,
            vec![3.0, 1.0]
        );
    }

    #[test]
    fn one_update_is_its_own_median() {
        let vs = vec![vec![0.5, -0.25]];
        assert_eq!(Median.aggregate(&ups(&vs)).unwrap().delta, vs[0]);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Median.aggregate(&[]), Err(AggregateError::Empty));
        let vs = vec![vec![1.0, f32::NAN]];
        assert_eq!(
            Median.aggregate(&ups(&vs)),
            Err(AggregateError::NonFinite {
                update: 0,
                index: 1
            })
        );
    }
}
