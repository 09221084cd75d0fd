//! Stratified SVARM and SVARM+ (Kolpaczki et al., AAAI 2024; ALGORITHMS.md 2.4).
//!
//! `phi_i = (1/n) sum_{l=0..n-1} (phi+_{i,l} - phi-_{i,l})`, where `phi+_{i,l}` is the mean of
//! `v(S u i)` and `phi-_{i,l}` the mean of `v(S)` over the coalitions `S` of size `l` without
//! `i`. Every evaluated coalition `A` of size `s` is one sample of `phi+_{i,s-1}` for each
//! member `i` and of `phi-_{j,s}` for each non-member `j`, so one evaluation updates all
//! `n` players.
//!
//! 1. Exact step (`2n + 2` evaluations, fewer for `n <= 3`): `v({})`, `v(N)`, every `v({i})`
//!    and every `v(N \ {i})` make the strata `phi+_{.,0}`, `phi+_{.,n-2}`, `phi+_{.,n-1}`,
//!    `phi-_{.,0}`, `phi-_{.,1}` and `phi-_{.,n-1}` exact. With `n <= 3` nothing else is left:
//!    the answer is exact.
//! 2. Warm-up, for `s = 2..=n-2`: a random permutation cut into blocks of size `s` (the
//!    leftover block padded with random others) gives every player one sample of
//!    `phi+_{.,s-1}`; a second permutation's blocks `A`, evaluated as `N \ A`, give every
//!    player one sample of `phi-_{.,n-s}`. Unlike the paper, which credits a block's value
//!    only to the players it was drawn for, each warm-up value is used in *every* stratum
//!    its coalition belongs to (the padding players and the non-members too): each such
//!    sample is still a uniform draw of its stratum, so the means stay unbiased, there are
//!    more of them for free, and SVARM+ needs it to become exact.
//! 3. Main loop: a size `s` in `{2..n-2}`, `A` uniform of size `s`, `v(A)` updates
//!    `phi+_{i,s-1}` (`i` in `A`) and `phi-_{j,s}` (`j` not in `A`).
//!
//! [`Scheme::Paper`] is the paper's algorithm: `s ~ P~` ([`size_distribution`]) per draw.
//!
//! # The adaptive scheme (the default) and where it deviates from the paper
//!
//! [`Scheme::Adaptive`] keeps the strata, the exact step and the estimator's form, and
//! changes three things, each of which keeps every stratum mean unbiased:
//!
//! - **Neyman size allocation** instead of `P~`. With `m_s` coalitions of size `s`, about
//!   `m_s s / n` sample a player's `phi+_{i,s-1}` and `m_s (n - s) / n` its `phi-_{i,s}`, so
//!   the squared error summed over the players is about
//!   `sum_s a_s (1 / m_s - 1 / C(n, s))`, `a_s = sigma+_s^2 / s + sigma-_s^2 / (n - s)`, where
//!   `sigma+-_s^2` are the within-stratum variances of size `s` averaged over the players
//!   (the `- 1 / C(n, s)` is SVARM+'s finite-population correction). The optimum for a
//!   fixed total is `m_s = min(C(n, s), lambda sqrt(a_s))`: small sizes are exhausted (exact),
//!   the rest get draws in proportion to `sqrt(a_s)`. `P~` spends in proportion to
//!   `1 / min(s, n - s)` whatever the game and starves the middle sizes at large budgets.
//!   The main loop runs in epochs of [`EPOCH`] draws; before each, the variances are
//!   re-estimated from everything evaluated (pooled within strata, else the plain variance
//!   of the size's values) and shrunk towards their mean over the sizes with the weight of
//!   [`SHRINKAGE_DOF_PER_PLAYER`] degrees of freedom per player, the targets for the
//!   *whole* budget are solved by water-filling (sizes already over target stay there),
//!   and the epoch's draws are split in proportion to the remaining deficits (largest
//!   remainders): sizes are chosen deterministically, coalitions at random. (Counts that
//!   follow noisy variance estimates bias the means slightly: a size whose first values
//!   happen to agree gets fewer draws. Without the shrinkage this was measurable at
//!   `n = 8`, budget 120, without replacement; with it the tests see no bias.)
//! - **Control variates.** Each sample enters its strata as
//!   `x = v(A) - g_s(A) + E[g_s | stratum]` with an additive `g_s(A) = sum_{k in A} beta_{s,k}`,
//!   whose stratum means are known in closed form (`beta_i + (s-1)/(n-1) sum_{k != i}
//!   beta_k` given `i` in `A`, `s/(n-1) sum_{k != i} beta_k` given `i` not in `A`). The
//!   coefficients are refitted from the current strata (before an epoch, once the middle
//!   sizes' evaluations grew by half since the last fit, at least [`EPOCH`]): `beta_{s,k}` is
//!   `(n-1)/n` times player `k`'s contrast `phi+_{k,s-1} - phi-_{k,s}` (the first-order
//!   projection of `v` on the size-`s` slice), shrunk James-Stein-wise by the share of its
//!   spread that sampling noise explains. `beta` depends only on earlier epochs, so given
//!   the past each `x` has the same conditional mean as `v(A)` (unbiased whatever the
//!   fit), while its variance is that of `v` minus its additive part: on the SOUM and
//!   airport games below 3 to 30 times smaller per size. Without replacement a draw is
//!   uniform over the stratum's *unused* coalitions, so SVARM+ offsets by the mean of
//!   `g_s` over those (it tracks, per size and player, the used coalitions and their
//!   `g_s` sum; strata of more than `2^52` coalitions use the full mean). A size SVARM+
//!   exhausts uses its plain means (exact).
//! - **Complementary pairs.** The warm-up's second pass reuses the first permutation, so
//!   its coalitions come in pairs `(A, N \ A)`. If the pairs' values (standardised per
//!   size) correlate at least [`MIN_PAIR_CORRELATION`], the main loop draws pairs too: a
//!   member `i` of `A` then gets `v(A)` in `phi+_{i,s-1}` and `v(N \ A)` in `phi-_{i,n-s}`,
//!   and a positive correlation cancels in their difference (the glove game, where
//!   `v(A) - v(N \ A)` depends on `|A|` only, becomes exact). Without replacement the used
//!   sets stay closed under complement (exact step, paired warm-up, paired draws), so `N \ A`
//!   of a uniform unused `A` is a uniform unused coalition of its size. Otherwise
//!   (negatively correlated pairs, as in SOUM and airport games) the draws are single.
//!
//! The allocation, the fit and the pairing depend on values seen before, never on the
//! evaluation batch, so the result does not depend on the batch size; the data-dependent
//! counts make the estimator unbiased up to a second-order term (tests check the mean over
//! seeds against the exact values).
//!
//! Measured at `n = 14`, mean MSE over seeds 0..10 (in parentheses over seeds 0..100),
//! SVARM+, against shapiq 1.4.1's "SVARM" (a stratified variant; ALGORITHMS.md 2.4):
//!
//! | game (n = 14)          | budget | paper `P~`          | adaptive (default)   | shapiq 1.4.1 |
//! |------------------------|--------|---------------------|----------------------|--------------|
//! | SOUM (soum14.json)     | 200    | 1.76e-2 (1.93e-2)   | 1.58e-2 (1.66e-2)    | 2.0e-2 (2.03e-2 on this game) |
//! |                        | 1000   | 2.42e-3 (2.22e-3)   | 1.03e-3 (1.06e-3)    | 2.6e-3 (2.36e-3) |
//! |                        | 4000   | 2.69e-4 (2.71e-4)   | 1.10e-4 (8.65e-5)    | 2.3e-4 (2.79e-4) |
//! | glove 7 / 7            | 200    | 5.37e-3 (5.21e-3)   | 4.8e-29 (4.8e-29)    | 2.1e-2       |
//! |                        | 1000   | 6.99e-4 (7.67e-4)   | 4.8e-29 (4.8e-29)    | 6.6e-4       |
//! |                        | 4000   | 6.70e-5 (9.86e-5)   | 4.8e-29 (4.8e-29)    | 1.0e-4       |
//! | airport, costs 1..=14  | 200    | 6.15e-2 (5.05e-2)   | 4.45e-2 (4.48e-2)    | 1.8e-1       |
//! |                        | 1000   | 4.13e-3 (4.10e-3)   | 1.70e-3 (1.82e-3)    | 4.3e-3       |
//! |                        | 4000   | 4.50e-4 (4.40e-4)   | 1.72e-4 (1.38e-4)    | 3.4e-4       |
//!
//! The paper's scheme misses three points (SOUM and airport at 4000, glove at 1000); the
//! adaptive one meets all nine. Its glove estimate is exact up to rounding (pairing); on
//! SOUM and airport the control variates do most of the work (Neyman allocation alone,
//! over seeds 0..100: SOUM 1.33e-2 / 1.67e-3 / 2.10e-4, airport 3.43e-2 / 3.03e-3 /
//! 3.10e-4). The paired warm-up costs some accuracy at 200 on the negatively paired games
//! (SOUM 1.66e-2 against 1.33e-2 with independent passes, over seeds 0..100).
//!
//! # Budget
//!
//! With replacement (Stratified SVARM) every draw costs one unit of the budget even when
//! the meter already memoised its coalition (the paper's `T` samples). SVARM+
//! (`without_replacement`) never draws a coalition twice, exact step and warm-up included;
//! a size whose coalitions are all used gets no more draws, and once every size is
//! exhausted (budget `>= 2^n`) the estimate is exact and the run stops. Coalitions are
//! drawn before they are evaluated, with one [`Metered::values`] call per batch (a costly
//! game evaluates them in parallel).
//!
//! Finally all values are shifted by the same amount so they sum to `v(N) - v({})`: every
//! middle size's contrasts `phi+_{i,s-1} - phi-_{i,s}` sum to zero over the players, so this
//! removes only common-mode error (unbiased, and a no-op once exact).
//!
//! Strata never sampled (budget spent during the warm-up) fall back to the mean of all
//! evaluated coalitions of the size they need (`|S| + 1` for `phi+`, `|S|` for `phi-`),
//! linearly interpolated between the nearest sizes evaluated when a size has none: a player
//! then receives the average increment of `v` between those sizes, as a symmetric player
//! would.
//!
//! Standard errors: `se_i = sqrt(sum_l Var(phi+_{i,l}) + Var(phi-_{i,l})) / n` (a player's
//! strata use disjoint coalitions; paired draws make them slightly dependent), with
//! `Var = s^2 / c` per sampled stratum (of the control-variate samples `x`; times the
//! finite-population correction `1 - c / C(n-1, l)` without replacement) and 0 for exact
//! strata. A stratum with a single sample borrows the pooled variance of the same stratum
//! over all players. `None` when some stratum was never sampled or no variance can be
//! pooled. Warm-up samples are mildly correlated, so these are approximate.
//!
//! # Players
//!
//! Coalitions are `u64` masks up to 64 players (the fast path) and [`Coalition`] bitsets
//! beyond. The strata take `O(n^2)` memory, so games are limited to
//! [`MAX_STRATIFIED_PLAYERS`] players (plain [`Svarm`](super::Svarm) has no limit).

