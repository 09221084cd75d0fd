//! The [`Trainer`] hook: the local-training half of a node, in Flower's style.
//!
//! The task loop ([`run_node`](crate::run_node)) owns the network; a trainer only takes
//! parameters and returns data, so any model (the built-in ones, or a caller's own) plugs in
//! by implementing two methods. [`ModelTrainer`] is the implementation over fedval-core's
//! models, seeded so that a node, a round and the server's seed always give the same update.
//!
//! In a FACT federation a train task carries the points `m*` the node must train on
//! ([`TrainTask::required_points`]). [`ModelTrainer`] then trains on its first
//! `min(ceil(m*), n)` local samples and reports that count as the update's sample count
//! (its claim). A [`Contribution`] other than [`Contribution::Honest`] makes it
//! misbehave on purpose (simulations): train on a fraction of `m*` and claim either `m*`
//! (a free rider FACT cannot catch) or what it trained (penalised); see [`points`].

use fedval_core::data::Dataset;
use fedval_core::model::{ModelSpec, TrainConfig};
use fedval_core::seed::mix_seed;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::ClientError;
use crate::task::TrainTask;

/// Boxed error a trainer returns; the loop wraps it in [`ClientError::Trainer`].
pub type TrainerError = Box<dyn std::error::Error + Send + Sync>;

/// Local training plugged into the task loop.
///
/// Both methods are called on a blocking thread (training is CPU-bound), so they may take
/// as long as they need without stalling the runtime.
pub trait Trainer: Send + 'static {
    /// Trains from the `global` parameters for `task` and returns the update
    /// (local - global), the number of samples used and local metrics.
    fn train(&mut self, global: &[f32], task: &TrainTask) -> Result<TrainOutput, TrainerError>;

    /// Evaluates `params` on local data, returning named metrics.
    fn evaluate(&mut self, params: &[f32]) -> Result<Vec<(String, f64)>, TrainerError>;
}

/// What one local training run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutput {
    /// Local parameters minus the global ones.
    pub update: Vec<f32>,
    /// Number of samples trained on (the weight of the update in FedAvg).
    pub num_samples: u64,
    /// Local metrics to report with the update (e.g. training loss).
    pub metrics: Vec<(String, f64)>,
}

/// What a node claims it trained on when it trains on less than required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claims the required `ceil(m*)` points (or all its samples when nothing is
    /// required) whatever it trained on.
    Required,
    /// Claims exactly the points it trained on.
    Trained,
}

/// How a node answers a FACT requirement (see [`points`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Contribution {
    /// Trains on `min(ceil(m*), n)` samples (all `n` when nothing is required) and claims
    /// that count.
    Honest,
    /// Trains on `ceil(fraction x ceil(m*))` samples (of `n` when nothing is required),
    /// at least 1 and at most `n`, and claims per `claim`.
    Partial {
        /// Fraction of the requirement trained on, in `(0, 1]`.
        fraction: f64,
        /// What it claims.
        claim: Claim,
    },
}

impl Contribution {
    /// Checks a partial contribution's fraction (finite, in `(0, 1]`).
    pub fn validate(&self) -> Result<(), ClientError> {
        match *self {
            Contribution::Honest => Ok(()),
            Contribution::Partial { fraction, .. } => {
                if fraction.is_finite() && fraction > 0.0 && fraction <= 1.0 {
                    Ok(())
                } else {
                    Err(ClientError::InvalidInput(format!(
                        "a partial contribution trains on a fraction in (0, 1] of the \
                         required points, got {fraction}"
                    )))
                }
            }
        }
    }
}

/// The samples a node trains on and the count it claims for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Points {
    /// How many of the local samples (the first ones) it trains on; at least 1.
    pub trained: usize,
    /// The sample count it reports (`UpdateHeader.num_samples`); at least 1.
    pub claimed: u64,
}

/// The points of one round: `required` is the task's `m*` (`None`: no requirement),
/// `available` the local sample count (at least 1), `contribution` the node's behaviour.
/// The requirement is rounded up to whole points, `ceil(m*)`.
pub fn points(required: Option<f64>, available: usize, contribution: &Contribution) -> Points {
    let available = available.max(1);
    // `as` saturates: a huge requirement is simply more than the node has.
    let target = required.map_or(available, |m| m.ceil().max(1.0) as usize);
    match *contribution {
        Contribution::Honest => {
            let trained = target.min(available);
            Points {
                trained,
                claimed: trained as u64,
            }
        }
        Contribution::Partial { fraction, claim } => {
            let trained = ((fraction * target as f64).ceil() as usize).clamp(1, available);
            let claimed = match claim {
                Claim::Required => target as u64,
                Claim::Trained => trained as u64,
            };
            Points { trained, claimed }
        }
    }
}

