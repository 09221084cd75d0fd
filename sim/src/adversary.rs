//! Adversarial clients as a [`Trainer`] wrapper around the SDK's [`ModelTrainer`].
//!
//! Attacks that alter the update (free riders, sign flip, scaled noise, Sybil copies) live
//! here; attacks on the data (label flip) are applied by [`setup`](crate::setup) and the
//! late joiner is a matter of timing handled by the [`runner`](crate::runner). Every random
//! draw comes from a `ChaCha8Rng` seeded by the client's seed and the round, so a scenario
//! and seed always give the same uploads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fedval_client::{ModelTrainer, TrainOutput, TrainTask, Trainer, TrainerError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// What a client does with its update.
#[derive(Clone, Debug)]
pub enum Attack {
    /// Uploads what it trained.
    Honest,
    /// Uploads uniform noise in [-1, 1] without training.
    FreeRiderNoise,
    /// Uploads a zero update (the global model sent back unchanged) without training.
    FreeRiderZero,
    /// Trains honestly and uploads the negated update.
    SignFlip,
    /// Trains honestly to measure its update's norm `n`, then uploads a standard Gaussian
    /// vector rescaled to norm `factor * n` (the honest update itself is discarded).
    ScaledNoise {
        /// Multiple of the honest norm.
        factor: f64,
    },
    /// Uploads the group's shared update for the round.
    Sybil(SybilGroup),
}

/// The shared state of one Sybil party's identities.
///
/// Every identity holds a trainer over the same data with the same seed, so the update a
/// round would produce is the same whoever computes it. The first identity to reach a round
/// trains (holding the lock, so the others wait for it) and stores the output under the
/// round number; the others find it and upload a bit-identical copy (same update, sample
/// count and metrics). This needs no leader, so no identity ever waits for one that is not
/// scheduled. Rounds older than the newest are dropped.
#[derive(Clone, Debug, Default)]
pub struct SybilGroup {
    by_round: Arc<Mutex<BTreeMap<u64, TrainOutput>>>,
}

impl SybilGroup {
    /// A group with no round trained yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The group's output for `task.round`, training with `trainer` if nobody has yet.
    fn output(
        &self,
        trainer: &mut ModelTrainer,
        global: &[f32],
        task: &TrainTask,
    ) -> Result<TrainOutput, TrainerError> {
        let mut by_round = self
            .by_round
            .lock()
            .map_err(|_| "a Sybil identity panicked while training")?;
        if let Some(out) = by_round.get(&task.round) {
            return Ok(out.clone());
        }
        let out = trainer.train(global, task)?;
        by_round.retain(|&round, _| round > task.round);
        by_round.insert(task.round, out.clone());
        Ok(out)
    }
}

/// A [`ModelTrainer`] with an [`Attack`] applied to its uploads; evaluation is untouched.
#[derive(Clone, Debug)]
pub struct AdversaryTrainer {
    inner: ModelTrainer,
    attack: Attack,
    seed: u64,
}

impl AdversaryTrainer {
    /// Wraps `inner`; `seed` drives the attack's random draws (mixed with the round).
    pub fn new(inner: ModelTrainer, attack: Attack, seed: u64) -> Self {
        Self {
            inner,
            attack,
            seed,
        }
    }

    /// The RNG of the attack's draws in `round`.
    fn rng(&self, round: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// An output that trained nothing: `update`, the claimed local sample count, no metrics.
    fn untrained(&self, update: Vec<f32>) -> TrainOutput {
        TrainOutput {
            update,
            num_samples: self.inner.data().len() as u64,
            metrics: Vec::new(),
        }
    }
}

impl Trainer for AdversaryTrainer {
    /// The inner trainer's output with the attack applied.
    fn train(&mut self, global: &[f32], task: &TrainTask) -> Result<TrainOutput, TrainerError> {
        match &self.attack {
            Attack::Honest => self.inner.train(global, task),
            Attack::FreeRiderNoise => {
                let mut rng = self.rng(task.round);
                let update = (0..global.len())
                    .map(|_| rng.random_range(-1.0f32..=1.0))
                    .collect();
                Ok(self.untrained(update))
            }
            Attack::FreeRiderZero => Ok(self.untrained(vec![0.0; global.len()])),
            Attack::SignFlip => {
                let mut out = self.inner.train(global, task)?;
                out.update.iter_mut().for_each(|d| *d = -*d);
                Ok(out)
            }
            Attack::ScaledNoise { factor } => {
                let factor = *factor;
                let mut out = self.inner.train(global, task)?;
                let target = norm(&out.update) * factor;
                let mut rng = self.rng(task.round);
                let noise: Vec<f64> = (0..out.update.len())
                    .map(|_| rng.sample::<f64, _>(StandardNormal))
                    .collect();
                let len = noise.iter().map(|x| x * x).sum::<f64>().sqrt();
                let scale = if len > 0.0 { target / len } else { 0.0 };
                out.update = noise.iter().map(|x| (x * scale) as f32).collect();
                Ok(out)
            }
            Attack::Sybil(group) => group.clone().output(&mut self.inner, global, task),
        }
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Vec<(String, f64)>, TrainerError> {
        self.inner.evaluate(params)
    }
}

/// Euclidean norm, accumulated in f64.
pub fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fedval_client::TrainParams;
    use fedval_core::data::{Dataset, builtin};
    use fedval_core::model::ModelSpec;

