//! The `vertical` section of a federation's configuration and its validation.
//!
//! A vertical federation's server holds the labels (or regression targets) of `N` aligned
//! samples, ids `0..N`; the operator aligns the ids with the parties (private set
//! intersection is out of scope). Every size that reaches memory is bounded here:
//! samples, classes, parties, the batch, the embedding messages and the embedding history
//! the valuation rebuilds, so a configuration cannot make the server allocate without
//! limit. Errors name the field the way an operator writes it (`vertical.labels[3]`).

use fedval_core::valuation::completion::CompletionSettings;
use fedval_core::vertical::Objective;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Most samples (labels or targets) a vertical federation holds.
pub const MAX_VERTICAL_SAMPLES: usize = 1_000_000;
/// Most classes of a classification objective.
pub const MAX_VERTICAL_CLASSES: u32 = 1000;
/// Most parties (`min_clients`) of a vertical federation.
pub const MAX_VERTICAL_PARTIES: usize = 64;
/// Largest mini-batch.
pub const MAX_VERTICAL_BATCH: u32 = 65_536;
/// Most hidden units of a party's MLP embedding.
pub const MAX_VERTICAL_HIDDEN: u32 = 4096;
/// Largest rank of the matrix completion.
pub const MAX_COMPLETION_RANK: u32 = 64;
/// Most values (`rows x output_dim`) one embedding exchange carries (64 MiB of f32): the
/// batch and the evaluation pass over `test_ids` are both bounded by it.
pub const MAX_EMBEDDING_VALUES: usize = 16 << 20;
/// Most embedding values the valuation rebuilds: `rounds x N x output_dim x parties`
/// (the completed histories VerFedSV reads, 200 MB of f32).
pub const MAX_VERTICAL_HISTORY_VALUES: u64 = 50_000_000;
/// Most party steps (`rounds x snapshot_every`) an asynchronous run takes: step numbers
/// stay below 2^32, which keeps every party's batch stream distinct.
pub const MAX_ASYNC_STEPS: u64 = 1 << 32;

/// What the label holder optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerticalObjective {
    /// Softmax cross-entropy over `num_classes` outputs (`labels`).
    Classification,
    /// Squared error `0.5 (z - y)^2` on one output (`targets`).
    Regression,
}

impl VerticalObjective {
    /// Every objective with its spelling.
    pub const ALL: [(VerticalObjective, &'static str); 2] = [
        (VerticalObjective::Classification, "classification"),
        (VerticalObjective::Regression, "regression"),
    ];

    /// The spelling (`"classification"`, `"regression"`).
    pub fn as_str(self) -> &'static str {
        match self {
            VerticalObjective::Classification => "classification",
            VerticalObjective::Regression => "regression",
        }
    }
}

/// How the parties train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerticalTraining {
    /// Each round the server draws one mini-batch and every party embeds it.
    #[default]
    Sync,
    /// Each party steps at its own pace against the latest embeddings of the others; the
    /// table is snapshotted every `snapshot_every` steps (one snapshot = one round).
    Async,
}

impl VerticalTraining {
    /// Every mode with its spelling.
    pub const ALL: [(VerticalTraining, &'static str); 2] = [
        (VerticalTraining::Sync, "sync"),
        (VerticalTraining::Async, "async"),
    ];

    /// The spelling (`"sync"`, `"async"`).
    pub fn as_str(self) -> &'static str {
        match self {
            VerticalTraining::Sync => "sync",
            VerticalTraining::Async => "async",
        }
    }
}

fn default_batch_size() -> u32 {
    32
}
fn default_learning_rate() -> f32 {
    0.1
}
fn default_snapshot_every() -> u32 {
    10
}
fn default_completion_rank() -> u32 {
    3
}
fn default_completion_lambda() -> f64 {
    0.1
}

/// A vertical federation (the `vertical` field of a federation's configuration, the
/// wire's `VerticalConfig`); omitted fields take the defaults in parentheses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerticalSettings {
    /// `"classification"` or `"regression"`.
    pub objective: VerticalObjective,
    /// Classification: number of classes, 2 to [`MAX_VERTICAL_CLASSES`] (0 for regression).
    #[serde(default)]
    pub num_classes: u32,
    /// Classification: `labels[i]` is sample `i`'s class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<u32>,
    /// Regression: `targets[i]` is sample `i`'s finite target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<f32>,
    /// Held-out sample ids (distinct, `< N`): never in a batch, embedded once after the
    /// last round to report the test loss and accuracy. Empty: no evaluation pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_ids: Vec<u32>,
    /// `"sync"` (default) or `"async"`.
    #[serde(default)]
    pub training: VerticalTraining,
    /// Mini-batch size (32), capped at the number of training ids when drawn.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// SGD learning rate of the parties and of the server's bias (0.1).
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f32,
    /// L2 weight decay of the parties' weights (0).
    #[serde(default)]
    pub l2: f32,
    /// Party model: 0 = linear embedding, > 0 = MLP with this many hidden units (0).
    #[serde(default)]
    pub hidden: u32,
    /// Asynchronous training: party steps per snapshot (10); unused in sync training.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u32,
    /// VerFedSV's matrix completion: rank (3).
    #[serde(default = "default_completion_rank")]
    pub completion_rank: u32,
    /// VerFedSV's matrix completion: ridge weight (0.1).
    #[serde(default = "default_completion_lambda")]
    pub completion_lambda: f64,
}