/// A [`Trainer`] over fedval-core's built-in models and a local [`Dataset`].
#[derive(Clone, Debug)]
pub struct ModelTrainer {
    spec: ModelSpec,
    data: Dataset,
    seed: u64,
    contribution: Contribution,
}

impl ModelTrainer {
    /// Builds a trainer for `spec` on `data`; `seed` is this node's own seed.
    ///
    /// Fails with [`ClientError::InvalidInput`] if the data's feature count differs from the
    /// model's or if a label is not a class of the model. Local data that holds only some of
    /// the model's classes (label skew) is fine.
    pub fn new(spec: ModelSpec, data: Dataset, seed: u64) -> Result<Self, ClientError> {
        let bad = |what: String| Err(ClientError::InvalidInput(what));
        if let Err(e) = spec.validate() {
            return bad(format!("model spec {spec:?} is unusable: {e}"));
        }
        if data.is_empty() {
            return bad("local data set has no rows".into());
        }
        if data.num_features() != spec.num_features() {
            return bad(format!(
                "local data has {} features but the federation's model expects {} \
                 (is the label the last column?)",
                data.num_features(),
                spec.num_features()
            ));
        }
        if let Some(&label) = data.labels.iter().max()
            && label as usize >= spec.num_classes()
        {
            return bad(format!(
                "local data has label {label} but the federation's model has {} classes \
                 (labels 0..{})",
                spec.num_classes(),
                spec.num_classes() - 1
            ));
        }
        Ok(Self {
            spec,
            data,
            seed,
            contribution: Contribution::Honest,
        })
    }

    /// The same trainer answering FACT requirements with `contribution` (honest by
    /// default); [`ClientError::InvalidInput`] for a fraction outside `(0, 1]`.
    pub fn with_contribution(mut self, contribution: Contribution) -> Result<Self, ClientError> {
        contribution.validate()?;
        self.contribution = contribution;
        Ok(self)
    }

    /// How this trainer answers FACT requirements.
    pub fn contribution(&self) -> &Contribution {
        &self.contribution
    }

    /// The model architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The local data.
    pub fn data(&self) -> &Dataset {
        &self.data
    }
}

