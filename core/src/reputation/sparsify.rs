//! RFFL rewards: each client downloads the aggregate sparsified per layer in proportion to
//! its reputation, so better contributors end with better models.
//!
//! Per layer of `len` values a client with reward fraction `q` keeps the
//! `k = min(ceil(q * len), len - 1)` largest-magnitude entries (entries tied with the
//! `k`-th magnitude are kept too, so ties never depend on the order of the values) and
//! zeroes the rest; `q = 0` gets nothing. The `len - 1` cap follows the reference: even
//! the best contributor never downloads a layer whole, and a 1-value layer is never sent.

use crate::model::Layer;

use super::ReputationError;

/// Slack when rounding `q * len` up, so that e.g. `0.3 * 10 = 3.0000000000000004` gives 3.
const ROUND_SLACK: f64 = 1e-9;

/// The nominal number of entries `k` a client with reward fraction `q` receives per
/// layer (before ties). `q` is clamped to `[0, 1]`; a NaN `q` counts as 0.
pub fn reward_counts(q: f64, layers: &[Layer]) -> Vec<usize> {
    layers
        .iter()
        .map(|layer| layer_count(q, layer.len))
        .collect()
}

fn layer_count(q: f64, len: usize) -> usize {
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let k = (q * len as f64 - ROUND_SLACK).ceil().max(0.0) as usize;
    k.min(len.saturating_sub(1))
}

/// Client reward: `u` with, in each layer, only the entries whose magnitude is at least
/// the `k`-th largest magnitude of that layer kept (`k` from [`reward_counts`]); all other
/// entries, including any outside every layer, are 0.
///
/// Errors if a layer reaches past the end of `u`.
pub fn sparsified_reward(u: &[f32], q: f64, layers: &[Layer]) -> Result<Vec<f32>, ReputationError> {
    let mut out = vec![0.0f32; u.len()];
    for layer in layers {
        let range = layer
            .offset
            .checked_add(layer.len)
            .filter(|&end| end <= u.len())
            .map(|end| layer.offset..end)
            .ok_or(ReputationError::LayerOutOfBounds {
                name: layer.name,
                offset: layer.offset,
                len: layer.len,
                total: u.len(),
            })?;
        let k = layer_count(q, layer.len);
        let (Some(src), Some(dst)) = (u.get(range.clone()), out.get_mut(range)) else {
            continue;
        };
        if k == 0 {
            continue;
        }
        let mut magnitudes: Vec<f32> = src.iter().map(|x| x.abs()).collect();
        // The k-th largest magnitude: index k - 1 in descending order.
        let (_, &mut kth, _) = magnitudes.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        for (d, &s) in dst.iter_mut().zip(src) {
            if s.abs() >= kth {
                *d = s;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [Layer; 2] = [
        Layer {
            name: "weight",
            offset: 0,
            len: 10,
        },
        Layer {
            name: "bias",
            offset: 10,
            len: 4,
        },
    ];

    fn kept(v: &[f32]) -> usize {
        v.iter().filter(|&&x| x != 0.0).count()
    }

    #[test]
    fn counts_per_layer() {
        // ceil(q * len), capped at len - 1.
        assert_eq!(reward_counts(0.0, &LAYERS), vec![0, 0]);
        assert_eq!(reward_counts(0.05, &LAYERS), vec![1, 1]); // ceil(0.5), ceil(0.2)
        assert_eq!(reward_counts(0.3, &LAYERS), vec![3, 2]); // 0.3 * 10 = 3 exactly
        assert_eq!(reward_counts(0.75, &LAYERS), vec![8, 3]); // ceil(7.5), 3
        assert_eq!(reward_counts(1.0, &LAYERS), vec![9, 3]); // len - 1
        assert_eq!(reward_counts(f64::NAN, &LAYERS), vec![0, 0]);
        let tiny = [Layer {
            name: "b",
            offset: 0,
            len: 1,
        }];
        assert_eq!(reward_counts(1.0, &tiny), vec![0]);
    }

    #[test]
    fn keeps_the_largest_magnitudes_per_layer() {
        let u: Vec<f32> = (1..=14)
            .map(|i| if i % 2 == 0 { -(i as f32) } else { i as f32 })
            .collect();
        // q = 0.3: weight keeps 3 of 10 (|-10|, 9, |-8|), bias keeps 2 of 4 (|-14|, 13).
        let r = sparsified_reward(&u, 0.3, &LAYERS).unwrap();
        let mut want = vec![0.0f32; 14];
        want[7..10].copy_from_slice(&[-8.0, 9.0, -10.0]);
        want[12..14].copy_from_slice(&[13.0, -14.0]);
        assert_eq!(r, want);
        // q = 1: len - 1 per layer, the smallest magnitude of each layer is dropped.
        let r = sparsified_reward(&u, 1.0, &LAYERS).unwrap();
        assert_eq!(kept(&r[..10]), 9);
        assert_eq!(r[0], 0.0);
        assert_eq!(kept(&r[10..]), 3);
        assert_eq!(r[10], 0.0);
        // q = 0: nothing.
        assert_eq!(sparsified_reward(&u, 0.0, &LAYERS).unwrap(), vec![0.0; 14]);
    }

    #[test]
    fn ties_with_the_kth_magnitude_are_kept() {
        // k = ceil(0.2 * 10) = 2; magnitudes 5, 4, 4, 4 ...: the 2nd largest is 4, so all
        // three 4s (of either sign) are kept: 4 entries.
        let mut u = vec![1.0f32; 14];
        u[..5].copy_from_slice(&[4.0, 5.0, -4.0, 2.0, 4.0]);
        let r = sparsified_reward(&u, 0.2, &LAYERS).unwrap();
        assert_eq!(&r[..5], &[4.0, 5.0, -4.0, 0.0, 4.0]);
        assert_eq!(kept(&r[..10]), 4);
        // Bias layer: all magnitudes tie at 1, k = 1 -> all 4 kept.
        assert_eq!(&r[10..], &[1.0; 4]);
    }

    #[test]
    fn layers_must_fit() {
        let err = sparsified_reward(&[1.0; 12], 0.5, &LAYERS).unwrap_err();
        assert!(matches!(
            err,
            ReputationError::LayerOutOfBounds {
                name: "bias",
                total: 12,
                ..
            }
        ));
    }
}