impl VerticalSettings {
    /// Settings with every default and the given classification labels.
    pub fn classification(num_classes: u32, labels: Vec<u32>) -> Self {
        Self {
            objective: VerticalObjective::Classification,
            num_classes,
            labels,
            targets: Vec::new(),
            test_ids: Vec::new(),
            training: VerticalTraining::Sync,
            batch_size: default_batch_size(),
            learning_rate: default_learning_rate(),
            l2: 0.0,
            hidden: 0,
            snapshot_every: default_snapshot_every(),
            completion_rank: default_completion_rank(),
            completion_lambda: default_completion_lambda(),
        }
    }

    /// Number of samples `N` (ids `0..N`).
    pub fn num_samples(&self) -> usize {
        match self.objective {
            VerticalObjective::Classification => self.labels.len(),
            VerticalObjective::Regression => self.targets.len(),
        }
    }

    /// Width of every embedding: the number of classes, or 1 for regression.
    pub fn output_dim(&self) -> usize {
        match self.objective {
            VerticalObjective::Classification => self.num_classes as usize,
            VerticalObjective::Regression => 1,
        }
    }

    /// The ids batches are drawn from: `0..N` without `test_ids`, ascending.
    pub fn train_ids(&self) -> Vec<u32> {
        let mut held_out = vec![false; self.num_samples()];
        for &i in &self.test_ids {
            if let Some(h) = held_out.get_mut(i as usize) {
                *h = true;
            }
        }
        (0..self.num_samples())
            .filter(|&i| !held_out.get(i).copied().unwrap_or(false))
            .map(|i| i as u32)
            .collect()
    }

    /// The label holder's objective over all `N` samples.
    pub fn objective(&self) -> Result<Objective, ConfigError> {
        let built = match self.objective {
            VerticalObjective::Classification => {
                Objective::new_classification(self.labels.clone(), self.num_classes as usize)
            }
            VerticalObjective::Regression => Objective::new_regression(self.targets.clone()),
        };
        built.map_err(|e| ConfigError::new("vertical", e.to_string()))
    }

    /// The matrix completion of VerFedSV with this rank and ridge (other settings at
    /// their defaults), seeded with `seed`.
    pub fn completion(&self, seed: u64) -> CompletionSettings {
        CompletionSettings {
            rank: self.completion_rank as usize,
            lambda: self.completion_lambda,
            seed,
            ..CompletionSettings::default()
        }
    }

