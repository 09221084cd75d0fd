//! A Monte Carlo estimator of any semivalue (ALGORITHMS.md 2.5): Shapley, Banzhaf and
//! Beta(alpha, beta)-Shapley (Kwon & Zou, AISTATS 2022).
//!
//! A semivalue is `phi_i = sum_{S not containing i} p(|S|) D_i(S)`. Grouping coalitions
//! by size, `phi_i = sum_s q(s) m_i(s)` where `q(s) = C(n-1, s) p(s)` is a probability
//! distribution over `s = 0..n-1` (for every semivalue here) and `m_i(s)` is the mean
//! marginal of `i` over the size-`s` coalitions without `i`.
//!
//! Weights (`p(s)`, per coalition of size `s` not containing the player):
//! - Shapley `1 / (n C(n-1, s))`, i.e. `q` uniform;
//! - Banzhaf `1 / 2^(n-1)`, i.e. `q` binomial(n-1, 1/2);
//! - Beta(alpha, beta) `B(s + beta, n - 1 - s + alpha) / B(alpha, beta)`, i.e. `q` is the
//!   beta-binomial(n-1, beta, alpha) distribution. This is Kwon & Zou's convention: their
//!   `w_{alpha,beta}(j) = n B(j + beta - 1, n - j + alpha) / B(alpha, beta)` for
//!   cardinality `j = s + 1`, and `psi_i = (1/n) sum_j w(j) sum_{|S| = j-1} D_i(S)`, so
//!   `p(s) = w(s+1) / n`. Beta(1, 1) is Shapley exactly; Beta(16, 1), their
//!   recommendation for noisy utilities, puts most weight on small coalitions (pyDVL
//!   names the same weights with alpha and beta swapped). The weights are computed by
//!   the ratio `q(s+1)/q(s)` in log space, so no Beta function is evaluated and
//!   Beta(1, 1) reproduces the Shapley weights bit for bit.
//!
//! Estimator ("star" samples, unbiased): draw a size `s ~ q`. If `n - s >= s + 1` (an
//! "up" sample) draw `S` uniform of size `s` and evaluate `v(S)` and `v(S + j)` for every
//! `j` outside `S`; each such `j` observes `D_j(S)`, and `S` is uniform among the size-`s`
//! coalitions without `j`, so `x_j = D_j(S) n / (n - s)` (0 for members) has expectation
//! `m_j(s)`. Otherwise (a "down" sample) draw `T` uniform of size `s + 1` and evaluate
//! `v(T)` and `v(T - j)` for every member `j`: `x_j = D_j(T - j) n / (s + 1)`. Either way
//! `E[x_j] = sum_s q(s) m_j(s) = phi_j`, a sample costs at most `n + 1` evaluations
//! (about one per observed marginal), observes at least half the players (so the
//! `n / count` inflation of the variance is at most 2) and samples `s` exactly where the
//! semivalue puts its weight. Compare weighted permutation walks, whose per-position
//! weights `n q(s)` inflate the variance by `n sum_s q(s)^2` (about 5 for Beta(16, 1) at
//! n = 14), or separate pairs `v(S)`, `v(S + i)` per marginal (2 evaluations each). For
//! Shapley weights, plain permutation sampling is a little better still; use it there.
//!
//! Each sample's coalitions are non-adaptive, so samples are evaluated in batches
//! through [`Metered::values`] (a costly game scores them in parallel). Standard errors
//! are those of the mean of the i.i.d. per-sample vectors `x`. A batch is only drawn when
//! its worst case fits the remaining budget, so the budget is never exceeded; the number
//! of samples then depends on the sizes drawn (cheap sizes leave room for more), a bias
//! of order `1 / samples` that is negligible beside the sampling error. Memo hits are
//! free, so the number of samples is also capped at the budget.

use rand::Rng;

use super::{
    Coalition, Estimator, IncrementalGame, Metered, Method, RunningMoments, StopReason, Valuation,
    ValuationError,
};

/// Samples drawn and evaluated per batch.
const BATCH_SAMPLES: u64 = 64;

