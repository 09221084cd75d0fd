//! Splitting a data set's rows across simulated clients.
//!
//! Every function returns row indices (not copies of the data), one sorted `Vec<usize>` per
//! client; the clients' index sets are disjoint. All randomness comes from the caller's RNG,
//! so the same seed gives the same partition.
//!
//! - [`iid`]: a uniformly random split into near-equal parts.
//! - [`dirichlet_label_skew`]: for each class, proportions `p ~ Dir(alpha)` over clients
//!   decide who gets that class's rows (small alpha: each client sees few labels; large
//!   alpha: close to IID). Redrawn until every client has its minimum.
//! - [`quantity_skew`]: client sizes follow `Dir(alpha)` on top of a guaranteed minimum,
//!   with rows assigned at random (labels stay IID).
//! - [`train_test_split`]: a seeded hold-out split.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma};

use super::DataError;

/// How many Dirichlet draws [`dirichlet_label_skew`] attempts before giving up.
pub const MAX_DIRICHLET_TRIES: usize = 1000;

/// Splits `0..n` into (train, test), each sorted; the test part has `round(n *
/// test_fraction)` rows. `test_fraction` is clamped into [0, 1] (NaN counts as 0).
pub fn train_test_split(
    n: usize,
    test_fraction: f64,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<usize>) {
    let fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let n_test = ((n as f64 * fraction).round() as usize).min(n);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    let mut train = perm.split_off(n_test);
    let mut test = perm;
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Splits `0..n` uniformly at random into `clients` parts whose sizes differ by at most one.
/// Every client gets at least one row.
pub fn iid(n: usize, clients: usize, rng: &mut impl Rng) -> Result<Vec<Vec<usize>>, DataError> {
    check_sizes(n, clients, 1)?;
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    let sizes: Vec<usize> = (0..clients)
        .map(|c| n / clients + usize::from(c < n % clients))
        .collect();
    Ok(split_by_sizes(&perm, &sizes))
}

/// Label-skewed split of all rows: for each class, client shares are drawn from
/// `Dir(alpha)` and the class's shuffled rows are cut accordingly. The whole draw is repeated
/// (at most [`MAX_DIRICHLET_TRIES`] times) until every client has at least `min_per_client`
/// rows.
pub fn dirichlet_label_skew(
    labels: &[u32],
    num_classes: usize,
    clients: usize,
    alpha: f64,
    min_per_client: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    check_sizes(labels.len(), clients, min_per_client)?;
    let gamma = gamma(alpha)?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (row, &label) in labels.iter().enumerate() {
        match by_class.get_mut(label as usize) {
            Some(rows) => rows.push(row),
            None => {
                return Err(DataError::LabelOutOfRange {
                    row,
                    label,
                    num_classes,
                });
            }
        }
    }
    for _ in 0..MAX_DIRICHLET_TRIES {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        for rows in &mut by_class {
            rows.shuffle(rng);
            let shares = dirichlet(&gamma, clients, rng);
            let sizes = apportion(rows.len(), &shares);
            for (part, chunk) in parts.iter_mut().zip(split_by_sizes(rows, &sizes)) {
                part.extend(chunk);
            }
        }
        if parts.iter().all(|p| p.len() >= min_per_client) {
            for p in &mut parts {
                p.sort_unstable();
            }
            return Ok(parts);
        }
    }
    Err(DataError::SkewUnsatisfiable {
        alpha,
        clients,
        min_per_client,
        tries: MAX_DIRICHLET_TRIES,
    })
}

/// Quantity-skewed split of `0..n`: every client first gets `min_per_client` rows, the rest
/// are shared out in proportions drawn from `Dir(alpha)`; which rows go where is uniformly
/// random.
pub fn quantity_skew(
    n: usize,
    clients: usize,
    alpha: f64,
    min_per_client: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<usize>>, DataError> {
    check_sizes(n, clients, min_per_client)?;
    let gamma = gamma(alpha)?;
    let spare = n - clients * min_per_client;
    let shares = dirichlet(&gamma, clients, rng);
    let sizes: Vec<usize> = apportion(spare, &shares)
        .into_iter()
        .map(|s| s + min_per_client)
        .collect();
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    Ok(split_by_sizes(&perm, &sizes))
}

/// Rejects zero clients and `n < clients * min_per_client`.
fn check_sizes(n: usize, clients: usize, min_per_client: usize) -> Result<(), DataError> {
    if clients == 0 {
        return Err(DataError::NoClients);
    }
    let needed = clients.saturating_mul(min_per_client);
    if n < needed {
        return Err(DataError::TooFewSamples {
            n,
            clients,
            min_per_client,
            needed,
        });
    }
    Ok(())
}

/// The Gamma(alpha, 1) distribution used to draw Dirichlet samples; rejects alpha <= 0,
/// NaN and infinity.
fn gamma(alpha: f64) -> Result<Gamma<f64>, DataError> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(DataError::InvalidAlpha { alpha });
    }
    Gamma::new(alpha, 1.0).map_err(|_| DataError::InvalidAlpha { alpha })
}

