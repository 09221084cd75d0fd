//! Krum and Multi-Krum (Blanchard et al. 2017): score every update by the sum of its
//! squared L2 distances to its `n - f - 2` nearest other updates, where `f` is the number of
//! adversaries tolerated. Krum returns the lowest-scoring update; Multi-Krum averages the
//! `m` lowest-scoring updates, **sample-weighted** like FedAvg (the selection is what
//! makes it robust; within the selection the usual weighting applies).
//!
//! Pairwise distances are computed once (n (n - 1) / 2 of them, O(n^2 d)) in f64; each
//! score then takes the `n - f - 2` smallest of a row with `select_nth_unstable`. Ties in
//! score go to the lower index, so the choice is deterministic.

use super::check_updates;
use super::{Aggregate, AggregateError, Aggregator, AggregatorSpec, Update, WeightedSum};

/// The fewest updates Krum with `byzantine` adversaries accepts: `2 byzantine + 3`.
pub(super) fn min_updates(byzantine: usize) -> usize {
    byzantine.saturating_mul(2).saturating_add(3)
}

/// Krum: the single update with the lowest score; needs more than `2 byzantine + 2`
/// updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Krum {
    /// Adversaries tolerated (`f`).
    pub byzantine: usize,
}

/// Multi-Krum: the sample-weighted mean of the `selected` lowest-scoring updates; needs
/// more than `2 byzantine + 2` updates and at least `selected + byzantine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiKrum {
    /// Adversaries tolerated (`f`).
    pub byzantine: usize,
    /// Updates averaged (`m`, at least 1).
    pub selected: usize,
}

impl Aggregator for Krum {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        let (_, n) = check_updates(updates)?;
        AggregatorSpec::Krum {
            byzantine: self.byzantine,
        }
        .validate(n)?;
        let order = ranking(updates, self.byzantine);
        let best = order[0];
        Ok(Aggregate {
            delta: updates[best].delta.to_vec(),
            selected: Some(vec![best]),
        })
    }
}

impl Aggregator for MultiKrum {
    fn aggregate(&self, updates: &[Update<'_>]) -> Result<Aggregate, AggregateError> {
        let (first, n) = check_updates(updates)?;
        AggregatorSpec::MultiKrum {
            byzantine: self.byzantine,
            selected: self.selected,
        }
        .validate(n)?;
        let mut order = ranking(updates, self.byzantine);
        order.truncate(self.selected);
        let mut acc = WeightedSum::new(first.len());
        for &i in &order {
            acc.add(updates[i].delta, updates[i].weight)?;
        }
        let mut delta = vec![0.0; first.len()];
        acc.mean_into(&mut delta)?;
        Ok(Aggregate {
            delta,
            selected: Some(order),
        })
    }
}

/// Every update's index ordered by Krum score (lowest first, ties by index). The caller
/// has checked `n > 2 byzantine + 2`, so every score sums at least one distance.
fn ranking(updates: &[Update<'_>], byzantine: usize) -> Vec<usize> {
    let n = updates.len();
    let nearest = n - byzantine - 2;
    let mut dist = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d = squared_distance(updates[i].delta, updates[j].delta);
            dist[i * n + j] = d;
            dist[j * n + i] = d;
        }
    }
    let mut row = Vec::with_capacity(n - 1);
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            row.clear();
            row.extend((0..n).filter(|&j| j != i).map(|j| dist[i * n + j]));
            let (closest, kth, _) = row.select_nth_unstable_by(nearest - 1, f64::total_cmp);
            closest.iter().sum::<f64>() + *kth
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order
}

/// `|a - b|^2`, accumulated in f64.
fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
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

    /// Four honest updates near (1, 1) and `far` adversaries far away.
    fn honest_and_far() -> Vec<Vec<f32>> {
        vec![
            vec![1.0, 1.0],
            vec![2.0, 1.0],
            vec![1.0, 2.0],
            vec![0.0, 1.0],
            vec![100.0, -100.0],
            vec![-100.0, 100.0],
        ]
    }

    #[test]
    fn scores_by_hand() {
        // n = 4, f = 0: each score sums the n - f - 2 = 2 nearest squared distances.
        let vs = vec![vec![0.0], vec![1.0], vec![3.0], vec![10.0]];
        // 0: {1, 9, 100} -> 1 + 9 = 10; 1: {1, 4, 81} -> 5; 2: {9, 4, 49} -> 13;
        // 3: {100, 81, 49} -> 130. Order: 1, 0, 2, 3.
        assert_eq!(ranking(&ups(&vs), 0), vec![1, 0, 2, 3]);
        let agg = Krum { byzantine: 0 }.aggregate(&ups(&vs)).unwrap();
        assert_eq!(agg.delta, vec![1.0]);
        assert_eq!(agg.selected, Some(vec![1]));
    }

    #[test]
    fn krum_picks_an_honest_update_when_adversaries_are_far() {
        let vs = honest_and_far();
        // n = 6, f = 2 (6 > 2 * 2 + 2 = 6 fails), so tolerate f = 1 with n = 6 > 4.
        let agg = Krum { byzantine: 1 }.aggregate(&ups(&vs)).unwrap();
        // n - f - 2 = 3 nearest: (1, 1) is at squared distance 1, 1, 1 from the others.
        assert_eq!(agg.selected, Some(vec![0]));
        assert_eq!(agg.delta, vec![1.0, 1.0]);
    }

    #[test]
    fn multi_krum_averages_the_closest_sample_weighted() {
        let vs = honest_and_far();
        let mut updates = ups(&vs);
        updates[1].weight = 3.0;
        let agg = MultiKrum {
            byzantine: 1,
            selected: 4,
        }
        .aggregate(&updates)
        .unwrap();
        let mut picked = agg.selected.clone().unwrap();
        assert_eq!(picked[0], 0, "the best score comes first");
        picked.sort_unstable();
        assert_eq!(picked, vec![0, 1, 2, 3]);
        // (1 * (1, 1) + 3 * (2, 1) + 1 * (1, 2) + 1 * (0, 1)) / 6 = (8/6, 7/6).
        assert_eq!(
            agg.delta,
            vec![(8.0f64 / 6.0) as f32, (7.0f64 / 6.0) as f32]
        );
    }

    #[test]
    fn needs_enough_updates() {
        let vs = honest_and_far();
        assert_eq!(
            Krum { byzantine: 2 }.aggregate(&ups(&vs)),
            Err(AggregateError::TooFewUpdates {
                aggregator: AggregatorSpec::Krum { byzantine: 2 },
                needed: 7,
                got: 6
            })
        );
        let too_many = MultiKrum {
            byzantine: 1,
            selected: 6,
        };
        assert_eq!(
            too_many.aggregate(&ups(&vs)),
            Err(AggregateError::TooFewUpdates {
                aggregator: AggregatorSpec::MultiKrum {
                    byzantine: 1,
                    selected: 6
                },
                needed: 7,
                got: 6
            })
        );
        let none = MultiKrum {
            byzantine: 0,
            selected: 0,
        };
        assert_eq!(
            none.aggregate(&ups(&vs)),
            Err(AggregateError::InvalidSelected { selected: 0 })
        );
    }
}