    use super::*;

    fn data() -> Dataset {
        let full = builtin::by_name("iris").expect("iris ships");
        let rows: Vec<usize> = (0..full.len()).step_by(3).collect();
        full.subset(&rows)
    }

    fn spec() -> ModelSpec {
        ModelSpec::LogisticRegression {
            num_features: 4,
            num_classes: 3,
        }
    }

    fn task(round: u64) -> TrainTask {
        TrainTask {
            round,
            model_version: round - 1,
            params: TrainParams {
                local_epochs: 2,
                batch_size: 8,
                learning_rate: 0.1,
                seed: 5,
            },
            deadline: Duration::from_secs(60),
            model: spec(),
            required_points: None,
        }
    }

    fn global() -> Vec<f32> {
        (0..spec().num_params())
            .map(|i| (i as f32 * 0.37).sin() * 0.2)
            .collect()
    }

    fn honest() -> ModelTrainer {
        ModelTrainer::new(spec(), data(), 11).expect("trainer")
    }

    fn train(attack: Attack, round: u64) -> TrainOutput {
        AdversaryTrainer::new(honest(), attack, 7)
            .train(&global(), &task(round))
            .expect("train")
    }

    #[test]
    fn honest_wrapper_is_the_inner_trainer() {
        let expected = honest().train(&global(), &task(2)).expect("train");
        assert_eq!(train(Attack::Honest, 2), expected);
        assert!(expected.update.iter().any(|&d| d != 0.0));
    }

    #[test]
    fn sign_flip_negates_the_honest_update_exactly() {
        let expected = honest().train(&global(), &task(3)).expect("train");
        let flipped = train(Attack::SignFlip, 3);
        assert_eq!(flipped.update.len(), expected.update.len());
        for (f, e) in flipped.update.iter().zip(&expected.update) {
            assert_eq!(f.to_bits(), (-e).to_bits());
        }
        assert_eq!(flipped.num_samples, expected.num_samples);
    }

    #[test]
    fn zero_free_rider_sends_zeros() {
        let out = train(Attack::FreeRiderZero, 1);
        assert_eq!(out.update, vec![0.0; spec().num_params()]);
        assert_eq!(out.num_samples, data().len() as u64);
    }

    #[test]
    fn noise_free_rider_uploads_seeded_uniform_noise() {
        let out = train(Attack::FreeRiderNoise, 4);
        assert_eq!(out.update.len(), spec().num_params());
        assert!(out.update.iter().all(|d| (-1.0..=1.0).contains(d)));
        // Spread over the interval, not a constant.
        assert!(out.update.iter().any(|&d| d > 0.5) && out.update.iter().any(|&d| d < -0.5));
        assert_eq!(train(Attack::FreeRiderNoise, 4), out, "same seed and round");
        assert_ne!(
            train(Attack::FreeRiderNoise, 5).update,
            out.update,
            "round ignored"
        );
    }

    #[test]
    fn scaled_noise_has_the_honest_norm_times_the_factor() {
        let honest_update = honest().train(&global(), &task(2)).expect("train").update;
        let out = train(Attack::ScaledNoise { factor: 3.0 }, 2);
        let expected = norm(&honest_update) * 3.0;
        assert!(
            (norm(&out.update) - expected).abs() < 1e-5 * expected,
            "{} vs {expected}",
            norm(&out.update)
        );
        let cos = out
            .update
            .iter()
            .zip(&honest_update)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum::<f64>()
            / (norm(&out.update) * norm(&honest_update));
        assert!(cos.abs() < 0.99, "noise is not the honest direction: {cos}");
    }

    #[test]
    fn sybil_identities_upload_identical_updates() {
        let group = SybilGroup::new();
        let mut a = AdversaryTrainer::new(honest(), Attack::Sybil(group.clone()), 1);
        let mut b = AdversaryTrainer::new(honest(), Attack::Sybil(group.clone()), 2);
        let expected = honest().train(&global(), &task(6)).expect("train");
        let from_b = b.train(&global(), &task(6)).expect("b trains first");
        let from_a = a.train(&global(), &task(6)).expect("a copies");
        assert_eq!(from_a, from_b);
        assert_eq!(from_a, expected, "the shared update is the honest one");
        // A later round is trained afresh and the older one dropped.
        let next = a.train(&global(), &task(7)).expect("round 7");
        assert_ne!(next.update, from_a.update);
        assert_eq!(b.train(&global(), &task(7)).expect("copy 7"), next);
        let kept: Vec<u64> = group
            .by_round
            .lock()
            .expect("lock")
            .keys()
            .copied()
            .collect();
        assert_eq!(kept, vec![7]);
    }
}