/// One draw from a symmetric Dirichlet over `k` components: normalised Gamma variates.
/// With tiny alpha every variate can underflow to 0; then one uniformly chosen component
/// takes everything (the limit of Dir(alpha) as alpha -> 0).
fn dirichlet(gamma: &Gamma<f64>, k: usize, rng: &mut impl Rng) -> Vec<f64> {
    let mut draws: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let total: f64 = draws.iter().sum();
    if total > 0.0 && total.is_finite() {
        for d in &mut draws {
            *d /= total;
        }
    } else {
        draws.fill(0.0);
        let winner = rng.random_range(0..k);
        draws[winner] = 1.0;
    }
    draws
}

/// Integer sizes summing exactly to `total`, proportional to `shares` (which sum to 1):
/// cut points are the rounded cumulative shares.
fn apportion(total: usize, shares: &[f64]) -> Vec<usize> {
    let mut sizes = Vec::with_capacity(shares.len());
    let mut cum = 0.0;
    let mut prev = 0usize;
    for (i, s) in shares.iter().enumerate() {
        cum += s;
        let cut = if i + 1 == shares.len() {
            total
        } else {
            ((cum * total as f64).round() as usize).clamp(prev, total)
        };
        sizes.push(cut - prev);
        prev = cut;
    }
    sizes
}