impl Trainer for ModelTrainer {
    /// Trains a copy of `global` with mini-batch SGD and returns `local - global`, the
    /// claimed sample count and the training loss and accuracy. Without a FACT requirement
    /// (and honest) it trains on, and claims, every local sample; with one, on the first
    /// samples [`points`] picks.
    ///
    /// The RNG is `ChaCha8Rng` seeded with [`mix_seed`]`(node seed, [round, server seed])`,
    /// so the same inputs always give the same update.
    fn train(&mut self, global: &[f32], task: &TrainTask) -> Result<TrainOutput, TrainerError> {
        if task.model != self.spec {
            return Err(format!(
                "round {} asks for model {:?} but this trainer was built for {:?}",
                task.round, task.model, self.spec
            )
            .into());
        }
        let mut params = global.to_vec();
        let cfg = TrainConfig {
            epochs: task.params.local_epochs as usize,
            batch_size: task.params.batch_size as usize,
            learning_rate: task.params.learning_rate,
            l2: 0.0,
        };
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix_seed(self.seed, &[task.round, task.params.seed]));
        let points = points(task.required_points, self.data.len(), &self.contribution);
        let m = if points.trained < self.data.len() {
            let first: Vec<usize> = (0..points.trained).collect();
            self.spec
                .train(&mut params, &self.data.subset(&first), &cfg, &mut rng)?
        } else {
            self.spec.train(&mut params, &self.data, &cfg, &mut rng)?
        };
        let update = params.iter().zip(global).map(|(l, g)| l - g).collect();
        Ok(TrainOutput {
            update,
            num_samples: points.claimed,
            metrics: vec![
                ("train_loss".to_owned(), m.loss),
                ("train_accuracy".to_owned(), m.accuracy),
            ],
        })
    }

    /// Loss and accuracy of `params` on the local data.
    fn evaluate(&mut self, params: &[f32]) -> Result<Vec<(String, f64)>, TrainerError> {
        let m = self.spec.evaluate(params, &self.data)?;
        Ok(vec![
            ("loss".to_owned(), m.loss),
            ("accuracy".to_owned(), m.accuracy),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fedval_core::data::parse_csv;

    use super::*;
    use crate::task::TrainParams;

    /// Two separable classes in two features, plus a third column label.
    fn data() -> Dataset {
        let text = "0.1,0.2,0\n0.3,0.1,0\n0.2,0.4,0\n1.1,0.9,1\n0.9,1.2,1\n1.3,1.0,1\n";
        parse_csv(text, None).unwrap()
    }

    fn spec() -> ModelSpec {
        ModelSpec::Mlp {
            num_features: 2,
            hidden: 3,
            num_classes: 2,
        }
    }

    fn task(round: u64, seed: u64) -> TrainTask {
        TrainTask {
            round,
            model_version: round - 1,
            params: TrainParams {
                local_epochs: 3,
                batch_size: 2,
                learning_rate: 0.5,
                seed,
            },
            deadline: Duration::from_secs(60),
            model: spec(),
            required_points: None,
        }
    }

    /// `global` trained by hand on `data` as [`task`]`(round, server_seed)` asks, with the
    /// documented seed mix: the update `local - global` and the training metrics.
    fn by_hand(
        global: &[f32],
        data: &Dataset,
        node_seed: u64,
        round: u64,
        server_seed: u64,
    ) -> (Vec<f32>, fedval_core::model::EvalMetrics) {
        let mut local = global.to_vec();
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 2,
            learning_rate: 0.5,
            l2: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(node_seed, &[round, server_seed]));
        let m = spec().train(&mut local, data, &cfg, &mut rng).unwrap();
        let update = local.iter().zip(global).map(|(l, g)| l - g).collect();
        (update, m)
    }

    #[test]
    fn update_is_trained_minus_global() {
        let global = spec().init_params(11);
        let t = task(4, 9);
        let out = ModelTrainer::new(spec(), data(), 3)
            .unwrap()
            .train(&global, &t)
            .unwrap();

        let (expected, m) = by_hand(&global, &data(), 3, 4, 9);
        assert_eq!(out.update, expected);
        assert!(
            out.update.iter().any(|&d| d != 0.0),
            "training moved nothing"
        );
        assert_eq!(out.num_samples, 6);
        assert_eq!(
            out.metrics,
            vec![
                ("train_loss".to_owned(), m.loss),
                ("train_accuracy".to_owned(), m.accuracy)
            ]
        );
    }

    #[test]
    fn training_is_deterministic_per_seed_round_and_server_seed() {
        let global = spec().init_params(1);
        let run = |node_seed: u64, t: &TrainTask| {
            ModelTrainer::new(spec(), data(), node_seed)
                .unwrap()
                .train(&global, t)
                .unwrap()
                .update
        };
        let base = run(7, &task(2, 5));
        assert_eq!(run(7, &task(2, 5)), base);
        assert_ne!(run(8, &task(2, 5)), base, "node seed ignored");
        assert_ne!(run(7, &task(3, 5)), base, "round ignored");
        assert_ne!(run(7, &task(2, 6)), base, "server seed ignored");
    }

    /// `(required, available, contribution) -> (trained, claimed)`: honest nodes train on
    /// and claim `ceil(m*)` (all of it without a requirement), capped by their data and at
    /// least one point; partial nodes train on a fraction of that and claim as told.
    #[test]
    fn points_follow_the_requirement_the_data_and_the_contribution() {
        let honest = Contribution::Honest;
        let free_rider = Contribution::Partial {
            fraction: 0.2,
            claim: Claim::Required,
        };
        let shirker = Contribution::Partial {
            fraction: 0.2,
            claim: Claim::Trained,
        };
        let tiny = Contribution::Partial {
            fraction: 0.01,
            claim: Claim::Trained,
        };
        /// `(required, available, contribution, (trained, claimed))`.
        type Case<'a> = (Option<f64>, usize, &'a Contribution, (usize, u64));
        let cases: [Case; 11] = [
            (None, 6, &honest, (6, 6)),
            // ceil(m*): 143.2 points need 144.
            (Some(143.2), 500, &honest, (144, 144)),
            (Some(144.0), 500, &honest, (144, 144)),
            // More than the node holds: all of it, and it says so.
            (Some(143.2), 100, &honest, (100, 100)),
            (Some(1e300), 7, &honest, (7, 7)),
            // Never fewer than one point.
            (Some(0.2), 7, &honest, (1, 1)),
            // 20% of ceil(143.2) = 144 is 28.8 -> 29 points.
            (Some(143.2), 500, &free_rider, (29, 144)),
            (Some(143.2), 500, &shirker, (29, 29)),
            // Without a requirement the fraction is of the local data; the claim is all of it.
            (None, 10, &free_rider, (2, 10)),
            // Capped by the data, at least one point.
            (Some(1000.0), 50, &shirker, (50, 50)),
            (Some(10.0), 50, &tiny, (1, 1)),
        ];
        for (required, available, contribution, (trained, claimed)) in cases {
            assert_eq!(
                points(required, available, contribution),
                Points { trained, claimed },
                "{required:?} of {available} as {contribution:?}"
            );
        }
    }

    #[test]
    fn contribution_fractions_outside_zero_one_are_refused() {
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let c = Contribution::Partial {
                fraction: bad,
                claim: Claim::Trained,
            };
            let err = ModelTrainer::new(spec(), data(), 0)
                .unwrap()
                .with_contribution(c)
                .unwrap_err();
            assert!(err.to_string().contains(&format!("got {bad}")), "{err}");
        }
    }

    /// With a requirement the trainer trains on exactly the first `ceil(m*)` samples
    /// (the update equals one trained by hand on them) and claims them.
    #[test]
    fn train_uses_the_first_required_samples_and_claims_them() {
        let global = spec().init_params(5);
        let mut t = task(2, 1);
        t.required_points = Some(3.5);
        let out = ModelTrainer::new(spec(), data(), 4)
            .unwrap()
            .train(&global, &t)
            .unwrap();
        assert_eq!(out.num_samples, 4);
        let (expected, _) = by_hand(&global, &data().subset(&[0, 1, 2, 3]), 4, 2, 1);
        assert_eq!(out.update, expected);
        // A free rider trains on half of it (2 samples) but claims the 4.
        let rider = ModelTrainer::new(spec(), data(), 4)
            .unwrap()
            .with_contribution(Contribution::Partial {
                fraction: 0.5,
                claim: Claim::Required,
            })
            .unwrap()
            .train(&global, &t)
            .unwrap();
        assert_eq!(rider.num_samples, 4);
        assert_ne!(rider.update, out.update);
    }

    #[test]
    fn evaluate_reports_loss_and_accuracy() {
        let params = spec().init_params(2);
        let got = ModelTrainer::new(spec(), data(), 0)
            .unwrap()
            .evaluate(&params)
            .unwrap();
        let m = spec().evaluate(&params, &data()).unwrap();
        assert_eq!(
            got,
            vec![
                ("loss".to_owned(), m.loss),
                ("accuracy".to_owned(), m.accuracy)
            ]
        );
    }

    #[test]
    fn new_refuses_data_that_does_not_fit_the_model() {
        let wide = ModelSpec::LogisticRegression {
            num_features: 3,
            num_classes: 2,
        };
        let err = ModelTrainer::new(wide, data(), 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("local data has 2 features but the federation's model expects 3"),
            "{err}"
        );
        let three_labels = parse_csv("0,0,0\n1,1,2\n", None).unwrap();
        let err = ModelTrainer::new(spec(), three_labels, 0).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        // Local data with fewer classes than the model is normal under label skew.
        let one_class = parse_csv("0,0,1\n1,1,1\n", None).unwrap();
        assert!(ModelTrainer::new(spec(), one_class, 0).is_ok());
    }

    #[test]
    fn train_refuses_a_task_for_another_model() {
        let mut t = task(1, 0);
        t.model = ModelSpec::LogisticRegression {
            num_features: 2,
            num_classes: 2,
        };
        let err = ModelTrainer::new(spec(), data(), 0)
            .unwrap()
            .train(&spec().init_params(0), &t)
            .unwrap_err();
        assert!(err.to_string().contains("round 1 asks for model"), "{err}");
    }
}