use rand::Rng;

use super::sampling::{
    Mask, MaskSet, SizeSampler, Strata, binomial, check_players, partial_shuffle,
};
use super::{
    Coalition, Estimator, IncrementalGame, Metered, Method, StopReason, Valuation, ValuationError,
};

/// The most players Stratified SVARM accepts: its `2 n^2` strata take `48 n^2` bytes
/// (50 MB at this limit).
pub const MAX_STRATIFIED_PLAYERS: usize = 1024;

/// Draws evaluated per [`Metered::values`] call in the main loop.
const BATCH: usize = 256;

/// Draws per epoch of the adaptive scheme (allocation and control variates are refitted
/// between epochs).
pub const EPOCH: u64 = 64;

/// The adaptive scheme shrinks each stratum row's variance towards the mean over the rows
/// as if the mean had this many degrees of freedom per player (few samples, little say).
pub const SHRINKAGE_DOF_PER_PLAYER: f64 = 4.0;

/// The adaptive scheme draws complementary pairs `(A, N \ A)` when the warm-up's pairs
/// correlate at least this much (then `v(A) - v(N \ A)` varies less than two independent
/// draws would).
pub const MIN_PAIR_CORRELATION: f64 = 0.25;

/// Warm-up pairs needed to decide on pairing.
const MIN_PAIRS: usize = 8;

/// Sizes with at most this many coalitions switch SVARM+ from rejection sampling to an
/// explicit list of the unused ones once half are used (bounds the list to 8 MiB with
/// `u64` masks).
const LIST_LIMIT: u64 = 1 << 20;

/// How Stratified SVARM's warm-up and main loop sample (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// The paper's algorithm: independent warm-up passes, a size `s ~ P~`
    /// ([`size_distribution`]) per main-loop draw, plain stratum means.
    Paper,
    /// The default: Neyman allocation of the sizes re-estimated every [`EPOCH`] draws,
    /// additive control variates refitted per epoch, complementary pairs when they
    /// correlate positively.
    Adaptive,
}

/// Stratified SVARM parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct StratifiedSvarm {
    /// Utility evaluations it may spend (draws, with replacement).
    pub budget: u64,
    /// Sample coalitions without replacement (SVARM+): never evaluates a coalition twice
    /// and is exact once the budget covers `2^n`.
    pub without_replacement: bool,
    /// The sampling scheme: the paper's or the adaptive one (the default).
    pub scheme: Scheme,
}

impl StratifiedSvarm {
    /// SVARM+ (without replacement) with the adaptive scheme, the most accurate variant,
    /// with `budget` evaluations.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            without_replacement: true,
            scheme: Scheme::Adaptive,
        }
    }

    /// The paper's Stratified SVARM+ ([`Scheme::Paper`], without replacement).
    pub fn paper(budget: u64) -> Self {
        Self {
            scheme: Scheme::Paper,
            ..Self::new(budget)
        }
    }

    /// The run, evaluating main-loop draws `batch` at a time (the result does not depend
    /// on `batch`; tests vary it): `u64` masks up to 64 players, [`Coalition`]s beyond.
    fn run<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
        batch: usize,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        check_players(n)?;
        if n > MAX_STRATIFIED_PLAYERS {
            return Err(ValuationError::InvalidGame {
                reason: format!(
                    "stratified svarm supports at most {MAX_STRATIFIED_PLAYERS} players (its \
                     strata take O(n^2) memory), got {n}: use svarm or the permutation method"
                ),
            });
        }
        if n <= 64 {
            self.run_with::<u64, _, _>(game, rng, batch)
        } else {
            self.run_with::<Coalition, _, _>(game, rng, batch)
        }
    }

    fn run_with<M: Mask, G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
        batch: usize,
    ) -> Result<Valuation, ValuationError> {
        let method = self.method();
        let n = game.n_players();
        let needed = exact_step_cost(n);
        let cap = game.cap_at_least(self.budget, needed, method)?;
        let batch = batch.max(1);
        let start = game.evaluations();
        let mut state = State::<M>::new(n, self.without_replacement);
        state.exact_step(game)?;
        let mut units = needed;
        if n <= 3 {
            return Ok(state.finish(game.evaluations() - start, StopReason::Exact, method));
        }

        // Warm-up: all draws first (fixed RNG stream), then the prefix the budget affords.
        let mut order: Vec<usize> = (0..n).collect();
        let adaptive = self.scheme == Scheme::Adaptive;
        let mut masks = state.warm_up_draws(&mut order, rng, adaptive);
        masks.truncate(usize::try_from(cap - units).unwrap_or(usize::MAX));
        units += masks.len() as u64;
        let values = state.evaluate(game, &masks, None, batch)?;
        let paired = adaptive
            && state
                .pair_correlation(&masks, &values)
                .is_some_and(|r| r >= MIN_PAIR_CORRELATION);

        // Main loop.
        let exhausted = match self.scheme {
            Scheme::Paper => state.paper_loop(game, rng, &mut order, cap - units, batch)?,
            Scheme::Adaptive => {
                state.adaptive_loop(game, rng, &mut order, cap - units, batch, paired)?
            }
        };
        // Only SVARM+ runs out of sizes: every coalition was evaluated.
        let stop = if exhausted {
            StopReason::Exact
        } else {
            StopReason::BudgetExhausted
        };
        Ok(state.finish(game.evaluations() - start, stop, method))
    }
}

impl Estimator for StratifiedSvarm {
    fn method(&self) -> Method {
        if self.without_replacement {
            Method::StratifiedSvarmPlus
        } else {
            Method::StratifiedSvarm
        }
    }

    fn budget(&self) -> Option<u64> {
        Some(self.budget)
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        self.run(game, rng, BATCH)
    }
}

/// The size distribution `P~` of the main loop, indexed by size `0..=n` (zero outside
/// `2..=n-2`; all zeros for `n < 4`, which has no middle size).
///
/// - `n` odd: `P~(s) = 1 / (2 s (H_{(n-1)/2} - 1))` for `s <= (n-1)/2`, mirrored (`n - s`)
///   above;
/// - `n` even: `P~(s) = (n ln n - 1) / (2 s n ln n (H_{n/2-1} - 1))` for `2 <= s < n/2`,
///   mirrored above, `P~(n/2) = 1 / (n ln n)`;
/// - `n = 4` has the single middle size 2 (the even formula would divide by
///   `H_1 - 1 = 0`), which gets 1.
pub fn size_distribution(n: usize) -> Vec<f64> {
    let mut p = vec![0.0; n + 1];
    if n < 4 {
        return p;
    }
    if n == 4 {
        p[2] = 1.0;
        return p;
    }
    let nf = n as f64;
    let nln = nf * nf.ln();
    let odd = n % 2 == 1;
    let h = harmonic(if odd { (n - 1) / 2 } else { n / 2 - 1 }) - 1.0;
    for (s, p) in p.iter_mut().enumerate().take(n - 1).skip(2) {
        let k = s.min(n - s) as f64;
        *p = if odd {
            1.0 / (2.0 * k * h)
        } else if 2 * s == n {
            1.0 / nln
        } else {
            (nln - 1.0) / (2.0 * k * nln * h)
        };
    }
    p
}

