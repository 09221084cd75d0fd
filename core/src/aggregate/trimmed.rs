//! Trimmed mean: per coordinate, drop the `trim` largest and `trim` smallest values and
//! average the `n - 2 trim` left (a plain mean: weights are ignored, as for the median, so
//! no client can buy influence with a large sample count).
//!
//! Two `select_nth_unstable` passes per coordinate on one reused buffer: O(n) each.

use super::{
    Aggregate, AggregateError, Aggregator, AggregatorSpec, Update, check_updates, coordinatewise,
};

/// The coordinate-wise trimmed mean; needs more than `2 trim` updates (`trim = 0` is the
/// plain mean).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrimmedMean {
    /// Values dropped at each end of every coordinate.
    pub trim: usize,
}

impl Aggregator for TrimmedMean {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        let (_, n) = check_updates(updates)?;
        AggregatorSpec::TrimmedMean { trim: self.trim }.validate(n)?;
        let k = self.trim;
        Ok(Aggregate::all(coordinatewise(updates, |values| {
            trimmed_mean_of(values, k)
        })))
    }
}

/// The mean of `values` without its `k` smallest and `k` largest (`values.len() > 2k`),
/// permuting them.
fn trimmed_mean_of(values: &mut [f32], k: usize) -> f32 {
    let n = values.len();
    let keep = n - 2 * k;
    // After the first pass the k smallest are in front; the second puts the k largest of
    // the rest behind the `keep` middle values.
    let rest = if k == 0 {
        &mut values[..]
    } else {
        values.select_nth_unstable_by(k - 1, f32::total_cmp).2
    };
    let middle = if k == 0 {
        rest
    } else {
        rest.select_nth_unstable_by(keep, f32::total_cmp).0
    };
    let sum: f64 = middle.iter().map(|&x| f64::from(x)).sum();
    (sum / keep as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups<'a>(vs: &'a [Vec<f32>]) -> Vec<Update<'a>> {
        vs.iter()
            .map(|v| Update {
                delta: v,
                weight: 1.0,
            })
            .collect()
    }

    #[test]
    fn drops_the_extremes_and_averages_the_rest() {
        let vs = vec![
            vec![1.0, 10.0],
            vec![-50.0, 20.0],
            vec![3.0, 30.0],
            vec![2.0, 40.0],
            vec![90.0, -1.0],
        ];
        // trim 1: coordinate 0 keeps 1, 2, 3 -> 2; coordinate 1 keeps 10, 20, 30 -> 20.
        let agg = TrimmedMean { trim: 1 }.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![2.0, 20.0]);
        // trim 2 is the median of five.
        let agg = TrimmedMean { trim: 2 }.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![2.0, 20.0]);
        // trim 0 is the plain mean: (1 - 50 + 3 + 2 + 90) / 5 = 9.2, (10+20+30+40-1)/5 = 19.8.
        let agg = TrimmedMean { trim: 0 }.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![9.2, 19.8]);
    }

    #[test]
    fn even_count_keeps_the_middle() {
        let vs = vec![
            vec![4.0],
            vec![-8.0],
            vec![1.0],
            vec![6.0],
            vec![0.0],
            vec![7.0],
        ];
        // trim 2 of -8, 0, 1, 4, 6, 7 keeps 1 and 4.
        let agg = TrimmedMean { trim: 2 }.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![2.5]);
    }

    #[test]
    fn needs_more_than_twice_trim_updates() {
        let vs = vec![vec![1.0]; 4];
        assert_eq!(
            TrimmedMean { trim: 2 }.aggregate(&ups(&vs)),
            Err(AggregateError::TooFewUpdates {
                aggregator: AggregatorSpec::TrimmedMean { trim: 2 },
                needed: 5,
                got: 4
            })
        );
        assert!(TrimmedMean { trim: 1 }.aggregate(&ups(&vs)).is_ok());
    }
}
