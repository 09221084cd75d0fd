//! The contexts and rewards a federated-bandit client acts on.
//!
//! A client's environment is its own (its users, its data); the client SDK's bandit agent only
//! needs the arm set at each step and the reward of the arm it played. Simulated environments
//! also know the best arm, so they report the pseudo-regret of each step.
//!
//! Two simulated environments are provided, both pure functions of `(seed, client, step)` (each
//! step draws from its own position of a seeded stream, see [`indexed_rng`]), so a run
//! reproduces whatever order the steps are played in:
//! - [`LinearEnvironment`]: the setting of Truth-FedBan's analysis. Every client of one
//!   federation shares a unit `theta*` drawn from the seed; each step shows `K` fresh unit
//!   arms and the reward is `x^T theta* + N(0, sigma^2)`. This is the environment for the
//!   `O~(d sqrt(T))` regret bar.
//! - [`DigitsEnvironment`]: a contextual bandit on the shipped digits images. Each step shows
//!   one of the client's own images; the arms are the 10 classes (disjoint encoding) and the
//!   reward is 1 for the right class. A linear model of class indicators is misspecified, so
//!   LinUCB's regret need not be sublinear here: it measures how well a shared linear
//!   classifier learned by bandit feedback does, not the regret bound.
//!
//! The module also holds the largest bandit dimension ([`MAX_BANDIT_DIM`]), which the server
//! and the client SDK both enforce.

use rand::Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

use super::IncentiveError;
use crate::data::Dataset;
use crate::linalg::dot;
use crate::seed::indexed_rng;

/// What playing an arm returned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Feedback {
    /// The observed reward (finite).
    pub reward: f64,
    /// Simulated environments: the step's pseudo-regret (best expected reward minus the played
    /// arm's); `None` when unknown (a real deployment).
    pub regret: Option<f64>,
}

/// One client's bandit environment.
pub trait Environment: Send {
    /// Context dimension `d` of every arm's feature vector.
    fn dim(&self) -> usize;
    /// The arm set (feature vectors of length [`Environment::dim`]) seen at global step `step`.
    fn arms(&mut self, step: u64) -> Vec<Vec<f64>>;
    /// Plays arm `arm` of the last arm set of `step` and returns its feedback.
    fn play(&mut self, step: u64, arm: usize) -> Feedback;
}

/// Largest context dimension `d` of a bandit federation: a client's `d x d` Gram update
/// (512 KiB at 256) travels in one gRPC message. The server refuses larger settings and
/// the client SDK a larger enrollment answer.
pub const MAX_BANDIT_DIM: usize = 256;

/// The most random numbers one step of a [`LinearEnvironment`] may draw (`arms * dim`), well
/// inside the `2^24` words of its slot of the stream.
const MAX_STEP_DRAWS: usize = 1 << 20;

/// A uniformly random unit vector of dimension `d >= 1` (a normalised Gaussian draw).
pub fn unit_vector(rng: &mut impl Rng, d: usize) -> Vec<f64> {
    loop {
        let v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-12 {
            return v.into_iter().map(|x| x / norm).collect();
        }
    }
}

/// The stream reserved for the shared `theta*` (clients use streams `0..u64::MAX`).
const THETA_STREAM: u64 = u64::MAX;

/// Checks a client index: [`THETA_STREAM`] is reserved.
fn check_client(client: u64) -> Result<(), IncentiveError> {
    if client == THETA_STREAM {
        return Err(IncentiveError::InvalidParameter {
            name: "client index",
            value: client as f64,
            reason: "must be below 2^64 - 1 (the last stream is reserved)",
        });
    }
    Ok(())
}

/// One step's draw of a [`LinearEnvironment`].
#[derive(Clone, Debug, PartialEq)]
struct LinearStep {
    step: u64,
    arms: Vec<Vec<f64>>,
    /// `x^T theta*` of every arm.
    means: Vec<f64>,
    /// The reward noise of the step (the same whichever arm is played).
    noise: f64,
}

/// A synthetic linear bandit: a unit `theta*` in `R^d` shared by every client of the seed, `K`
/// fresh unit arms per step and Gaussian reward noise, all drawn per `(seed, client, step)`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearEnvironment {
    arms: usize,
    noise: Normal<f64>,
    seed: u64,
    client: u64,
    theta: Vec<f64>,
    /// The draw of the last step asked for (usually asked twice: arms, then play).
    current: LinearStep,
}