/// The weights `p(|S|)` of a semivalue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SemivalueWeights {
    /// Shapley: `p(s) = 1 / (n C(n-1, s))`.
    Shapley,
    /// Banzhaf: `p(s) = 1 / 2^(n-1)`.
    Banzhaf,
    /// Beta(alpha, beta)-Shapley (Kwon & Zou 2022):
    /// `p(s) = B(s + beta, n - 1 - s + alpha) / B(alpha, beta)`; (1, 1) is Shapley.
    Beta {
        /// First shape parameter (> 0); large values weight small coalitions.
        alpha: f64,
        /// Second shape parameter (> 0); large values weight large coalitions.
        beta: f64,
    },
}

impl SemivalueWeights {
    /// `q(s) = C(n-1, s) p(s)` for `s = 0..n`: the probability that the coalition a
    /// player joins has size `s`. Sums to 1. Errors on `n = 0` and on a Beta shape that
    /// is not finite and positive.
    pub fn size_probabilities(&self, n: usize) -> Result<Vec<f64>, ValuationError> {
        if n == 0 {
            return Err(ValuationError::NoPlayers);
        }
        self.validate()?;
        // log q(s) up to a constant, by the ratio q(s+1) / q(s).
        let mut log_q = Vec::with_capacity(n);
        let mut acc = 0.0f64;
        for s in 0..n {
            log_q.push(acc);
            if s + 1 < n {
                acc += self.ratio(n, s).ln();
            }
        }
        let top = log_q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut q: Vec<f64> = log_q.iter().map(|l| (l - top).exp()).collect();
        let total: f64 = q.iter().sum();
        q.iter_mut().for_each(|x| *x /= total);
        Ok(q)
    }

    /// `p(s)` for `s = 0..n`: the weight of one coalition of size `s` not containing the
    /// player (for exact computation by enumeration).
    pub fn coalition_weights(&self, n: usize) -> Result<Vec<f64>, ValuationError> {
        let mut binomial = 1.0f64;
        let mut p = self.size_probabilities(n)?;
        for (s, x) in p.iter_mut().enumerate() {
            *x /= binomial;
            binomial *= (n - 1 - s) as f64 / (s + 1) as f64;
        }
        Ok(p)
    }

    /// `q(s+1) / q(s)` for `s + 1 < n`.
    fn ratio(&self, n: usize, s: usize) -> f64 {
        let up = (n - 1 - s) as f64;
        let down = (s + 1) as f64;
        match *self {
            Self::Shapley => 1.0,
            Self::Banzhaf => up / down,
            // C ratio (n-1-s)/(s+1) times B(s+1+b, n-2-s+a) / B(s+b, n-1-s+a)
            // = (s+b) / (n-2-s+a).
            Self::Beta { alpha, beta } => {
                (up * (s as f64 + beta)) / (down * ((n - 2 - s) as f64 + alpha))
            }
        }
    }

