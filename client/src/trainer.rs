//! The [`Trainer`] hook: the local-training half of a node, in Flower's style.
//!
//! The task loop ([`run_node`](crate::run_node)) owns the network; a trainer only takes
//! parameters and returns data, so any model (the built-in ones, or a caller's own) plugs in
//! by implementing two methods. [`ModelTrainer`] is the implementation over fedval-core's
//! models, seeded so that a node, a round and the server's seed always give the same update.

use fedval_core::data::Dataset;
use fedval_core::model::{ModelSpec, TrainConfig};
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

/// A [`Trainer`] over fedval-core's built-in models and a local [`Dataset`].
#[derive(Clone, Debug)]
pub struct ModelTrainer {
    spec: ModelSpec,
    data: Dataset,
    seed: u64,
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
        Ok(Self { spec, data, seed })
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
    /// Trains a copy of `global` with mini-batch SGD and returns `local - global`, the local
    /// sample count and the training loss and accuracy.
    ///
    /// The RNG is `ChaCha8Rng` seeded from (node seed, round, server seed), so the same
    /// inputs always give the same update.
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
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, task.round, task.params.seed));
        let m = self.spec.train(&mut params, &self.data, &cfg, &mut rng)?;
        let update = params.iter().zip(global).map(|(l, g)| l - g).collect();
        Ok(TrainOutput {
            update,
            num_samples: self.data.len() as u64,
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

/// Combines the node seed, the round and the server's seed into one RNG seed (SplitMix64
/// finaliser applied along the chain, so nearby inputs give unrelated seeds).
fn mix_seed(node: u64, round: u64, server: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    splitmix(splitmix(splitmix(node) ^ round) ^ server)
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
        }
    }

    #[test]
    fn update_is_trained_minus_global() {
        let global = spec().init_params(11);
        let t = task(4, 9);
        let out = ModelTrainer::new(spec(), data(), 3)
            .unwrap()
            .train(&global, &t)
            .unwrap();

        // Train the same copy by hand with the documented seed mix.
        let mut local = global.clone();
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 2,
            learning_rate: 0.5,
            l2: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(3, 4, 9));
        let m = spec().train(&mut local, &data(), &cfg, &mut rng).unwrap();
        let expected: Vec<f32> = local.iter().zip(&global).map(|(l, g)| l - g).collect();

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

    #[test]
    fn seed_mix_separates_argument_order() {
        assert_eq!(mix_seed(1, 2, 3), mix_seed(1, 2, 3));
        assert_ne!(mix_seed(1, 2, 3), mix_seed(3, 2, 1));
        assert_ne!(mix_seed(0, 0, 1), mix_seed(0, 1, 0));
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