impl LinearEnvironment {
    /// Client `client`'s environment of dimension `dim >= 1` with `arms >= 1` arms per step
    /// (`arms * dim <= 2^20`) and reward noise standard deviation `noise_sd >= 0`; every
    /// client built with the same `seed` and `dim` shares `theta*`.
    pub fn new(
        dim: usize,
        arms: usize,
        noise_sd: f64,
        seed: u64,
        client: u64,
    ) -> Result<Self, IncentiveError> {
        for (name, value) in [("dim", dim), ("arms", arms)] {
            if value == 0 {
                return Err(IncentiveError::InvalidParameter {
                    name,
                    value: 0.0,
                    reason: "must be >= 1",
                });
            }
        }
        if arms.saturating_mul(dim) > MAX_STEP_DRAWS {
            return Err(IncentiveError::InvalidParameter {
                name: "arms * dim",
                value: arms as f64 * dim as f64,
                reason: "must be <= 2^20 (random numbers drawn per step)",
            });
        }
        check_client(client)?;
        // `Normal::new` accepts a negative deviation (a mirrored normal): check first.
        let noise = Some(noise_sd)
            .filter(|sd| sd.is_finite() && *sd >= 0.0)
            .and_then(|sd| Normal::new(0.0, sd).ok())
            .ok_or(IncentiveError::InvalidParameter {
                name: "noise_sd",
                value: noise_sd,
                reason: "must be finite and >= 0",
            })?;
        let mut env = Self {
            arms,
            noise,
            seed,
            client,
            theta: Self::shared_theta(dim, seed),
            current: LinearStep {
                step: 0,
                arms: Vec::new(),
                means: Vec::new(),
                noise: 0.0,
            },
        };
        env.current = env.fresh(0);
        Ok(env)
    }

    /// The unit `theta*` every client of `seed` shares (dimension `dim`).
    pub fn shared_theta(dim: usize, seed: u64) -> Vec<f64> {
        unit_vector(&mut indexed_rng(seed, THETA_STREAM, 0), dim.max(1))
    }

    /// The shared unknown parameter `theta*`.
    pub fn theta_star(&self) -> &[f64] {
        &self.theta
    }

    /// Draws step `step`: the arms, then the reward noise.
    fn fresh(&self, step: u64) -> LinearStep {
        let mut rng = indexed_rng(self.seed, self.client, step);
        let d = self.theta.len();
        let arms: Vec<Vec<f64>> = (0..self.arms).map(|_| unit_vector(&mut rng, d)).collect();
        let means = arms.iter().map(|x| dot(x, &self.theta)).collect();
        let noise = self.noise.sample(&mut rng);
        LinearStep {
            step,
            arms,
            means,
            noise,
        }
    }

    /// The draw of `step` (cached).
    fn draw(&mut self, step: u64) -> &LinearStep {
        if self.current.step != step {
            self.current = self.fresh(step);
        }
        &self.current
    }
}

impl Environment for LinearEnvironment {
    fn dim(&self) -> usize {
        self.theta.len()
    }

    fn arms(&mut self, step: u64) -> Vec<Vec<f64>> {
        self.draw(step).arms.clone()
    }

    /// Reward `x^T theta* + noise`, regret `max_k x_k^T theta* - x^T theta*`. An arm index
    /// outside the arm set plays the worst arm (the agent only ever picks from the set).
    fn play(&mut self, step: u64, arm: usize) -> Feedback {
        let s = self.draw(step);
        let best = s.means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let worst = s.means.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = s.means.get(arm).copied().unwrap_or(worst);
        Feedback {
            reward: mean + s.noise,
            regret: Some(best - mean),
        }
    }
}

/// A contextual bandit on digit images: at each step the client sees one of its own images
/// (drawn per `(seed, client, step)`), pooled to a small context `c` plus a bias; arm `a` is
/// `c` placed in block `a` of a `classes * |c|` vector (disjoint encoding, so the linear model
/// is one weight vector per class); the reward is 1 for the right class and 0 otherwise, and
/// the regret `1 - reward` (the right class always has expected reward 1).
///
/// Honest caveat: the expected reward of a class is not linear in the pooled pixels, so the
/// model is misspecified and regret need not grow like `sqrt(T)`; use
/// [`LinearEnvironment`] for the regret bar.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitsEnvironment {
    /// The pooled context (with bias) of each own sample.
    contexts: Vec<Vec<f64>>,
    labels: Vec<u32>,
    classes: usize,
    seed: u64,
    client: u64,
}