/// Cuts `items` into consecutive runs of the given sizes (which sum to `items.len()`).
fn split_by_sizes(items: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let end = (start + s).min(items.len());
            let mut part = items[start..end].to_vec();
            part.sort_unstable();
            start = end;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// Asserts the parts are disjoint, sorted, and cover exactly `0..n`.
    fn assert_partition(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![false; n];
        for p in parts {
            assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
            for &i in p {
                assert!(!seen[i], "index {i} in two parts");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "every index covered");
    }

    /// 1000 rows, 10 classes of 100 each.
    fn labels() -> Vec<u32> {
        (0..1000).map(|i| (i % 10) as u32).collect()
    }

    #[test]
    fn train_test_split_is_a_partition() {
        let (train, test) = train_test_split(100, 0.2, &mut rng(1));
        assert_eq!((train.len(), test.len()), (80, 20));
        assert_partition(&[train.clone(), test.clone()], 100);
        assert_eq!(train_test_split(100, 0.2, &mut rng(1)), (train, test));
        assert_eq!(train_test_split(10, 2.0, &mut rng(1)).1.len(), 10);
        assert_eq!(train_test_split(10, f64::NAN, &mut rng(1)).1.len(), 0);
    }

    #[test]
    fn iid_is_balanced_partition() {
        let parts = iid(103, 10, &mut rng(2)).unwrap();
        assert_partition(&parts, 103);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![11, 11, 11, 10, 10, 10, 10, 10, 10, 10]);
        assert_eq!(iid(103, 10, &mut rng(2)).unwrap(), parts);
        assert_ne!(iid(103, 10, &mut rng(3)).unwrap(), parts);
    }

    #[test]
    fn dirichlet_is_deterministic_partition() {
        let l = labels();
        let a = dirichlet_label_skew(&l, 10, 8, 0.5, 10, &mut rng(4)).unwrap();
        assert_partition(&a, 1000);
        assert!(a.iter().all(|p| p.len() >= 10));
        assert_eq!(
            dirichlet_label_skew(&l, 10, 8, 0.5, 10, &mut rng(4)).unwrap(),
            a
        );
    }

    /// Mean over clients of the share of a client's rows held by its two most common labels.
    fn top2_share(parts: &[Vec<usize>], labels: &[u32]) -> f64 {
        let shares: Vec<f64> = parts
            .iter()
            .map(|p| {
                let mut counts = [0usize; 10];
                for &i in p {
                    counts[labels[i] as usize] += 1;
                }
                counts.sort_unstable_by(|a, b| b.cmp(a));
                (counts[0] + counts[1]) as f64 / p.len() as f64
            })
            .collect();
        shares.iter().sum::<f64>() / shares.len() as f64
    }

    #[test]
    fn dirichlet_alpha_controls_skew() {
        let l = labels();
        let skewed = dirichlet_label_skew(&l, 10, 10, 0.1, 5, &mut rng(5)).unwrap();
        let uniform = dirichlet_label_skew(&l, 10, 10, 1000.0, 5, &mut rng(5)).unwrap();
        assert_partition(&skewed, 1000);
        assert_partition(&uniform, 1000);
        // Near-uniform: two labels hold about 2/10 of each client's rows.
        assert!(
            top2_share(&uniform, &l) < 0.3,
            "{}",
            top2_share(&uniform, &l)
        );
        // Skewed: two labels dominate most clients.
        assert!(top2_share(&skewed, &l) > 0.7, "{}", top2_share(&skewed, &l));
    }

    #[test]
    fn dirichlet_errors() {
        let l = labels();
        assert!(matches!(
            dirichlet_label_skew(&l, 10, 0, 1.0, 0, &mut rng(0)),
            Err(DataError::NoClients)
        ));
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                dirichlet_label_skew(&l, 10, 2, alpha, 0, &mut rng(0)),
                Err(DataError::InvalidAlpha { .. })
            ));
        }
        assert!(matches!(
            dirichlet_label_skew(&l, 10, 11, 1.0, 100, &mut rng(0)),
            Err(DataError::TooFewSamples { needed: 1100, .. })
        ));
        assert!(matches!(
            dirichlet_label_skew(&l, 5, 2, 1.0, 0, &mut rng(0)),
            Err(DataError::LabelOutOfRange { row: 5, .. })
        ));
        // Tiny alpha puts each class on one client: 20 clients cannot all get 60 rows.
        assert!(matches!(
            dirichlet_label_skew(&l, 10, 16, 0.001, 60, &mut rng(0)),
            Err(DataError::SkewUnsatisfiable {
                tries: MAX_DIRICHLET_TRIES,
                ..
            })
        ));
    }

    #[test]
    fn quantity_skew_sizes() {
        let parts = quantity_skew(1000, 10, 0.3, 20, &mut rng(6)).unwrap();
        assert_partition(&parts, 1000);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&s| s >= 20));
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min > 100, "alpha 0.3 gives unequal sizes: {sizes:?}");
        assert_eq!(
            quantity_skew(1000, 10, 0.3, 20, &mut rng(6)).unwrap(),
            parts
        );
        let even = quantity_skew(1000, 10, 1e6, 0, &mut rng(6)).unwrap();
        assert!(even.iter().all(|p| (95..=105).contains(&p.len())));
        assert!(matches!(
            quantity_skew(10, 3, 1.0, 4, &mut rng(0)),
            Err(DataError::TooFewSamples { .. })
        ));
        assert!(matches!(
            quantity_skew(10, 3, 0.0, 1, &mut rng(0)),
            Err(DataError::InvalidAlpha { .. })
        ));
    }

    #[test]
    fn apportion_sums_exactly() {
        assert_eq!(apportion(10, &[0.25, 0.25, 0.5]), vec![3, 2, 5]);
        assert_eq!(apportion(0, &[0.5, 0.5]), vec![0, 0]);
        assert_eq!(apportion(7, &[1.0, 0.0]), vec![7, 0]);
    }
}