    /// Checks every field for a federation of `rounds` rounds and `parties` parties,
    /// naming the first offending one.
    pub fn validate(&self, rounds: u64, parties: usize) -> Result<(), ConfigError> {
        if parties == 0 || parties > MAX_VERTICAL_PARTIES {
            return Err(ConfigError::new(
                "min_clients",
                format!(
                    "is the number of parties of a vertical federation: must be between 1 and \
                     {MAX_VERTICAL_PARTIES}, got {parties}"
                ),
            ));
        }
        self.validate_objective()?;
        let n = self.num_samples();
        self.validate_test_ids(n)?;
        if self.batch_size == 0 || self.batch_size > MAX_VERTICAL_BATCH {
            return Err(ConfigError::new(
                "vertical.batch_size",
                format!(
                    "must be between 1 and {MAX_VERTICAL_BATCH}, got {}",
                    self.batch_size
                ),
            ));
        }
        let c = self.output_dim();
        if (self.batch_size as usize).saturating_mul(c) > MAX_EMBEDDING_VALUES {
            return Err(ConfigError::new(
                "vertical.batch_size",
                format!(
                    "{} rows x {c} outputs exceed the {MAX_EMBEDDING_VALUES} values one exchange may carry",
                    self.batch_size
                ),
            ));
        }
        if self.test_ids.len().saturating_mul(c) > MAX_EMBEDDING_VALUES {
            return Err(ConfigError::new(
                "vertical.test_ids",
                format!(
                    "{} ids x {c} outputs exceed the {MAX_EMBEDDING_VALUES} values one exchange may carry",
                    self.test_ids.len()
                ),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(ConfigError::new(
                "vertical.learning_rate",
                format!("must be a finite number > 0, got {}", self.learning_rate),
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(ConfigError::new(
                "vertical.l2",
                format!("must be a finite number >= 0, got {}", self.l2),
            ));
        }
        if self.hidden > MAX_VERTICAL_HIDDEN {
            return Err(ConfigError::new(
                "vertical.hidden",
                format!(
                    "must be between 0 (linear) and {MAX_VERTICAL_HIDDEN}, got {}",
                    self.hidden
                ),
            ));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::new(
                "vertical.snapshot_every",
                "must be at least 1",
            ));
        }
        if self.training == VerticalTraining::Async
            && rounds.saturating_mul(u64::from(self.snapshot_every)) > MAX_ASYNC_STEPS
        {
            return Err(ConfigError::new(
                "vertical.snapshot_every",
                format!(
                    "rounds x snapshot_every = {rounds} x {} exceeds the {MAX_ASYNC_STEPS} party steps an asynchronous run may take",
                    self.snapshot_every
                ),
            ));
        }
        if self.completion_rank == 0 || self.completion_rank > MAX_COMPLETION_RANK {
            return Err(ConfigError::new(
                "vertical.completion_rank",
                format!(
                    "must be between 1 and {MAX_COMPLETION_RANK}, got {}",
                    self.completion_rank
                ),
            ));
        }
        if !(self.completion_lambda.is_finite() && self.completion_lambda > 0.0) {
            return Err(ConfigError::new(
                "vertical.completion_lambda",
                format!(
                    "must be a finite number > 0, got {}",
                    self.completion_lambda
                ),
            ));
        }
        let history = rounds
            .saturating_mul(n as u64)
            .saturating_mul(c as u64)
            .saturating_mul(parties as u64);
        if history > MAX_VERTICAL_HISTORY_VALUES {
            return Err(ConfigError::new(
                "rounds",
                format!(
                    "{rounds} rounds x {n} samples x {c} outputs x {parties} parties = {history} \
                     embedding values for the valuation, at most {MAX_VERTICAL_HISTORY_VALUES} \
                     are accepted; use fewer rounds or samples"
                ),
            ));
        }
        Ok(())
    }

    fn validate_objective(&self) -> Result<(), ConfigError> {
        let n = self.num_samples();
        let (field, other, other_len) = match self.objective {
            VerticalObjective::Classification => {
                ("vertical.labels", "vertical.targets", self.targets.len())
            }
            VerticalObjective::Regression => {
                ("vertical.targets", "vertical.labels", self.labels.len())
            }
        };
        if other_len > 0 {
            return Err(ConfigError::new(
                other,
                format!(
                    "must be empty for objective \"{}\"; give `{field}`",
                    self.objective.as_str()
                ),
            ));
        }
        if n == 0 || n > MAX_VERTICAL_SAMPLES {
            return Err(ConfigError::new(
                field,
                format!(
                    "holds one entry per sample id: must hold 1 to {MAX_VERTICAL_SAMPLES}, got {n}"
                ),
            ));
        }
        match self.objective {
            VerticalObjective::Classification => {
                if self.num_classes < 2 || self.num_classes > MAX_VERTICAL_CLASSES {
                    return Err(ConfigError::new(
                        "vertical.num_classes",
                        format!(
                            "must be between 2 and {MAX_VERTICAL_CLASSES}, got {}",
                            self.num_classes
                        ),
                    ));
                }
                if let Some((i, l)) = self
                    .labels
                    .iter()
                    .enumerate()
                    .find(|(_, l)| **l >= self.num_classes)
                {
                    return Err(ConfigError::new(
                        format!("vertical.labels[{i}]"),
                        format!(
                            "is {l} but there are {} classes (labels 0..{})",
                            self.num_classes, self.num_classes
                        ),
                    ));
                }
            }
            VerticalObjective::Regression => {
                if self.num_classes != 0 {
                    return Err(ConfigError::new(
                        "vertical.num_classes",
                        format!(
                            "is for classification only; leave it 0 for regression, got {}",
                            self.num_classes
                        ),
                    ));
                }
                if let Some((i, t)) = self
                    .targets
                    .iter()
                    .enumerate()
                    .find(|(_, t)| !t.is_finite())
                {
                    return Err(ConfigError::new(
                        format!("vertical.targets[{i}]"),
                        format!("is {t}; regression targets must be finite"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_test_ids(&self, n: usize) -> Result<(), ConfigError> {
        let mut seen = vec![false; n];
        for (k, &id) in self.test_ids.iter().enumerate() {
            match seen.get_mut(id as usize) {
                None => {
                    return Err(ConfigError::new(
                        format!("vertical.test_ids[{k}]"),
                        format!("is {id} but the sample ids are 0..{n}"),
                    ));
                }
                Some(true) => {
                    return Err(ConfigError::new(
                        format!("vertical.test_ids[{k}]"),
                        format!("repeats sample id {id}; test ids must be distinct"),
                    ));
                }
                Some(s) => *s = true,
            }
        }
        if self.test_ids.len() >= n {
            return Err(ConfigError::new(
                "vertical.test_ids",
                format!("holds all {n} sample ids; at least one must be left for training"),
            ));
        }
        Ok(())
    }
}
