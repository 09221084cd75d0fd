//! Coalition sampling shared by SVARM and Stratified SVARM: a [`Mask`] abstraction over
//! the coalition representation (a plain `u64` for up to 64 players, the fast path, and
//! [`Coalition`] bitsets beyond), uniform subset draws, a size sampler, per-player
//! stratum moments and the budget/player checks both estimators share.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rand::Rng;

use super::{Coalition, ValuationError};

/// A coalition as the SVARM estimators manipulate it in their hot loops. Implemented by
/// `u64` (players `0..64`, allocation-free) and by [`Coalition`] (any `n`); the estimators
/// are generic over it and pick `u64` whenever `n <= 64`.
pub(crate) trait Mask: Clone + Eq + Hash {
    /// The empty coalition of `n` players.
    fn empty(n: usize) -> Self;
    /// Adds player `i < n`.
    fn insert(&mut self, i: usize);
    /// The number of members.
    fn size(&self) -> usize;
    /// The players of `0..n` not in `self`.
    fn complement(&self, n: usize) -> Self;
    /// Calls `f` on every member, lowest first.
    fn for_each_member(&self, f: impl FnMut(usize));
    /// Calls `f` on every player of `0..n` that is not a member, lowest first.
    fn for_each_absent(&self, n: usize, f: impl FnMut(usize));
    /// The coalition to evaluate.
    fn coalition(&self, n: usize) -> Coalition;

    /// The coalition holding `players` (all `< n`).
    fn from_players(n: usize, players: &[usize]) -> Self {
        let mut m = Self::empty(n);
        players.iter().for_each(|&i| m.insert(i));
        m
    }
}

impl Mask for u64 {
    #[inline]
    fn empty(_: usize) -> Self {
        0
    }
    #[inline]
    fn insert(&mut self, i: usize) {
        *self |= 1u64 << i;
    }
    #[inline]
    fn size(&self) -> usize {
        self.count_ones() as usize
    }
    #[inline]
    fn complement(&self, n: usize) -> Self {
        full_mask(n) & !self
    }
    #[inline]
    fn for_each_member(&self, f: impl FnMut(usize)) {
        bits(*self).for_each(f);
    }
    #[inline]
    fn for_each_absent(&self, n: usize, f: impl FnMut(usize)) {
        bits(full_mask(n) & !self).for_each(f);
    }
    fn coalition(&self, n: usize) -> Coalition {
        Coalition::from_mask(n, *self)
    }
}

impl Mask for Coalition {
    fn empty(n: usize) -> Self {
        Coalition::empty(n)
    }
    fn insert(&mut self, i: usize) {
        Coalition::insert(self, i);
    }
    fn size(&self) -> usize {
        self.len()
    }
    fn complement(&self, _: usize) -> Self {
        Coalition::complement(self)
    }
    fn for_each_member(&self, f: impl FnMut(usize)) {
        self.members().for_each(f);
    }
    fn for_each_absent(&self, n: usize, mut f: impl FnMut(usize)) {
        for (w, &word) in self.words().iter().enumerate() {
            let base = w * 64;
            let valid = full_mask(n.saturating_sub(base).min(64));
            bits(!word & valid).for_each(|b| f(base + b));
        }
    }
    fn coalition(&self, _: usize) -> Coalition {
        self.clone()
    }
}

/// The mask of players `0..n` (`n <= 64`; all ones from 64 on).
pub(crate) fn full_mask(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The set bits of `mask`, lowest first.
pub(crate) fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let b = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(b)
    })
}

/// A uniformly random `s`-subset of the players in `pool`, as a coalition of `n`
/// players (partial Fisher-Yates; `pool` is left permuted with the subset first, which
/// keeps later draws uniform).
pub(crate) fn draw_subset<M: Mask, R: Rng + ?Sized>(
    pool: &mut [usize],
    s: usize,
    n: usize,
    rng: &mut R,
) -> M {
    partial_shuffle(pool, s, rng);
    M::from_players(n, &pool[..s])
}

/// Moves a uniformly random `s`-subset of `pool` to its front, in random order (the
/// first `s` steps of Fisher-Yates; `s = pool.len()` shuffles it).
pub(crate) fn partial_shuffle<R: Rng + ?Sized>(pool: &mut [usize], s: usize, rng: &mut R) {
    for k in 0..s {
        let j = rng.random_range(k..pool.len());
        pool.swap(k, j);
    }
}

/// `C(n, k)`, saturating at `u64::MAX`.
pub(crate) fn binomial(n: usize, k: usize) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for j in 0..k {
        // c = C(n, j) <= u64::MAX here; C(n, j + 1) = c (n - j) / (j + 1) exactly.
        c = match c.checked_mul((n - j) as u128) {
            Some(p) => p / (j + 1) as u128,
            None => return u64::MAX,
        };
        if c > u128::from(u64::MAX) {
            return u64::MAX;
        }
    }
    c as u64
}

/// Rejects games without players.
pub(crate) fn check_players(n: usize) -> Result<(), ValuationError> {
    if n == 0 {
        return Err(ValuationError::NoPlayers);
    }
    Ok(())
}