    /// Rejects Beta shapes that are not finite and positive.
    fn validate(&self) -> Result<(), ValuationError> {
        match *self {
            Self::Beta { alpha, beta }
                if !(alpha.is_finite() && alpha > 0.0 && beta.is_finite() && beta > 0.0) =>
            {
                Err(ValuationError::InvalidGame {
                    reason: format!(
                        "beta-shapley shape (alpha {alpha}, beta {beta}) must be finite and positive"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Monte Carlo estimator of any semivalue (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Semivalue {
    /// Hard cap on utility evaluations.
    pub budget: u64,
    /// Which semivalue.
    pub weights: SemivalueWeights,
}

impl Semivalue {
    /// The semivalue `weights` with `budget` evaluations.
    pub fn new(budget: u64, weights: SemivalueWeights) -> Self {
        Self { budget, weights }
    }

    /// Beta(alpha, beta)-Shapley with `budget` evaluations (Kwon & Zou's convention:
    /// (16, 1) favours small coalitions, (1, 1) is Shapley).
    pub fn beta_shapley(budget: u64, alpha: f64, beta: f64) -> Self {
        Self::new(budget, SemivalueWeights::Beta { alpha, beta })
    }
}

impl Estimator for Semivalue {
    fn method(&self) -> Method {
        Method::Semivalue
    }

    fn budget(&self) -> Option<u64> {
        Some(self.budget)
    }

    fn estimate_metered<G: IncrementalGame, R: Rng + ?Sized>(
        &self,
        game: &mut Metered<G>,
        rng: &mut R,
    ) -> Result<Valuation, ValuationError> {
        let n = game.n_players();
        let sizes = SizeSampler::new(&self.weights.size_probabilities(n)?);
        let worst = n as u64 + 1;
        let cap = game.cap_at_least(self.budget, worst, Method::Semivalue)?;
        let start = game.evaluations();
        let mut stars = Stars::new(n);
        let mut moments = RunningMoments::new(n);
        // One player: one sample, `x_0 = v({0}) - v({})`, is the exact value.
        let exact = n == 1;
        let mut samples = 0u64;
        loop {
            let room = (cap - (game.evaluations() - start)) / worst;
            let chunk = if exact {
                1 - samples
            } else {
                room.min(BATCH_SAMPLES).min(cap - samples)
            };
            if chunk == 0 {
                break;
            }
            stars.draw(chunk, &sizes, rng);
            let values = game.values(&stars.batch)?;
            stars.push_samples(&values, &mut moments);
            samples += chunk;
        }

        Ok(Valuation {
            values: moments.means().to_vec(),
            std_errors: if exact {
                Some(vec![0.0])
            } else {
                moments.std_errors()
            },
            evaluations: game.evaluations() - start,
            stop: if exact {
                StopReason::Exact
            } else {
                StopReason::BudgetExhausted
            },
            method: Method::Semivalue,
        })
    }
}

/// Draws sizes from `q` by inverting its cumulative distribution.
#[derive(Debug)]
struct SizeSampler {
    cdf: Vec<f64>,
    last: usize,
}

impl SizeSampler {
    fn new(q: &[f64]) -> Self {
        let mut acc = 0.0;
        let cdf = q
            .iter()
            .map(|x| {
                acc += x;
                acc
            })
            .collect();
        // The largest size with positive probability (guards rounding at the top).
        let last = q.iter().rposition(|&x| x > 0.0).unwrap_or(0);
        Self { cdf, last }
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c <= u).min(self.last)
    }
}

/// One star sample: where its base coalition and its varied players sit in the batch.
#[derive(Clone, Copy, Debug)]
struct Star {
    /// Index of the base coalition (`S` or `T`) in the batch; its neighbours follow.
    base: usize,
    /// Offset of the varied players in [`Stars::varied`].
    varied: usize,
    /// Number of varied players (observed marginals).
    count: usize,
    /// "up": neighbours are `S + j`; else "down": `T - j`.
    up: bool,
}

/// A batch of star samples and the buffers to build and read it (reused across batches).
#[derive(Debug)]
struct Stars {
    n: usize,
    players: Vec<usize>,
    batch: Vec<Coalition>,
    stars: Vec<Star>,
    varied: Vec<usize>,
    sample: Vec<f64>,
}

impl Stars {
    fn new(n: usize) -> Self {
        Self {
            n,
            players: (0..n).collect(),
            batch: Vec::new(),
            stars: Vec::new(),
            varied: Vec::new(),
            sample: vec![0.0; n],
        }
    }

    /// Draws `count` samples into the batch (each at most `n + 1` coalitions).
    fn draw<R: Rng + ?Sized>(&mut self, count: u64, sizes: &SizeSampler, rng: &mut R) {
        let n = self.n;
        self.batch.clear();
        self.stars.clear();
        self.varied.clear();
        for _ in 0..count {
            let s = sizes.sample(rng);
            let up = n - s > s;
            let members = if up { s } else { s + 1 };
            // Partial Fisher-Yates: players[..members] is a uniform subset.
            for k in 0..members {
                let r = rng.random_range(k..n);
                self.players.swap(k, r);
            }
            let (inside, outside) = self.players.split_at(members);
            let base = Coalition::from_members(n, inside);
            let varied = if up { outside } else { inside };
            self.stars.push(Star {
                base: self.batch.len(),
                varied: self.varied.len(),
                count: varied.len(),
                up,
            });
            // The base, then its neighbours in the order of `varied`.
            self.batch.push(base.clone());
            for &j in varied {
                let mut neighbour = base.clone();
                if up {
                    neighbour.insert(j);
                } else {
                    neighbour.remove(j);
                }
                self.batch.push(neighbour);
            }
            self.varied.extend_from_slice(varied);
        }
    }

    /// Turns the batch's values into one per-player sample per star.
    fn push_samples(&mut self, values: &[f64], moments: &mut RunningMoments) {
        let scale = self.n as f64;
        for star in &self.stars {
            self.sample.fill(0.0);
            let base = values[star.base];
            let weight = scale / star.count as f64;
            let players = &self.varied[star.varied..star.varied + star.count];
            let neighbours = &values[star.base + 1..star.base + 1 + star.count];
            for (&j, &other) in players.iter().zip(neighbours) {
                let marginal = if star.up { other - base } else { base - other };
                self.sample[j] = weight * marginal;
            }
            moments.push(&self.sample);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::valuation::exact::tests::soum_strategy;
    use crate::valuation::games::{Counting, Soum, WeightedVoting};
    use crate::valuation::{Game, Tracked, exact_shapley, shapley_weights};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A seeded random SOUM game on `n` players: `2n` terms on random non-empty
    /// carriers with coefficients in [-1, 1).
    pub(crate) fn random_soum(n: usize, seed: u64) -> Soum {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let terms = (0..2 * n)
            .map(|_| {
                let mask = rng.random_range(1..(1u64 << n));
                let carrier = Coalition::from_mask(n, mask).members().collect();
                (carrier, rng.random_range(-1.0..1.0))
            })
            .collect();
        Soum { n, terms }
    }

    /// The semivalue `weights` of `game` by enumerating all `2^n` coalitions.
    pub(crate) fn brute_force(mut game: impl Game, weights: SemivalueWeights) -> Vec<f64> {
        let n = game.n_players();
        let p = weights.coalition_weights(n).unwrap();
        let table: Vec<f64> = (0..1u64 << n)
            .map(|mask| game.value(&Coalition::from_mask(n, mask)))
            .collect();
        let mut phi = vec![0.0; n];
        for (mask, &v) in table.iter().enumerate() {
            let s = mask.count_ones() as usize;
            for (i, x) in phi.iter_mut().enumerate() {
                if mask & (1 << i) == 0 {
                    *x += p[s] * (table[mask | (1 << i)] - v);
                }
            }
        }
        phi
    }

    /// Mean over seeds `0..seeds` of the per-player mean squared error of `estimate`.
    pub(crate) fn mean_mse(
        truth: &[f64],
        seeds: u64,
        mut estimate: impl FnMut(u64) -> Vec<f64>,
    ) -> f64 {
        let total: f64 = (0..seeds)
            .map(|seed| {
                let e = estimate(seed);
                e.iter()
                    .zip(truth)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    / truth.len() as f64
            })
            .sum();
        total / seeds as f64
    }

    fn run(sv: &Semivalue, game: impl Game, seed: u64) -> Valuation {
        sv.estimate(
            &mut Tracked::new(game),
            &mut ChaCha8Rng::seed_from_u64(seed),
        )
        .unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn shapley_and_banzhaf_weights_match_their_formulas() {
        for n in 1..=20 {
            let p = SemivalueWeights::Shapley.coalition_weights(n).unwrap();
            let want = shapley_weights(n);
            assert!(
                p.iter()
                    .zip(&want)
                    .all(|(a, b)| ((a - b) / b).abs() < 1e-12),
                "{n}"
            );
            let q = SemivalueWeights::Shapley.size_probabilities(n).unwrap();
            assert!(q.iter().all(|&x| x == 1.0 / n as f64));
            let p = SemivalueWeights::Banzhaf.coalition_weights(n).unwrap();
            let want = 0.5f64.powi(n as i32 - 1);
            assert!(
                p.iter().all(|x| ((x - want) / want).abs() < 1e-12),
                "{n}: {p:?}"
            );
        }
    }

    #[test]
    fn beta_weights_by_hand() {
        // Beta(2, 1), n = 3: p(s) = B(s + 1, 4 - s) / B(2, 1) = 2 B(s + 1, 4 - s)
        // = (1/2, 1/6, 1/6); q = C(2, s) p(s) = (1/2, 1/3, 1/6).
        let w = SemivalueWeights::Beta {
            alpha: 2.0,
            beta: 1.0,
        };
        assert!(close(
            &w.coalition_weights(3).unwrap(),
            &[0.5, 1.0 / 6.0, 1.0 / 6.0],
            1e-15
        ));
        assert!(close(
            &w.size_probabilities(3).unwrap(),
            &[0.5, 1.0 / 3.0, 1.0 / 6.0],
            1e-15
        ));
        // Beta(16, 1): q(0) = B(1, n + 15) / B(16, 1) = 16 / (n + 15).
        let q = SemivalueWeights::Beta {
            alpha: 16.0,
            beta: 1.0,
        }
        .size_probabilities(14)
        .unwrap();
        assert!((q[0] - 16.0 / 29.0).abs() < 1e-14);
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        // Mirror: Beta(1, 16) weights the sizes from the top.
        let r = SemivalueWeights::Beta {
            alpha: 1.0,
            beta: 16.0,
        }
        .size_probabilities(14)
        .unwrap();
        assert!(
            q.iter()
                .zip(r.iter().rev())
                .all(|(a, b)| (a - b).abs() < 1e-14)
        );
        // Huge n and extreme shapes stay finite and normalised.
        let q = SemivalueWeights::Beta {
            alpha: 0.01,
            beta: 500.0,
        }
        .size_probabilities(5000)
        .unwrap();
        assert!(q.iter().all(|x| x.is_finite()) && (q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn beta_one_one_is_shapley_bit_for_bit() {
        let beta = SemivalueWeights::Beta {
            alpha: 1.0,
            beta: 1.0,
        };
        for n in 1..=30 {
            assert_eq!(
                beta.size_probabilities(n).unwrap(),
                SemivalueWeights::Shapley.size_probabilities(n).unwrap()
            );
        }
        let game = random_soum(8, 9);
        let a = run(&Semivalue::beta_shapley(800, 1.0, 1.0), game.clone(), 4);
        let b = run(
            &Semivalue::new(800, SemivalueWeights::Shapley),
            game.clone(),
            4,
        );
        assert_eq!(a, b);
        // And the brute force with Beta(1, 1) weights is the exact Shapley value.
        let exact = exact_shapley(&mut Tracked::new(game.clone()))
            .unwrap()
            .values;
        assert!(close(&brute_force(game, beta), &exact, 1e-12));
    }

    #[test]
    fn invalid_shapes_are_rejected() {
        for (alpha, beta) in [
            (0.0, 1.0),
            (1.0, -2.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
        ] {
            let err = SemivalueWeights::Beta { alpha, beta }
                .size_probabilities(4)
                .unwrap_err();
            assert!(err.to_string().contains("beta-shapley"), "{err}");
        }
        assert_eq!(
            SemivalueWeights::Shapley.size_probabilities(0),
            Err(ValuationError::NoPlayers)
        );
    }

    /// Mean over `seeds` runs vs `truth`: the largest per-player deviation.
    fn bias(sv: &Semivalue, game: &Soum, truth: &[f64], seeds: u64) -> f64 {
        let mut mean = vec![0.0; truth.len()];
        for seed in 0..seeds {
            let v = run(sv, game.clone(), seed);
            mean.iter_mut()
                .zip(&v.values)
                .for_each(|(m, x)| *m += x / seeds as f64);
        }
        mean.iter()
            .zip(truth)
            .map(|(m, t)| (m - t).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn unbiased_for_every_weighting_and_mse_falls() {
        let game = random_soum(8, 17);
        for weights in [
            SemivalueWeights::Shapley,
            SemivalueWeights::Banzhaf,
            SemivalueWeights::Beta {
                alpha: 16.0,
                beta: 1.0,
            },
            SemivalueWeights::Beta {
                alpha: 1.0,
                beta: 4.0,
            },
        ] {
            let truth = brute_force(game.clone(), weights);
            let worst = bias(&Semivalue::new(200, weights), &game, &truth, 200);
            assert!(worst < 0.04, "{weights:?}: {worst}");
            let errors: Vec<f64> = [100, 1000, 10_000]
                .iter()
                .map(|&b| {
                    mean_mse(&truth, 20, |seed| {
                        run(&Semivalue::new(b, weights), game.clone(), seed).values
                    })
                })
                .collect();
            assert!(
                errors[0] > 3.0 * errors[1] && errors[1] > 3.0 * errors[2],
                "{weights:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn shapley_weights_recover_soum_shapley() {
        let game = random_soum(10, 2);
        let v = run(
            &Semivalue::new(20_000, SemivalueWeights::Shapley),
            game.clone(),
            0,
        );
        let se = v.std_errors.unwrap();
        let truth = game.shapley();
        for ((x, t), s) in v.values.iter().zip(&truth).zip(&se) {
            assert!((x - t).abs() < 4.0 * s && *s < 0.03, "{x} vs {t} (se {s})");
        }
    }

    #[test]
    fn banzhaf_weights_on_weighted_voting() {
        let game = WeightedVoting {
            weights: vec![50.0, 49.0, 1.0],
            quota: 51.0,
        };
        let v = run(&Semivalue::new(20_000, SemivalueWeights::Banzhaf), game, 1);
        assert!(
            close(&v.values, &[0.75, 0.25, 0.25], 0.02),
            "{:?}",
            v.values
        );
    }

    #[test]
    fn standard_errors_cover_the_truth() {
        let game = random_soum(8, 8);
        let weights = SemivalueWeights::Beta {
            alpha: 4.0,
            beta: 2.0,
        };
        let truth = brute_force(game.clone(), weights);
        let (mut inside, mut total) = (0, 0);
        for seed in 0..20 {
            let v = run(&Semivalue::new(400, weights), game.clone(), seed);
            for ((x, s), t) in v.values.iter().zip(v.std_errors.unwrap()).zip(&truth) {
                inside += usize::from((x - t).abs() <= 2.0 * s);
                total += 1;
            }
        }
        assert!(inside as f64 / total as f64 > 0.85, "{inside} / {total}");
    }

    #[test]
    fn one_player_is_exact_and_small_budgets_are_errors() {
        let game = crate::valuation::games::Additive { values: vec![2.5] };
        let v = run(&Semivalue::beta_shapley(2, 16.0, 1.0), game, 0);
        assert_eq!(
            (v.values, v.evaluations, v.stop),
            (vec![2.5], 2, StopReason::Exact)
        );
        let err = Semivalue::new(8, SemivalueWeights::Shapley)
            .estimate(
                &mut Tracked::new(random_soum(8, 0)),
                &mut ChaCha8Rng::seed_from_u64(0),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                ValuationError::BudgetTooSmall {
                    budget: 8,
                    needed: 9,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn same_seed_same_estimate() {
        let sv = Semivalue::beta_shapley(500, 16.0, 1.0);
        let a = run(&sv, random_soum(8, 1), 3);
        assert_eq!(a, run(&sv, random_soum(8, 1), 3));
        assert_ne!(a.values, run(&sv, random_soum(8, 1), 4).values);
    }

    proptest! {
        #[test]
        fn never_exceeds_the_budget(
            game in soum_strategy(8),
            budget in 0u64..300,
            alpha in 0.5f64..20.0,
            beta in 0.5f64..20.0,
            seed: u64,
        ) {
            let n = game.n;
            let mut counted = Tracked::new(Counting { game, calls: 0 });
            let result = Semivalue::beta_shapley(budget, alpha, beta)
                .estimate(&mut counted, &mut ChaCha8Rng::seed_from_u64(seed));
            let calls = counted.into_inner().calls;
            prop_assert!(calls <= budget);
            match result {
                Ok(v) => {
                    prop_assert!(budget > n as u64);
                    prop_assert_eq!(v.evaluations, calls);
                    prop_assert!(v.values.iter().all(|x| x.is_finite()));
                }
                Err(e) => {
                    prop_assert!(budget <= n as u64);
                    prop_assert_eq!(calls, 0);
                    let is_too_small = matches!(e, ValuationError::BudgetTooSmall { .. });
                    prop_assert!(is_too_small);
                }
            }
        }
    }
}