/// The harmonic number `H_k = 1 + 1/2 + ... + 1/k` (`H_0 = 0`).
fn harmonic(k: usize) -> f64 {
    (1..=k).map(|j| 1.0 / j as f64).sum()
}

/// The distinct coalitions of the exact step: `2n + 2`, or `2^n` for `n <= 3` (where
/// singletons and complements coincide).
fn exact_step_cost(n: usize) -> u64 {
    (2 * n as u64 + 2).min(1u64 << n.min(63))
}

/// Targets of the Neyman allocation: `d_s = clamp(lambda sqrt(a_s) - have_s, 0, room_s)`
/// with `lambda` chosen so that `sum d_s = min(total, sum room_s)` (bisection; the sum is
/// continuous and non-decreasing in `lambda`). Sizes with `a_s = 0` get nothing unless the
/// others are full. Returns the deficits `d_s`.
fn neyman_deficits(a: &[f64], have: &[f64], room: &[f64], total: f64) -> Vec<f64> {
    let room_sum: f64 = room.iter().sum();
    if room_sum <= total {
        return room.to_vec();
    }
    let sqrt_a: Vec<f64> = a.iter().map(|a| a.sqrt()).collect();
    let deficit = |lambda: f64, k: usize| (lambda * sqrt_a[k] - have[k]).clamp(0.0, room[k]);
    let sum = |lambda: f64| (0..a.len()).map(|k| deficit(lambda, k)).sum::<f64>();
    let (mut lo, mut hi) = (0.0, 1.0);
    while sum(hi) < total {
        hi *= 2.0;
        if !hi.is_finite() {
            return room.to_vec();
        }
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if sum(mid) < total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0..a.len()).map(|k| deficit(hi, k)).collect()
}