impl DigitsEnvironment {
    /// Client `client`'s environment over its own samples `data` (square images stored row
    /// by row with pixels in `[0, 1]`, as [`crate::data::builtin::digits`] gives them), average
    /// pooled over `pool x pool` blocks (`pool` must divide the image side: for 8x8 digits
    /// 1, 2, 4 or 8 give 65, 17, 5 or 2 context features with the bias, so `d = 10 x` that).
    pub fn new(
        data: &Dataset,
        pool: usize,
        seed: u64,
        client: u64,
    ) -> Result<Self, IncentiveError> {
        check_client(client)?;
        if data.is_empty() {
            return Err(IncentiveError::InvalidParameter {
                name: "samples",
                value: 0.0,
                reason: "a digits environment needs at least one sample",
            });
        }
        if data.num_classes < 2 {
            return Err(IncentiveError::InvalidParameter {
                name: "classes",
                value: data.num_classes as f64,
                reason: "need at least two classes (arms)",
            });
        }
        let pixels = data.num_features();
        let side = (pixels as f64).sqrt().round() as usize;
        if side * side != pixels || side == 0 {
            return Err(IncentiveError::Dimension {
                what: "image pixels (a square image)",
                expected: side.max(1) * side.max(1),
                got: pixels,
            });
        }
        if pool == 0 || !side.is_multiple_of(pool) {
            return Err(IncentiveError::InvalidParameter {
                name: "pool",
                value: pool as f64,
                reason: "must be >= 1 and divide the image side",
            });
        }
        let contexts = data
            .features
            .rows()
            .into_iter()
            .map(|row| {
                let image: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                pooled_context(&image, side, pool)
            })
            .collect();
        Ok(Self {
            contexts,
            labels: data.labels.clone(),
            classes: data.num_classes,
            seed,
            client,
        })
    }

    /// Number of context features per class block (pooled pixels plus the bias).
    pub fn context_len(&self) -> usize {
        self.contexts.first().map_or(0, Vec::len)
    }

    /// The index (into the client's own samples) of the image shown at `step`.
    pub fn sample_at(&self, step: u64) -> usize {
        indexed_rng(self.seed, self.client, step).random_range(0..self.labels.len())
    }
}

/// Average pooling of a `side x side` row-major image over `pool x pool` blocks (`pool`
/// divides `side`), each value clamped to `[0, 1]`, followed by a bias feature 1.
pub fn pooled_context(image: &[f64], side: usize, pool: usize) -> Vec<f64> {
    let cells = side / pool.max(1);
    let area = (pool * pool) as f64;
    let mut out = Vec::with_capacity(cells * cells + 1);
    for by in 0..cells {
        for bx in 0..cells {
            let mut sum = 0.0;
            for y in by * pool..(by + 1) * pool {
                for x in bx * pool..(bx + 1) * pool {
                    sum += image.get(y * side + x).copied().unwrap_or(0.0);
                }
            }
            out.push((sum / area).clamp(0.0, 1.0));
        }
    }
    out.push(1.0);
    out
}

impl Environment for DigitsEnvironment {
    fn dim(&self) -> usize {
        self.classes * self.context_len()
    }

    fn arms(&mut self, step: u64) -> Vec<Vec<f64>> {
        let c = &self.contexts[self.sample_at(step)];
        (0..self.classes)
            .map(|a| {
                let mut x = vec![0.0; self.classes * c.len()];
                x[a * c.len()..(a + 1) * c.len()].copy_from_slice(c);
                x
            })
            .collect()
    }