/// Samples a size from fixed weights by inverse CDF (binary search, `O(log n)`).
#[derive(Clone, Debug)]
pub(crate) struct SizeSampler {
    sizes: Vec<usize>,
    cdf: Vec<f64>,
}

impl SizeSampler {
    /// A sampler over the sizes `s` with `weights[s] > 0` that `keep(s)` accepts
    /// (weights are renormalised).
    pub(crate) fn new(weights: &[f64], keep: impl Fn(usize) -> bool) -> Self {
        let mut sizes = Vec::new();
        let mut cdf = Vec::new();
        let mut total = 0.0;
        for (s, &w) in weights.iter().enumerate() {
            if w > 0.0 && keep(s) {
                total += w;
                sizes.push(s);
                cdf.push(total);
            }
        }
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { sizes, cdf }
    }

    /// Whether no size is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// A size, or `None` when none is left.
    pub(crate) fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        let last = *self.sizes.last()?;
        let u: f64 = rng.random();
        let k = self.cdf.partition_point(|&c| c <= u);
        Some(self.sizes.get(k).copied().unwrap_or(last))
    }
}

/// Hasher for masks (a multiplicative mix; the keys are chosen by the estimator, not by
/// an adversary).
#[derive(Default)]
pub(crate) struct MaskHasher(u64);

impl Hasher for MaskHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let h = (x ^ self.0.rotate_left(23)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// A set of masks.
pub(crate) type MaskSet<M> = HashSet<M, BuildHasherDefault<MaskHasher>>;

/// Per-player running means and variances (Welford) of `rows` strata (one family, `+`
/// or `-`), indexed `l * n + i`.
#[derive(Clone, Debug)]
pub(crate) struct Strata {
    n: usize,
    pub(crate) count: Vec<u64>,
    pub(crate) mean: Vec<f64>,
    pub(crate) m2: Vec<f64>,
}

impl Strata {
    /// `rows` empty strata for each of `n` players.
    pub(crate) fn new(rows: usize, n: usize) -> Self {
        Self {
            n,
            count: vec![0; rows * n],
            mean: vec![0.0; rows * n],
            m2: vec![0.0; rows * n],
        }
    }

    /// Adds one sample to stratum `l` of player `i` (Welford).
    #[inline]
    pub(crate) fn push(&mut self, l: usize, i: usize, x: f64) {
        let k = l * self.n + i;
        self.count[k] += 1;
        let delta = x - self.mean[k];
        self.mean[k] += delta / self.count[k] as f64;
        self.m2[k] += delta * (x - self.mean[k]);
    }

    /// Sets an exactly known stratum (count stays 0; exactness is tracked by the caller).
    pub(crate) fn set(&mut self, l: usize, i: usize, x: f64) {
        self.mean[l * self.n + i] = x;
    }

    /// The within-stratum variance of row `l` pooled over the players
    /// (`sum m2 / sum (count - 1)` over players with two samples or more), with its degrees
    /// of freedom; `None` without any.
    pub(crate) fn pooled_variance(&self, l: usize) -> Option<(f64, u64)> {
        let row = l * self.n..(l + 1) * self.n;
        let (m2, dof) = self.count[row.clone()]
            .iter()
            .zip(&self.m2[row])
            .filter(|(c, _)| **c >= 2)
            .fold((0.0, 0u64), |(m, d), (c, m2)| (m + m2, d + c - 1));
        (dof > 0).then(|| (m2 / dof as f64, dof))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn binomials_are_exact_then_saturate() {
        assert_eq!(binomial(14, 7), 3432);
        assert_eq!(binomial(64, 32), 1_832_624_140_942_590_534);
        assert_eq!(binomial(5, 6), 0);
        assert_eq!(binomial(100, 50), u64::MAX);
        assert_eq!(binomial(100, 2), 4950);
        assert_eq!(binomial(10_000, 5_000), u64::MAX);
    }

    #[test]
    fn wide_and_narrow_masks_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in [1, 5, 63, 64] {
            let mut pool: Vec<usize> = (0..n).collect();
            for s in 0..=n {
                let m: u64 = draw_subset(&mut pool, s, n, &mut rng);
                let c = Coalition::from_mask(n, m);
                assert_eq!((m.size(), Mask::size(&c)), (s, s));
                assert_eq!(m.coalition(n), c);
                assert_eq!(Mask::complement(&m, n).coalition(n), c.complement());
                let (mut a, mut b) = (Vec::new(), Vec::new());
                m.for_each_absent(n, |i| a.push(i));
                c.for_each_absent(n, |i| b.push(i));
                assert_eq!(a, b);
            }
        }
        let c: Coalition = Mask::from_players(130, &[0, 64, 129]);
        let mut absent = Vec::new();
        c.for_each_absent(130, |i| absent.push(i));
        assert_eq!(absent.len(), 127);
        assert!(!absent.contains(&129) && absent.contains(&128) && absent.contains(&63));
    }
}