/// Splits `draws` integer draws across sizes in proportion to `weights` (largest
/// remainders, ties to the smaller size), never giving a size more than `room[s]`.
fn apportion(weights: &[f64], room: &[u64], draws: u64) -> Vec<u64> {
    let total: f64 = weights.iter().sum();
    let mut out = vec![0u64; weights.len()];
    if total <= 0.0 {
        return out;
    }
    let mut rest: Vec<(f64, usize)> = Vec::with_capacity(weights.len());
    let mut given = 0u64;
    for (s, &w) in weights.iter().enumerate() {
        let share = w / total * draws as f64;
        let whole = (share.floor() as u64).min(room[s]);
        out[s] = whole;
        given += whole;
        if whole < room[s] {
            rest.push((share - whole as f64, s));
        }
    }
    rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // Hand out the remainder one draw at a time, cycling while room is left.
    while given < draws && !rest.is_empty() {
        let mut progressed = false;
        for &(_, s) in &rest {
            if given == draws {
                break;
            }
            if out[s] < room[s] {
                out[s] += 1;
                given += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    out
}

/// SVARM+ bookkeeping for one size: how many coalitions are used, and once half are,
/// the unused ones (when few enough to list).
#[derive(Clone, Debug)]
struct SizeUse<M> {
    used: u64,
    total: u64,
    unused: Option<Vec<M>>,
}

/// The estimator's state: strata, per-size moments (for fallbacks and the allocation)
/// and, without replacement, the used coalitions.
struct State<M> {
    n: usize,
    plus: Strata,
    minus: Strata,
    /// Per size: evaluated coalitions, mean and Welford `m2` of their values.
    size_count: Vec<u64>,
    size_mean: Vec<f64>,
    size_m2: Vec<f64>,
    /// `Some` for SVARM+.
    used: Option<(MaskSet<M>, Vec<SizeUse<M>>)>,
    /// Control variate per size: `g_s(A) = sum_{k in A} beta[s n + k]` (all zero unless
    /// adaptive), and `beta_sum[s] = sum_k beta[s n + k]`.
    beta: Vec<f64>,
    beta_sum: Vec<f64>,
    /// Plain sums of `v` per stratum (the strata hold control-variate-corrected samples),
    /// for sizes SVARM+ exhausts: their plain means are exact.
    raw_plus: Vec<f64>,
    raw_minus: Vec<f64>,
    /// SVARM+ only, per size `s` and player `i` (`s n + i`): the used coalitions of size `s`
    /// containing `i`, and the sum of `g_s` over them (with the current `beta`); per size,
    /// the sum of `g_s` over all its used coalitions. They give the mean of `g_s` over a
    /// stratum's *unused* coalitions, which is what a draw without replacement averages.
    with_used: Vec<u64>,
    g_used: Vec<f64>,
    g_used_total: Vec<f64>,
    /// Middle-size evaluations when the control variates were last refitted.
    fitted_at: u64,
    /// `C(n - 1, l)`: the coalitions in each stratum `phi+-_{i,l}`.
    strata_size: Vec<u64>,
    /// Whether size `s` has control-variate coefficients (`beta` not all zero).
    fitted: Vec<bool>,
}

impl<M: Mask> State<M> {
    fn new(n: usize, without_replacement: bool) -> Self {
        let used = without_replacement.then(|| {
            let sizes = (0..=n)
                .map(|s| SizeUse {
                    used: 0,
                    total: binomial(n, s),
                    unused: None,
                })
                .collect();
            (MaskSet::default(), sizes)
        });
        Self {
            n,
            plus: Strata::new(n, n),
            minus: Strata::new(n, n),
            size_count: vec![0; n + 1],
            size_mean: vec![0.0; n + 1],
            size_m2: vec![0.0; n + 1],
            used,
            beta: vec![0.0; (n + 1) * n],
            beta_sum: vec![0.0; n + 1],
            raw_plus: vec![0.0; n * n],
            raw_minus: vec![0.0; n * n],
            with_used: vec![0; (n + 1) * n],
            g_used: vec![0.0; (n + 1) * n],
            g_used_total: vec![0.0; n + 1],
            fitted_at: 0,
            strata_size: (0..n).map(|l| binomial(n - 1, l)).collect(),
            fitted: vec![false; n + 1],
        }
    }

    /// Evaluates `v({})`, `v(N)`, `v({i})`, `v(N \ {i})` in one batch and sets the
    /// exact strata (all of them for `n <= 3`).
    fn exact_step<G: IncrementalGame>(
        &mut self,
        game: &mut Metered<G>,
    ) -> Result<(), ValuationError> {
        let n = self.n;
        let empty = M::empty(n);
        let mut masks = Vec::with_capacity(2 * n + 2);
        masks.push(empty.clone());
        masks.push(empty.complement(n));
        masks.extend((0..n).map(|i| M::from_players(n, &[i])));
        masks.extend((0..n).map(|i| M::from_players(n, &[i]).complement(n)));
        let coalitions: Vec<Coalition> = masks.iter().map(|m| m.coalition(n)).collect();
        let values = game.values(&coalitions)?;
        let (v_empty, v_full) = (values[0], values[1]);
        let single = &values[2..2 + n];
        let without = &values[2 + n..];
        let sum_single: f64 = single.iter().sum();
        let sum_without: f64 = without.iter().sum();
        for i in 0..n {
            if n >= 2 {
                let others = (n - 1) as f64;
                self.minus.set(1, i, (sum_single - single[i]) / others);
                self.plus.set(n - 2, i, (sum_without - without[i]) / others);
            }
            self.plus.set(0, i, single[i]);
            self.minus.set(0, i, v_empty);
            self.plus.set(n - 1, i, v_full);
            self.minus.set(n - 1, i, without[i]);
        }
        let nf = n as f64;
        for (size, mean) in [
            (0, v_empty),
            (1, sum_single / nf),
            (n - 1, sum_without / nf),
            (n, v_full),
        ] {
            self.size_mean[size] = mean;
            self.size_count[size] = 1;
        }
        for m in &masks {
            self.take(m);
        }
        Ok(())
    }

    /// The warm-up coalitions for `s = 2..=n-2`, in order; SVARM+ drops (and marks as used)
    /// repeats.
    fn warm_up_draws<R: Rng + ?Sized>(
        &mut self,
        order: &mut [usize],
        rng: &mut R,
        paired: bool,
    ) -> Vec<M> {
        let n = self.n;
        let mut masks = Vec::new();
        for s in 2..=n - 2 {
            let passes: &[bool] = if paired { &[false] } else { &[false, true] };
            for &complement in passes {
                // A random permutation (Fisher-Yates), cut into blocks of size s.
                partial_shuffle(order, n, rng);
                let blocks = n / s;
                let mut push = |block: M| {
                    if paired {
                        masks.push(block.clone());
                        masks.push(block.complement(n));
                    } else if complement {
                        masks.push(block.complement(n));
                    } else {
                        masks.push(block);
                    }
                };
                for b in 0..blocks {
                    push(M::from_players(n, &order[b * s..(b + 1) * s]));
                }
                let left = n - blocks * s;
                if left > 0 {
                    // Leftover players, padded with `s - left` random others.
                    let (head, rest) = order.split_at_mut(blocks * s);
                    partial_shuffle(head, s - left, rng);
                    let mut block = M::from_players(n, rest);
                    head[..s - left].iter().for_each(|&p| block.insert(p));
                    push(block);
                }
            }
        }
        masks.retain(|m| self.take(m));
        masks
    }

    /// Coalitions of size `s` SVARM+ has not used yet (`u64::MAX` with replacement).
    fn room(&self, s: usize) -> u64 {
        self.used
            .as_ref()
            .map_or(u64::MAX, |(_, sizes)| sizes[s].total - sizes[s].used)
    }

    /// Marks `m` used (SVARM+); whether it was unused (always, with replacement). An
    /// unused-list entry of `m` is left in place and rejected when drawn.
    fn take(&mut self, m: &M) -> bool {
        let n = self.n;
        let Some((set, sizes)) = &mut self.used else {
            return true;
        };
        let fresh = set.insert(m.clone());
        if fresh {
            let s = m.size();
            sizes[s].used += 1;
            let beta = &self.beta[s * n..(s + 1) * n];
            let mut g = 0.0;
            m.for_each_member(|k| g += beta[k]);
            self.g_used_total[s] += g;
            let (with_used, g_used) = (&mut self.with_used, &mut self.g_used);
            m.for_each_member(|i| {
                with_used[s * n + i] += 1;
                g_used[s * n + i] += g;
            });
        }
        fresh
    }

    /// Whether SVARM+ has used `m` (never, with replacement).
    fn is_used(&self, m: &M) -> bool {
        self.used.as_ref().is_some_and(|(set, _)| set.contains(m))
    }

    /// Appends to `out`, for each player, the offset `E[g_s | stratum]` that [`apply`]
    /// adds to `v(A) - g_s(A)` for the unused coalition `A` about to be taken: the mean of
    /// `g_s` over the player's stratum (`A` containing it for members, missing it for the
    /// others), over its *unused* coalitions without replacement (`A` is uniform among
    /// those). Strata of more than `2^52` coalitions use the mean over all of them (the
    /// used share is negligible).
    ///
    /// [`apply`]: Self::apply
    fn offsets(&self, a: &M, out: &mut Vec<f64>) {
        const EXACT: u64 = 1 << 52;
        let n = self.n;
        let s = a.size();
        let start = out.len();
        out.resize(start + n, 0.0);
        if !self.fitted[s] {
            // beta is zero: so is every offset.
            return;
        }
        let k = &mut out[start..];
        let nf1 = (n - 1) as f64;
        let row = s * n..(s + 1) * n;
        let (beta, with_used, g_used) = (
            &self.beta[row.clone()],
            &self.with_used[row.clone()],
            &self.g_used[row],
        );
        let total = self.beta_sum[s];
        let (with, without) = ((s - 1) as f64 / nf1, s as f64 / nf1);
        // Means over the unused coalitions (SVARM+, strata small enough to matter) or
        // over all of them.
        let unused = self
            .used
            .as_ref()
            .map(|(_, sizes)| sizes[s].used)
            .filter(|_| self.strata_size[s - 1] < EXACT && self.strata_size[s] < EXACT);
        match unused {
            Some(used) => {
                let (pop_with, pop_without) =
                    (self.strata_size[s - 1] as f64, self.strata_size[s] as f64);
                let g_total = self.g_used_total[s];
                for i in 0..n {
                    let all = without * (total - beta[i]);
                    let used_here = (used - with_used[i]) as f64;
                    k[i] = (pop_without * all - (g_total - g_used[i])) / (pop_without - used_here);
                }
                a.for_each_member(|i| {
                    let all = beta[i] + with * (total - beta[i]);
                    k[i] = (pop_with * all - g_used[i]) / (pop_with - with_used[i] as f64);
                });
            }
            None => {
                for i in 0..n {
                    k[i] = without * (total - beta[i]);
                }
                a.for_each_member(|i| k[i] = beta[i] + with * (total - beta[i]));
            }
        }
    }

    /// Whether SVARM+ has used every coalition of size `s` (never, with replacement).
    fn exhausted(&self, s: usize) -> bool {
        self.room(s) == 0
    }

    /// A uniform coalition of size `s`; without replacement, a uniform *unused* one (the
    /// caller marks it used with [`take`](Self::take)). `s` must not be exhausted.
    fn draw<R: Rng + ?Sized>(&mut self, s: usize, order: &mut [usize], rng: &mut R) -> M {
        let n = self.n;
        let Some((set, sizes)) = &mut self.used else {
            partial_shuffle(order, s, rng);
            return M::from_players(n, &order[..s]);
        };
        let size = &mut sizes[s];
        if size.unused.is_none() && size.total <= LIST_LIMIT && 2 * size.used >= size.total {
            size.unused = Some(unused_masks(n, s, set));
        }
        loop {
            let m = match &mut size.unused {
                // The list holds the unused coalitions and, lazily, some taken as the
                // complement of a pair since it was built: those are rejected here.
                Some(list) => list.swap_remove(rng.random_range(0..list.len())),
                None => {
                    partial_shuffle(order, s, rng);
                    M::from_players(n, &order[..s])
                }
            };
            if !set.contains(&m) {
                break m;
            }
        }
    }

    /// The paper's main loop: each of the `left` draws takes a size `s ~ P~` (renormalised
    /// over the sizes not exhausted). Returns whether every size is exhausted.
    fn paper_loop<G: IncrementalGame, R: Rng + ?Sized>(
        &mut self,
        game: &mut Metered<G>,
        rng: &mut R,
        order: &mut [usize],
        mut left: u64,
        batch: usize,
    ) -> Result<bool, ValuationError> {
        let weights = size_distribution(self.n);
        let mut sampler = SizeSampler::new(&weights, |s| !self.exhausted(s));
        let mut masks = Vec::with_capacity(batch);
        while left > 0 && !sampler.is_empty() {
            masks.clear();
            let room = usize::try_from(left).unwrap_or(usize::MAX).min(batch);
            while masks.len() < room {
                let Some(s) = sampler.sample(rng) else {
                    break;
                };
                let m = self.draw(s, order, rng);
                self.take(&m);
                masks.push(m);
                if self.exhausted(s) {
                    sampler = SizeSampler::new(&weights, |s| !self.exhausted(s));
                }
            }
            left -= masks.len() as u64;
            self.evaluate(game, &masks, None, batch)?;
        }
        Ok(sampler.is_empty())
    }

    /// The adaptive main loop: epochs of [`EPOCH`] draws split across the sizes by
    /// [`allocation`](Self::allocation). Returns whether every size is exhausted.
    fn adaptive_loop<G: IncrementalGame, R: Rng + ?Sized>(
        &mut self,
        game: &mut Metered<G>,
        rng: &mut R,
        order: &mut [usize],
        mut left: u64,
        batch: usize,
        paired: bool,
    ) -> Result<bool, ValuationError> {
        let n = self.n;
        let mut masks = Vec::new();
        let mut offsets = Vec::new();
        loop {
            let room: Vec<u64> = (0..=n)
                .map(|s| {
                    if (2..=n - 2).contains(&s) {
                        self.room(s)
                    } else {
                        0
                    }
                })
                .collect();
            if room.iter().all(|&r| r == 0) {
                return Ok(true);
            }
            if left == 0 {
                return Ok(false);
            }
            let middle: u64 = self.size_count[2..=n - 2].iter().sum();
            if middle >= self.fitted_at + EPOCH.max(self.fitted_at / 2) {
                self.fitted_at = middle;
                self.refit_control_variates();
            }
            let epoch = left.min(EPOCH);
            // Pairs need two draws; a last odd draw goes alone.
            let paired = paired && epoch >= 2;
            let draws = self.allocation(&room, left, epoch, paired);
            masks.clear();
            offsets.clear();
            for (s, &k) in draws.iter().enumerate() {
                for _ in 0..k {
                    let a = self.draw(s, order, rng);
                    self.offsets(&a, &mut offsets);
                    self.take(&a);
                    // SVARM+'s used sets are closed under complement while every draw is
                    // paired, so the complement is unused and uniform in its size.
                    let b = a.complement(n);
                    masks.push(a);
                    if paired && !self.is_used(&b) {
                        self.offsets(&b, &mut offsets);
                        self.take(&b);
                        masks.push(b);
                    }
                }
            }
            if masks.is_empty() {
                return Ok(false);
            }
            left -= masks.len() as u64;
            self.evaluate(game, &masks, Some(&offsets), batch)?;
        }
    }

    /// The draws per size for the next `epoch` draws of the adaptive allocation, with
    /// `left` draws in the budget: Neyman targets for the whole budget, the epoch split
    /// in proportion to the remaining deficits.
    fn allocation(&self, room: &[u64], left: u64, epoch: u64, paired: bool) -> Vec<u64> {
        let n = self.n;
        let middle = 2..=n - 2;
        let nf = n as f64;
        // Per stratum row: the pooled within-stratum variance and its degrees of freedom,
        // else the plain variance of the size's values.
        let estimate = |strata: &Strata, l: usize, s: usize| {
            strata.pooled_variance(l).or_else(|| {
                let c = self.size_count[s];
                (c >= 2).then(|| (self.size_m2[s] / (c - 1) as f64, c - 1))
            })
        };
        let rows: Vec<[Option<(f64, u64)>; 2]> = (0..=n)
            .map(|s| {
                if middle.contains(&s) {
                    [estimate(&self.plus, s - 1, s), estimate(&self.minus, s, s)]
                } else {
                    [None, None]
                }
            })
            .collect();
        // The prior: the mean variance over every row with data.
        let (sum, k) = rows
            .iter()
            .flatten()
            .flatten()
            .fold((0.0, 0usize), |(sum, k), (v, _)| (sum + v, k + 1));
        let prior = if k > 0 { sum / k as f64 } else { 0.0 };
        let kappa = SHRINKAGE_DOF_PER_PLAYER * nf;
        let shrunk = |row: Option<(f64, u64)>| match row {
            Some((v, dof)) => (dof as f64 * v + kappa * prior) / (dof as f64 + kappa),
            None => prior,
        };
        let mut a = vec![0.0; n + 1];
        for s in middle.clone() {
            let sf = s as f64;
            a[s] = if prior > 0.0 {
                shrunk(rows[s][0]) / sf + shrunk(rows[s][1]) / (nf - sf)
            } else {
                // No variance seen anywhere: the constant-variance shape.
                1.0 / sf + 1.0 / (nf - sf)
            };
        }
        for (s, a) in a.iter_mut().enumerate() {
            if room[s] == 0 {
                *a = 0.0;
            }
        }
        let have: Vec<f64> = self.size_count.iter().map(|&c| c as f64).collect();
        let room_f: Vec<f64> = room.iter().map(|&r| r as f64).collect();
        let deficits = neyman_deficits(&a, &have, &room_f, left as f64);
        if !paired {
            return apportion(&deficits, room, epoch);
        }
        // Pairs (A, N \\ A) of sizes s and n - s, indexed by s <= n / 2: the mean deficit
        // of the two sizes (one pair feeds both), half of it for s = n / 2.
        let mut pair_deficits = vec![0.0; n + 1];
        let mut pair_room = vec![0u64; n + 1];
        for s in 2..=n / 2 {
            if 2 * s == n {
                pair_deficits[s] = deficits[s] / 2.0;
                pair_room[s] = room[s] / 2;
            } else {
                pair_deficits[s] = (deficits[s] + deficits[n - s]) / 2.0;
                pair_room[s] = room[s].min(room[n - s]);
            }
        }
        apportion(&pair_deficits, &pair_room, epoch / 2)
    }

    /// Evaluates `masks`, `batch` per [`Metered::values`] call, and applies every value
    /// with its [`offsets`](Self::offsets) (`n` per mask; `None`: no control variate yet,
    /// all `beta` zero). Returns the values.
    fn evaluate<G: IncrementalGame>(
        &mut self,
        game: &mut Metered<G>,
        masks: &[M],
        offsets: Option<&[f64]>,
        batch: usize,
    ) -> Result<Vec<f64>, ValuationError> {
        let n = self.n;
        let mut coalitions = Vec::with_capacity(batch.min(masks.len()));
        let mut all = Vec::with_capacity(masks.len());
        for (c, chunk) in masks.chunks(batch).enumerate() {
            coalitions.clear();
            coalitions.extend(chunk.iter().map(|m| m.coalition(n)));
            let values = game.values(&coalitions)?;
            for (j, (mask, &v)) in chunk.iter().zip(&values).enumerate() {
                let at = (c * batch + j) * n;
                self.apply(mask, v, offsets.and_then(|o| o.get(at..at + n)));
            }
            all.extend(values);
        }
        Ok(all)
    }

    /// The correlation of `v(A)` and `v(N \ A)` over the complementary pairs
    /// `(masks[2k], masks[2k + 1])`, each value standardised by its size's mean and
    /// standard deviation; `None` with fewer than [`MIN_PAIRS`] usable pairs.
    fn pair_correlation(&self, masks: &[M], values: &[f64]) -> Option<f64> {
        let z = |m: &M, v: f64| {
            let s = m.size();
            let c = self.size_count[s];
            let var = if c >= 2 {
                self.size_m2[s] / (c - 1) as f64
            } else {
                0.0
            };
            (var > 0.0).then(|| (v - self.size_mean[s]) / var.sqrt())
        };
        let (mut sum, mut pairs) = (0.0, 0usize);
        for (m, v) in masks.chunks_exact(2).zip(values.chunks_exact(2)) {
            if let (Some(a), Some(b)) = (z(&m[0], v[0]), z(&m[1], v[1])) {
                sum += a * b;
                pairs += 1;
            }
        }
        (pairs >= MIN_PAIRS).then(|| sum / pairs as f64)
    }

    /// Credits `v(A)` to `phi+_{i,|A|-1}` of every member and `phi-_{j,|A|}` of every
    /// non-member (`2 <= |A| <= n - 2`), as the control-variate sample
    /// `v(A) - g_s(A) + offsets[i]` (plain `v(A)` while `beta` is zero and `offsets` is
    /// `None`), and to the plain sums.
    #[inline]
    fn apply(&mut self, mask: &M, v: f64, offsets: Option<&[f64]>) {
        let s = mask.size();
        self.size_count[s] += 1;
        let delta = v - self.size_mean[s];
        self.size_mean[s] += delta / self.size_count[s] as f64;
        self.size_m2[s] += delta * (v - self.size_mean[s]);
        let n = self.n;
        // Control variate: x = v(A) - g_s(A) + E[g_s | stratum] (the offsets), whose
        // conditional mean is that of v(A) whatever beta is.
        let beta = &self.beta[s * n..(s + 1) * n];
        let mut g = 0.0;
        mask.for_each_member(|k| g += beta[k]);
        let resid = v - g;
        let offset = |i: usize| offsets.map_or(0.0, |o| o[i]);
        let (plus, minus) = (&mut self.plus, &mut self.minus);
        let (raw_plus, raw_minus) = (&mut self.raw_plus, &mut self.raw_minus);
        mask.for_each_member(|i| {
            plus.push(s - 1, i, resid + offset(i));
            raw_plus[(s - 1) * n + i] += v;
        });
        mask.for_each_absent(n, |j| {
            minus.push(s, j, resid + offset(j));
            raw_minus[s * n + j] += v;
        });
    }

    /// Refits the control variates from the current strata: `beta_{s,k}` is the
    /// first-order (additive) projection of `v` on the size-`s` coalitions,
    /// `(n - 1) / n` times player `k`'s contrast `phi+_{k,s-1} - phi-_{k,s}`, its deviations
    /// from the mean contrast shrunk towards zero by the share of their spread that the
    /// strata's sampling noise explains (James-Stein), so a noisy fit cannot add much
    /// variance. A size with a player missing either stratum keeps its fit.
    fn refit_control_variates(&mut self) {
        let n = self.n;
        let nf = n as f64;
        let mut delta = vec![0.0; n];
        for s in 2..=n - 2 {
            let (lp, lm) = ((s - 1) * n, s * n);
            let counts_ok =
                (0..n).all(|k| self.plus.count[lp + k] >= 2 && self.minus.count[lm + k] >= 2);
            if !counts_ok {
                continue;
            }
            let mut noise = 0.0;
            for (k, d) in delta.iter_mut().enumerate() {
                let (cp, cm) = (self.plus.count[lp + k], self.minus.count[lm + k]);
                *d = self.plus.mean[lp + k] - self.minus.mean[lm + k];
                noise += self.plus.m2[lp + k] / ((cp - 1) * cp) as f64
                    + self.minus.m2[lm + k] / ((cm - 1) * cm) as f64;
            }
            noise /= nf;
            let mean = delta.iter().sum::<f64>() / nf;
            let spread = delta.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (nf - 1.0);
            let keep = if spread > 0.0 {
                (1.0 - noise / spread).max(0.0)
            } else {
                0.0
            };
            let beta = &mut self.beta[s * n..(s + 1) * n];
            for (b, d) in beta.iter_mut().zip(&delta) {
                *b = (nf - 1.0) / nf * keep * (d - mean);
            }
            self.beta_sum[s] = beta.iter().sum();
            self.fitted[s] = true;
        }
        // SVARM+: the sums of g over the used coalitions, under the new beta.
        if let Some((set, _)) = &self.used {
            self.g_used.iter_mut().for_each(|g| *g = 0.0);
            self.g_used_total.iter_mut().for_each(|g| *g = 0.0);
            for m in set {
                let s = m.size();
                if !(2..=n - 2).contains(&s) {
                    continue;
                }
                let beta = &self.beta[s * n..(s + 1) * n];
                let mut g = 0.0;
                m.for_each_member(|k| g += beta[k]);
                self.g_used_total[s] += g;
                let g_used = &mut self.g_used;
                m.for_each_member(|i| g_used[s * n + i] += g);
            }
        }
    }

    /// The mean of the evaluated coalitions of each size, interpolated linearly between
    /// the nearest sizes with data where a size has none (sizes 0, 1, n-1, n always do).
    fn size_means(&self) -> Vec<f64> {
        let n = self.n;
        let known: Vec<usize> = (0..=n).filter(|&k| self.size_count[k] > 0).collect();
        (0..=n)
            .map(|k| {
                let mean = |k: usize| self.size_mean[k];
                if self.size_count[k] > 0 {
                    return mean(k);
                }
                let hi = known.partition_point(|&j| j < k);
                match (hi.checked_sub(1).and_then(|h| known.get(h)), known.get(hi)) {
                    (Some(&a), Some(&b)) => {
                        let t = (k - a) as f64 / (b - a) as f64;
                        mean(a) + t * (mean(b) - mean(a))
                    }
                    (Some(&a), None) | (None, Some(&a)) => mean(a),
                    (None, None) => 0.0,
                }
            })
            .collect()
    }

    /// Values (with fallbacks for unsampled strata) and standard errors.
    fn finish(&self, evaluations: u64, stop: StopReason, method: Method) -> Valuation {
        let n = self.n;
        let nf = n as f64;
        let exact_plus = |l: usize| l == 0 || l + 2 >= n;
        let exact_minus = |l: usize| l <= 1 || l + 1 == n;
        let means = self.size_means();
        let mut values = vec![0.0; n];
        let mut variance = vec![0.0; n];
        let mut defined = true;
        let wor = self.used.is_some();
        for l in 0..n {
            let population = self.strata_size[l] as f64;
            for (strata, exact, size, sign) in [
                (&self.plus, exact_plus(l), l + 1, 1.0),
                (&self.minus, exact_minus(l), l, -1.0),
            ] {
                let pooled = strata.pooled_variance(l).map(|(v, _)| v);
                for i in 0..n {
                    let k = l * n + i;
                    if exact {
                        values[i] += sign * strata.mean[k];
                        continue;
                    }
                    let c = strata.count[k];
                    if c == 0 {
                        values[i] += sign * means[size];
                        defined = false;
                        continue;
                    }
                    if self.exhausted(size) {
                        // Every coalition of the size evaluated: the plain mean is exact.
                        let raw = if sign > 0.0 {
                            &self.raw_plus
                        } else {
                            &self.raw_minus
                        };
                        values[i] += sign * raw[k] / c as f64;
                        continue;
                    }
                    values[i] += sign * strata.mean[k];
                    let s2 = if c >= 2 {
                        Some(strata.m2[k] / (c - 1) as f64)
                    } else {
                        pooled
                    };
                    match s2 {
                        Some(s2) => {
                            let cf = c as f64;
                            let fpc = if wor {
                                (1.0 - cf / population).max(0.0)
                            } else {
                                1.0
                            };
                            variance[i] += s2 / cf * fpc;
                        }
                        None => defined = false,
                    }
                }
            }
        }
        values.iter_mut().for_each(|v| *v /= nf);
        // Each middle size's contrasts sum to zero over the players, so the exact values
        // are efficient: remove the common-mode error by an equal shift.
        let grand = self.plus.mean[(n - 1) * n] - self.minus.mean[0];
        let shift = (grand - values.iter().sum::<f64>()) / nf;
        values.iter_mut().for_each(|v| *v += shift);
        let std_errors = if stop == StopReason::Exact {
            Some(vec![0.0; n])
        } else {
            defined.then(|| variance.iter().map(|v| v.sqrt() / nf).collect())
        };
        Valuation {
            values,
            std_errors,
            evaluations,
            stop,
            method,
        }
    }
}

/// Every coalition of size `s` of `n` players not in `used` (combinations in
/// lexicographic order of their member lists).
fn unused_masks<M: Mask>(n: usize, s: usize, used: &MaskSet<M>) -> Vec<M> {
    let mut out = Vec::new();
    let mut members: Vec<usize> = (0..s).collect();
    loop {
        let m = M::from_players(n, &members);
        if !used.contains(&m) {
            out.push(m);
        }
        // The next combination: bump the last member that can move, reset those after.
        let Some(k) = (0..s).rev().find(|&k| members[k] < n - s + k) else {
            return out;
        };
        members[k] += 1;
        for j in k + 1..s {
            members[j] = members[j - 1] + 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Airport, Counting, Glove, Majority, Soum, WeightedVoting};
    use crate::valuation::{Game, Tracked, exact_shapley};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Builds a fresh boxed game (tests loop over several kinds).
    type GameMaker = Box<dyn Fn() -> Box<dyn Game>>;

    /// The paper's estimator (`P~`).
    fn estimator(budget: u64, without_replacement: bool) -> StratifiedSvarm {
        StratifiedSvarm {
            budget,
            without_replacement,
            scheme: Scheme::Paper,
        }
    }

    /// Every variant: with and without replacement, each scheme.
    fn variants(budget: u64) -> Vec<StratifiedSvarm> {
        let mut out = Vec::new();
        for scheme in [Scheme::Paper, Scheme::Adaptive] {
            for without_replacement in [false, true] {
                out.push(StratifiedSvarm {
                    budget,
                    without_replacement,
                    scheme,
                });
            }
        }
        out
    }

    fn run_batched(game: impl Game, est: &StratifiedSvarm, seed: u64, batch: usize) -> Valuation {
        let mut game = Tracked::new(game);
        let mut meter = Metered::new(&mut game, Some(est.budget));
        est.run(&mut meter, &mut ChaCha8Rng::seed_from_u64(seed), batch)
            .unwrap()
    }

    fn run_with(game: impl Game, est: &StratifiedSvarm, seed: u64) -> Valuation {
        est.estimate(
            &mut Tracked::new(game),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap()
    }

    pub(crate) fn exact(game: impl Game) -> Vec<f64> {
        exact_shapley(&mut Tracked::new(game)).unwrap().values
    }

    pub(crate) fn mse(estimate: &[f64], truth: &[f64]) -> f64 {
        estimate
            .iter()
            .zip(truth)
            .map(|(e, t)| (e - t).powi(2))
            .sum::<f64>()
            / truth.len() as f64
    }

    /// A fixed SOUM on 8 players with overlapping terms of several sizes.
    pub(crate) fn soum8() -> Soum {
        Soum {
            n: 8,
            terms: vec![
                (vec![0], 1.0),
                (vec![1, 2], 2.0),
                (vec![0, 3, 4], -1.5),
                (vec![2, 5, 6, 7], 3.0),
                (vec![1, 3, 5, 7], -2.0),
                (vec![4, 6], 0.75),
                (vec![0, 1, 2, 3, 4, 5], 1.25),
            ],
        }
    }

    /// A SOUM on `n` players with `terms` random terms of sizes `1..=max_size`
    /// (coefficients uniform in [-1, 1], like shapiq's SOUM).
    pub(crate) fn random_soum(n: usize, terms: usize, max_size: usize, seed: u64) -> Soum {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        Soum {
            n,
            terms: (0..terms)
                .map(|_| {
                    let size = rng.random_range(1..=max_size);
                    partial_shuffle(&mut order, size, &mut rng);
                    let mut members = order[..size].to_vec();
                    members.sort_unstable();
                    (members, rng.random_range(-1.0..1.0))
                })
                .collect(),
        }
    }

    #[test]
    fn size_distribution_sums_to_one() {
        for n in 0..4 {
            assert!(size_distribution(n).iter().all(|&p| p == 0.0), "{n}");
        }
        for n in 4..=64 {
            let p = size_distribution(n);
            assert_eq!(p.len(), n + 1);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "n = {n}");
            assert!(p[2..=n - 2].iter().all(|&x| x > 0.0), "n = {n}");
            assert_eq!((p[0], p[1], p[n - 1], p[n]), (0.0, 0.0, 0.0, 0.0));
            // Symmetric in s <-> n - s.
            assert!(
                (2..=n - 2).all(|s| (p[s] - p[n - s]).abs() < 1e-15),
                "n = {n}"
            );
        }
    }

    #[test]
    fn size_distribution_matches_hand_values() {
        assert_eq!(size_distribution(4), vec![0.0, 0.0, 1.0, 0.0, 0.0]);
        // n = 5 (odd): H_2 - 1 = 1/2, P(2) = 1 / (2 * 2 * 1/2) = 1/2.
        let p = size_distribution(5);
        assert!((p[2] - 0.5).abs() < 1e-15 && (p[3] - 0.5).abs() < 1e-15);
        // n = 7 (odd): H_3 - 1 = 5/6: P(2) = 3/10, P(3) = 1/5.
        let p = size_distribution(7);
        for (s, want) in [(2, 0.3), (3, 0.2), (4, 0.2), (5, 0.3)] {
            assert!((p[s] - want).abs() < 1e-15, "{s}: {}", p[s]);
        }
        // n = 6 (even): P(3) = 1 / (6 ln 6) = 0.0930184..., P(2) = P(4) =
        // (6 ln 6 - 1) / (2 * 2 * 6 ln 6 * (H_2 - 1)) = 0.4534908...
        let p = size_distribution(6);
        assert!((p[3] - 0.093_018_4).abs() < 1e-7, "{}", p[3]);
        assert!((p[2] - 0.453_490_8).abs() < 1e-7, "{}", p[2]);
        // n = 8 (even): P(2) = (8 ln 8 - 1) / (32 ln 8 (H_3 - 1)).
        let p = size_distribution(8);
        let nln = 8.0 * 8f64.ln();
        assert!((p[2] - (nln - 1.0) / (2.0 * 2.0 * nln * (5.0 / 6.0))).abs() < 1e-15);
        assert!((p[3] - (nln - 1.0) / (2.0 * 3.0 * nln * (5.0 / 6.0))).abs() < 1e-15);
        assert!((p[4] - 1.0 / nln).abs() < 1e-15);
    }

    #[test]
    fn size_sampler_follows_its_weights() {
        let p = size_distribution(9);
        let sampler = SizeSampler::new(&p, |_| true);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut hits = [0u32; 10];
        let draws = 200_000;
        for _ in 0..draws {
            hits[sampler.sample(&mut rng).unwrap()] += 1;
        }
        for s in 0..=9 {
            let freq = f64::from(hits[s]) / f64::from(draws);
            assert!((freq - p[s]).abs() < 0.005, "{s}: {freq} vs {}", p[s]);
        }
        let only_even = SizeSampler::new(&p, |s| s % 2 == 0);
        assert!((0..1000).all(|_| only_even.sample(&mut rng).unwrap().is_multiple_of(2)));
        assert_eq!(SizeSampler::new(&p, |_| false).sample(&mut rng), None);
    }

    #[test]
    fn tiny_games_are_exact_from_the_exact_step() {
        let games: Vec<Box<dyn Fn() -> Soum>> = vec![
            Box::new(|| Soum {
                n: 1,
                terms: vec![(vec![0], 2.5), (vec![], 1.0)],
            }),
            Box::new(|| Soum {
                n: 2,
                terms: vec![(vec![0], 1.0), (vec![0, 1], -3.0)],
            }),
            Box::new(|| Soum {
                n: 3,
                terms: vec![(vec![0], 1.0), (vec![1, 2], 2.0), (vec![0, 1, 2], 0.5)],
            }),
        ];
        for game in games {
            let n = game().n;
            let truth = exact(game());
            for est in variants(100) {
                let v = run_with(game(), &est, 0);
                assert_eq!(v.stop, StopReason::Exact);
                assert_eq!(v.evaluations, 1 << n);
                assert_eq!(v.std_errors, Some(vec![0.0; n]));
                assert!(
                    mse(&v.values, &truth) < 1e-24,
                    "{n}: {:?} vs {truth:?}",
                    v.values
                );
            }
            let needed = 1u64 << n;
            let err = estimator(needed - 1, true)
                .estimate(&mut Tracked::new(game()), &mut ChaCha8Rng::seed_from_u64(0))
                .unwrap_err();
            assert!(matches!(err, ValuationError::BudgetTooSmall { needed: k, .. } if k == needed));
        }
    }

    #[test]
    fn plus_is_exact_once_the_budget_covers_every_coalition() {
        let games: Vec<(GameMaker, usize)> = vec![
            (Box::new(|| Box::new(random_soum(6, 8, 6, 1))), 6),
            (Box::new(|| Box::new(Glove { left: 2, right: 4 })), 6),
            (
                Box::new(|| {
                    Box::new(Airport {
                        costs: vec![3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0],
                    })
                }),
                7,
            ),
            (Box::new(|| Box::new(random_soum(4, 5, 4, 2))), 4),
            (Box::new(|| Box::new(soum8())), 8),
        ];
        for (game, n) in games {
            let truth = exact(&mut *game());
            for (extra, scheme) in [0, 1, 1000]
                .into_iter()
                .flat_map(|e| [Scheme::Paper, Scheme::Adaptive].map(|s| (e, s)))
            {
                for seed in 0..3 {
                    let est = StratifiedSvarm {
                        scheme,
                        ..StratifiedSvarm::new((1 << n) + extra)
                    };
                    let v = run_with(&mut *game(), &est, seed);
                    assert_eq!((v.stop, v.evaluations), (StopReason::Exact, 1 << n));
                    assert_eq!(v.method, Method::StratifiedSvarmPlus);
                    assert!(
                        mse(&v.values, &truth) < 1e-24,
                        "{n}: {:?} vs {truth:?}",
                        v.values
                    );
                }
            }
            // One evaluation short: not exact.
            for est in [
                StratifiedSvarm::paper((1 << n) - 1),
                StratifiedSvarm::new((1 << n) - 1),
            ] {
                let v = run_with(&mut *game(), &est, 0);
                assert_eq!(
                    (v.stop, v.evaluations),
                    (StopReason::BudgetExhausted, (1 << n) - 1)
                );
            }
        }
    }

    #[test]
    fn size_only_games_are_exact_at_any_budget() {
        // v depends on |S| only: every stratum mean, and every fallback, is exact.
        let truth = Majority { n: 9 }.shapley();
        for budget in [20, 25, 40, 60, 200] {
            for est in variants(budget) {
                let v = run_with(Majority { n: 9 }, &est, budget);
                assert!(mse(&v.values, &truth) < 1e-24, "{est:?}: {:?}", v.values);
            }
        }
    }

    #[test]
    fn budget_spent_during_the_warm_up_still_answers() {
        // n = 8: exact step 18, warm-up 26 draws.
        let truth = exact(soum8());
        for est in variants(0) {
            let wor = est.without_replacement;
            for budget in [18, 19, 30, 43] {
                let v = run_with(
                    soum8(),
                    &StratifiedSvarm {
                        budget,
                        ..est.clone()
                    },
                    3,
                );
                // With replacement a repeated draw is memoised, not re-evaluated.
                assert!(v.evaluations == budget || (!wor && v.evaluations < budget));
                assert_eq!(v.stop, StopReason::BudgetExhausted);
                if budget <= 30 {
                    assert_eq!(v.std_errors, None, "some strata were never sampled");
                }
                assert!(v.values.iter().all(|x| x.is_finite()));
                // Fallbacks keep it sane: within a generous distance of the truth.
                assert!(mse(&v.values, &truth) < 1.0, "{budget}: {:?}", v.values);
            }
        }
    }

    #[test]
    fn too_small_budget_says_how_many_are_needed() {
        let err = estimator(17, false)
            .estimate(
                &mut Tracked::new(soum8()),
                &mut ChaCha8Rng::seed_from_u64(0),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ValuationError::BudgetTooSmall {
                budget: 17,
                needed: 18,
                n: 8,
                method: Method::StratifiedSvarm
            }
        ));
        assert!(err.to_string().contains("at least 18"), "{err}");
    }

    #[test]
    fn too_many_players_is_rejected() {
        let game = WeightedVoting {
            weights: vec![1.0; MAX_STRATIFIED_PLAYERS + 1],
            quota: 33.0,
        };
        let err = StratifiedSvarm::new(10_000_000)
            .estimate(&mut Tracked::new(game), &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(err.to_string().contains("1025"), "{err}");
    }

    #[test]
    fn a_hundred_players_are_valued() {
        // Beyond 64 players coalitions are `Coalition` bitsets instead of `u64` masks.
        let game = random_soum(100, 40, 3, 9);
        let truth = game.shapley();
        let budget = 20_000;
        for est in variants(budget) {
            let mut counted = Tracked::new(Counting {
                game: game.clone(),
                calls: 0,
            });
            let v = est
                .estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(1))
                .unwrap();
            let calls = counted.into_inner().calls;
            assert!(
                calls <= budget && v.evaluations == calls,
                "{est:?}: {calls}"
            );
            assert_eq!(v.stop, StopReason::BudgetExhausted);
            // Measured 2.9e-4 to 7.8e-4 (values up to about 1 in size).
            let err = mse(&v.values, &truth);
            assert!(err < 2e-3, "{est:?}: mse {err:e}");
            let full: f64 = game.terms.iter().map(|t| t.1).sum();
            assert!((v.values.iter().sum::<f64>() - full).abs() < 1e-9);
            // Deterministic by seed.
            assert_eq!(v, run_with(game.clone(), &est, 1));
            assert_ne!(v.values, run_with(game.clone(), &est, 2).values);
        }
    }

    #[test]
    fn same_seed_same_estimate_whatever_the_batch() {
        for budget in [150, 220] {
            for est in variants(budget) {
                let a = run_batched(soum8(), &est, 7, BATCH);
                for batch in [1, 7, 64] {
                    assert_eq!(a, run_batched(soum8(), &est, 7, batch), "{est:?} {batch}");
                }
                assert_ne!(a.values, run_batched(soum8(), &est, 8, BATCH).values);
            }
        }
        // Paired draws (the glove's pairs correlate) do not depend on the batch either.
        let glove = || Glove { left: 4, right: 5 };
        let est = StratifiedSvarm::new(300);
        let a = run_batched(glove(), &est, 7, BATCH);
        for batch in [1, 3, 64] {
            assert_eq!(a, run_batched(glove(), &est, 7, batch), "{batch}");
        }
    }

    /// Mean over seeds of the estimates, and the worst |mean - truth| in standard errors
    /// of that mean (estimated from the spread over seeds).
    pub(crate) fn bias_in_standard_errors(
        truth: &[f64],
        seeds: u64,
        mut estimate: impl FnMut(u64) -> Vec<f64>,
    ) -> f64 {
        let n = truth.len();
        let (mut sum, mut sq) = (vec![0.0; n], vec![0.0; n]);
        for seed in 0..seeds {
            for (i, x) in estimate(seed).into_iter().enumerate() {
                sum[i] += x;
                sq[i] += x * x;
            }
        }
        let k = seeds as f64;
        (0..n)
            .map(|i| {
                let mean = sum[i] / k;
                let var = (sq[i] / k - mean * mean).max(1e-30) * k / (k - 1.0);
                (mean - truth[i]).abs() / (var / k).sqrt()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn mean_over_seeds_is_near_exact() {
        let game = random_soum(8, 12, 5, 11);
        let truth = exact(game.clone());
        for budget in [120, 200] {
            for est in variants(budget) {
                let z = bias_in_standard_errors(&truth, 400, |seed| {
                    run_with(game.clone(), &est, 1000 + seed).values
                });
                // 8 players: |z| < 4 for all of them unless biased.
                assert!(z < 4.0, "{est:?}: z = {z}");
            }
        }
    }

    #[test]
    fn mse_shrinks_as_the_budget_grows() {
        let game = random_soum(10, 20, 6, 4);
        let truth = exact(game.clone());
        for est in variants(0) {
            let errors: Vec<f64> = [100, 300, 900]
                .iter()
                .map(|&budget| {
                    let est = StratifiedSvarm {
                        budget,
                        ..est.clone()
                    };
                    (0..20)
                        .map(|seed| mse(&run_with(game.clone(), &est, seed).values, &truth))
                        .sum::<f64>()
                        / 20.0
                })
                .collect();
            assert!(
                errors[0] > errors[1] && errors[1] > errors[2],
                "{est:?}: {errors:?}"
            );
            assert!(errors[2] < errors[0] / 4.0, "{est:?}: {errors:?}");
        }
    }

    #[test]
    fn standard_errors_cover_the_truth() {
        let game = Airport {
            costs: (1..=10).map(f64::from).collect(),
        };
        let truth = exact(game.clone());
        for est in variants(400) {
            let (mut inside, mut total) = (0, 0);
            for seed in 0..30 {
                let v = run_with(game.clone(), &est, seed);
                let se = v.std_errors.unwrap();
                for ((x, s), t) in v.values.iter().zip(&se).zip(&truth) {
                    inside += usize::from((x - t).abs() <= 2.0 * s);
                    total += 1;
                }
            }
            assert!(
                inside as f64 / total as f64 > 0.85,
                "{est:?}: {inside} / {total}"
            );
        }
    }

    #[test]
    fn shared_meter_caps_the_run() {
        let mut game = Tracked::new(soum8());
        let mut meter = Metered::new(&mut game, Some(50));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let v = StratifiedSvarm::new(1000)
            .estimate_metered(&mut meter, &mut rng)
            .unwrap();
        assert_eq!((v.evaluations, meter.evaluations()), (50, 50));
    }

    /// shapiq's SOUM recipe at n = 14 (20 unanimity terms of sizes 1..=3, coefficients
    /// uniform in [-1, 1], numpy seed 42): bench/shapiq/games/soum14.json.
    fn bar_soum() -> Soum {
        Soum {
            n: 14,
            terms: vec![
                (vec![12], 0.547912),
                (vec![4, 8, 13], -0.122243),
                (vec![1, 4, 10], 0.717196),
                (vec![2, 6], 0.394736),
                (vec![9], -0.811645),
                (vec![3, 4, 5], 0.951245),
                (vec![6, 12], 0.522279),
                (vec![8, 9, 13], 0.572129),
                (vec![6, 9, 10], -0.743773),
                (vec![4, 11, 13], -0.099228),
                (vec![1, 7, 11], -0.258404),
                (vec![0], 0.85353),
                (vec![10, 11], 0.28773),
                (vec![6, 8], 0.645523),
                (vec![3, 10], -0.113172),
                (vec![6], -0.545523),
                (vec![6, 7], 0.10917),
                (vec![1], -0.872365),
                (vec![1, 2, 6], 0.655262),
                (vec![5, 7, 11], 0.263329),
            ],
        }
    }

    /// The shapiq comparison games at n = 14 (bench/shapiq/games/*.json).
    fn bar_games() -> Vec<(&'static str, GameMaker, [f64; 3])> {
        vec![
            (
                "soum",
                Box::new(|| Box::new(bar_soum())),
                [2.0e-2, 2.6e-3, 2.3e-4],
            ),
            (
                "glove",
                Box::new(|| Box::new(Glove { left: 7, right: 7 })),
                [2.1e-2, 6.6e-4, 1.0e-4],
            ),
            (
                "airport",
                Box::new(|| {
                    Box::new(Airport {
                        costs: (1..=14).map(f64::from).collect(),
                    })
                }),
                [1.8e-1, 4.3e-3, 3.4e-4],
            ),
        ]
    }

    /// The default estimator (adaptive SVARM+) against ALGORITHMS.md 2.4's shapiq
    /// figures, mean MSE over seeds 0..10, at all 9 points with no slack. (The paper's
    /// scheme misses 3 of them; see the module documentation.)
    #[test]
    fn against_the_shapiq_bar_at_n_14() {
        for (name, game, bar) in bar_games() {
            let truth = exact(&mut *game());
            for (budget, bar) in [200, 1000, 4000].into_iter().zip(bar) {
                let est = StratifiedSvarm::new(budget);
                let mean: f64 = (0..10)
                    .map(|seed| mse(&run_with(&mut *game(), &est, seed).values, &truth))
                    .sum::<f64>()
                    / 10.0;
                assert!(
                    mean <= bar,
                    "{name} at {budget}: {mean:.3e} > shapiq's {bar:.3e}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget(
            game in soum_strategy(9),
            budget in 0u64..400,
            wor: bool,
            adaptive: bool,
            seed: u64,
        ) {
            let n = game.n;
            let full: f64 = game.terms.iter().map(|t| t.1).sum();
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let scheme = if adaptive { Scheme::Adaptive } else { Scheme::Paper };
            let result = StratifiedSvarm { budget, without_replacement: wor, scheme }
                .estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            let needed = exact_step_cost(n);
            match result {
                Ok(v) => {
                    prop_assert!(budget >= needed);
                    prop_assert_eq!(v.evaluations, calls);
                    if wor {
                        // Never a coalition twice: every unit of the budget is a new one.
                        prop_assert_eq!(calls, budget.min(1 << n));
                    }
                    if v.stop == StopReason::Exact {
                        // Exact answers are efficient.
                        prop_assert!((v.values.iter().sum::<f64>() - full).abs() < 1e-9);
                    }
                }
                Err(e) => {
                    prop_assert!(budget < needed);
                    prop_assert_eq!(calls, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