    /// Reward 1 if `arm` is the image's class, else 0; regret `1 - reward`.
    fn play(&mut self, step: u64, arm: usize) -> Feedback {
        let label = self.labels[self.sample_at(step)] as usize;
        let reward = if arm == label { 1.0 } else { 0.0 };
        Feedback {
            reward,
            regret: Some(1.0 - reward),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin;

    fn linear(client: u64) -> LinearEnvironment {
        LinearEnvironment::new(5, 10, 0.1, 42, client).unwrap()
    }

    #[test]
    fn linear_is_a_pure_function_of_seed_client_and_step() {
        let (mut a, mut b) = (linear(3), linear(3));
        // Different visiting orders give the same draws.
        let forward: Vec<(Vec<Vec<f64>>, Feedback)> = (1..=20)
            .map(|t| (a.arms(t), a.play(t, (t % 10) as usize)))
            .collect();
        for t in (1..=20).rev() {
            let (arms, feedback) = &forward[t as usize - 1];
            assert_eq!(&b.arms(t), arms);
            assert_eq!(b.play(t, (t % 10) as usize), *feedback);
        }
        // Playing without asking for the arms first gives the same feedback.
        assert_eq!(linear(3).play(7, 7), forward[6].1);
        assert_ne!(
            linear(4).arms(1),
            forward[0].0,
            "clients have their own streams"
        );
        assert_ne!(
            LinearEnvironment::new(5, 10, 0.1, 43, 3).unwrap().arms(1),
            forward[0].0
        );
    }

    #[test]
    fn linear_theta_is_shared_and_unit_and_arms_are_unit() {
        let theta = linear(0).theta_star().to_vec();
        assert_eq!(theta, linear(9).theta_star());
        assert_eq!(theta, LinearEnvironment::shared_theta(5, 42));
        assert_ne!(theta, LinearEnvironment::shared_theta(5, 41));
        assert!((dot(&theta, &theta) - 1.0).abs() < 1e-12);
        let mut env = linear(1);
        assert_eq!(env.dim(), 5);
        for t in 0..50 {
            let arms = env.arms(t);
            assert_eq!(arms.len(), 10);
            for x in &arms {
                assert_eq!(x.len(), 5);
                assert!((dot(x, x) - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn linear_regret_is_best_mean_minus_played_mean() {
        let mut env = LinearEnvironment::new(4, 6, 0.0, 7, 2).unwrap();
        let theta = env.theta_star().to_vec();
        for t in 0..100 {
            let arms = env.arms(t);
            let means: Vec<f64> = arms.iter().map(|x| dot(x, &theta)).collect();
            let best = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let best_arm = means.iter().position(|&m| m == best).unwrap();
            for (k, &m) in means.iter().enumerate() {
                let f = env.play(t, k);
                // No noise: the reward is the mean.
                assert_eq!(f.reward, m);
                let regret = f.regret.unwrap();
                assert!(regret >= 0.0);
                assert_eq!(regret, best - m);
            }
            assert_eq!(env.play(t, best_arm).regret, Some(0.0));
            // Out of range: the worst arm.
            let worst = means.iter().copied().fold(f64::INFINITY, f64::min);
            assert_eq!(env.play(t, 99).reward, worst);
        }
    }

    #[test]
    fn linear_noise_has_the_configured_spread() {
        let mut env = LinearEnvironment::new(3, 2, 0.5, 1, 0).unwrap();
        let theta = env.theta_star().to_vec();
        let noise: Vec<f64> = (0..4000)
            .map(|t| {
                let mean = dot(&env.arms(t)[0], &theta);
                env.play(t, 0).reward - mean
            })
            .collect();
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let sd = (noise.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((sd - 0.5).abs() < 0.03, "{sd}");
    }

    #[test]
    fn linear_settings_are_validated() {
        let err = |r: Result<LinearEnvironment, IncentiveError>| r.unwrap_err();
        assert!(matches!(
            err(LinearEnvironment::new(0, 3, 0.1, 0, 0)),
            IncentiveError::InvalidParameter { name: "dim", .. }
        ));
        assert!(matches!(
            err(LinearEnvironment::new(3, 0, 0.1, 0, 0)),
            IncentiveError::InvalidParameter { name: "arms", .. }
        ));
        for sd in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                err(LinearEnvironment::new(3, 3, sd, 0, 0)),
                IncentiveError::InvalidParameter {
                    name: "noise_sd",
                    ..
                }
            ));
        }
        assert!(LinearEnvironment::new(256, 1 << 13, 0.1, 0, 0).is_err());
        assert!(LinearEnvironment::new(3, 3, 0.1, 0, u64::MAX).is_err());
    }

    #[test]
    fn pooling_averages_blocks_and_appends_a_bias() {
        // A 4x4 image 0..16 / 16, pooled 2x2.
        let image: Vec<f64> = (0..16).map(|v| v as f64 / 16.0).collect();
        let c = pooled_context(&image, 4, 2);
        let block = |a: [usize; 4]| a.iter().map(|&i| i as f64 / 16.0).sum::<f64>() / 4.0;
        assert_eq!(
            c,
            vec![
                block([0, 1, 4, 5]),
                block([2, 3, 6, 7]),
                block([8, 9, 12, 13]),
                block([10, 11, 14, 15]),
                1.0
            ]
        );
        assert_eq!(
            pooled_context(&[2.0, -1.0, 0.5, 0.25], 2, 1),
            vec![1.0, 0.0, 0.5, 0.25, 1.0]
        );
    }

    fn digits_env(pool: usize, client: u64) -> DigitsEnvironment {
        let data = builtin::digits();
        let own: Vec<usize> = (0..100).collect();
        DigitsEnvironment::new(&data.subset(&own), pool, 5, client).unwrap()
    }

    #[test]
    fn digits_dims_follow_the_pooling() {
        for (pool, len) in [(1, 65), (2, 17), (4, 5), (8, 2)] {
            let mut env = digits_env(pool, 0);
            assert_eq!(env.context_len(), len);
            assert_eq!(env.dim(), 10 * len);
            let arms = env.arms(3);
            assert_eq!(arms.len(), 10);
            assert!(arms.iter().all(|x| x.len() == 10 * len));
        }
        let data = builtin::digits();
        let some = data.subset(&[0, 1]);
        assert!(DigitsEnvironment::new(&some, 3, 0, 0).is_err());
        assert!(DigitsEnvironment::new(&some, 0, 0, 0).is_err());
        assert!(DigitsEnvironment::new(&data.subset(&[]), 2, 0, 0).is_err());
        let iris = builtin::iris();
        // 4 features: a 2x2 "image", 3 classes.
        assert_eq!(DigitsEnvironment::new(&iris, 1, 0, 0).unwrap().dim(), 3 * 5);
        assert!(matches!(
            DigitsEnvironment::new(&builtin::wine(), 1, 0, 0),
            Err(IncentiveError::Dimension { got: 13, .. })
        ));
    }

    #[test]
    fn digits_arms_are_disjoint_blocks_of_the_pooled_image() {
        let data = builtin::digits();
        let own: Vec<usize> = (0..100).collect();
        let mut env = digits_env(2, 1);
        for t in 0..30 {
            let i = env.sample_at(t);
            let image: Vec<f64> = data
                .features
                .row(own[i])
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let c = pooled_context(&image, 8, 2);
            assert!(c.iter().all(|v| (0.0..=1.0).contains(v)));
            for (a, x) in env.arms(t).iter().enumerate() {
                for (block, chunk) in x.chunks(17).enumerate() {
                    if block == a {
                        assert_eq!(chunk, c.as_slice());
                    } else {
                        assert!(chunk.iter().all(|&v| v == 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn digits_reward_is_one_exactly_for_the_right_class() {
        let data = builtin::digits();
        let mut env = digits_env(2, 2);
        let mut shown = std::collections::BTreeSet::new();
        for t in 0..200 {
            let i = env.sample_at(t);
            shown.insert(i);
            let label = data.labels[i] as usize;
            for a in 0..10 {
                let f = env.play(t, a);
                let right = a == label;
                assert_eq!(f.reward, if right { 1.0 } else { 0.0 });
                assert_eq!(f.regret, Some(if right { 0.0 } else { 1.0 }));
            }
            assert_eq!(env.play(t, 10).reward, 0.0);
        }
        // Steps draw from all of the client's own samples.
        assert!(shown.len() > 80 && shown.iter().all(|&i| i < 100));
    }

    #[test]
    fn digits_draws_are_deterministic_per_client() {
        let (a, b) = (digits_env(2, 3), digits_env(2, 3));
        let steps: Vec<usize> = (0..50).map(|t| a.sample_at(t)).collect();
        assert_eq!(steps, (0..50).map(|t| b.sample_at(t)).collect::<Vec<_>>());
        let other: Vec<usize> = (0..50).map(|t| digits_env(2, 4).sample_at(t)).collect();
        assert_ne!(steps, other);
    }
}
