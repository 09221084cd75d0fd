//! Federation configuration and server settings.
//!
//! A federation's configuration is one serde struct, [`FederationConfig`], readable from
//! TOML or JSON, sent over gRPC (see `convert`), stored with the federation and checked by
//! [`FederationConfig::validate`], whose [`ConfigError`] names the offending field the way
//! an operator writes it (`training.learning_rate`, `validation.labels[3]`). The server
//! binary reads a [`ServerFileConfig`] (listen address, data directory, admin token, store
//! backend and federations to create at start-up) with [`load_server_file`].

use std::path::{Path, PathBuf};

use fedval_core::aggregate::AggregatorSpec;
use fedval_core::data::Dataset;
use fedval_core::model::ModelSpec;
use fedval_core::reputation::{FairRewardConfig, RfflConfig};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use crate::bandit::settings::{BanditMechanism, BanditSettings, MAX_BANDIT_CLIENTS};
pub use crate::fact::FactSettings;
pub use crate::vertical::settings::{
    MAX_VERTICAL_CLASSES, MAX_VERTICAL_PARTIES, MAX_VERTICAL_SAMPLES, VerticalObjective,
    VerticalSettings, VerticalTraining,
};

/// Longest federation id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest enrollment secret, in bytes.
pub const MAX_SECRET_LEN: usize = 256;
/// Most rounds a federation may run.
pub const MAX_ROUNDS: u64 = 100_000;
/// Most threads a federation's valuation may use.
pub const MAX_VALUATION_THREADS: usize = 256;
/// Shortest round timeout, in milliseconds.
pub const MIN_ROUND_TIMEOUT_MS: u64 = 100;
/// Longest round timeout (one day), in milliseconds.
pub const MAX_ROUND_TIMEOUT_MS: u64 = 86_400_000;
/// Most local epochs a round may ask for.
pub const MAX_LOCAL_EPOCHS: u32 = 1000;
/// Most players for which exact Shapley values may be computed (2^20 coalitions).
pub const MAX_EXACT_PLAYERS: usize = 20;
/// Most feature values a validation set may hold (4 MB of f32).
pub const MAX_VALIDATION_VALUES: usize = 1_000_000;
/// Default round timeout, in milliseconds.
pub const DEFAULT_ROUND_TIMEOUT_MS: u64 = 30_000;
/// Most clients a fair-reward federation takes: estimating contributions costs about
/// `n^3 / 2` gradient additions per round and the stationarity test inverts an `n x n`
/// covariance, so the policy is meant for cross-silo federations.
pub const MAX_FAIR_REWARD_CLIENTS: usize = 100;

/// An invalid configuration value: the field (dotted path, with indices) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid federation config: field `{field}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `training.learning_rate` or `validation.labels[3]`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Everything that defines one federation; stored with it and immutable once created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Unique id chosen by the operator: `[A-Za-z0-9_-]`, 1 to 64 characters.
    pub id: String,
    /// Secret a client must present to enroll (non-empty, at most 256 bytes).
    pub enrollment_secret: String,
    /// The model architecture every client trains (horizontal federations: required;
    /// vertical federations: unset, the parties build their embedding models from
    /// `vertical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Number of rounds to run (1 to 100 000; bandit federations: unused, 0).
    #[serde(default)]
    pub rounds: u64,
    /// Clients that must be enrolled before the first round starts (at least 1).
    pub min_clients: usize,
    /// Clients selected per round; 0 selects every enrolled client.
    #[serde(default)]
    pub clients_per_round: usize,
    /// How long a round stays open for uploads, in milliseconds (100 to 86 400 000).
    #[serde(default = "default_round_timeout_ms")]
    pub round_timeout_ms: u64,
    /// Local training hyper-parameters sent to the clients.
    #[serde(default)]
    pub training: TrainingParams,
    /// How contributions are valued each round.
    #[serde(default)]
    pub valuation: ValuationConfig,
    /// How each round's updates are combined (`kind = "fedavg"` by default; `"median"`,
    /// `"trimmed_mean"`, `"krum"`, `"multi_krum"`, `"norm_clip"`). A round with too few
    /// updates for it is aggregated with FedAvg instead (see `round_close`).
    #[serde(default)]
    pub aggregator: AggregatorSpec,
    /// The server's validation set; required unless `valuation.method = "none"`.
    #[serde(default)]
    pub validation: Option<ValidationData>,
    /// Seed of the initial model and of client selection.
    #[serde(default)]
    pub seed: u64,
    /// RFFL reputations (`reputation = { gamma = 0.5 }`); `None` (the default) is off.
    /// When set, RFFL's reputation-weighted aggregation REPLACES `aggregator` (which is
    /// then ignored), every client trains from and downloads its own model, low-reputation
    /// clients are removed after the warm-up, and no client may enroll once the first
    /// round has opened (the reputation state is sized by the clients of round 1).
    #[serde(default)]
    pub reputation: Option<RfflSettings>,
    /// Fair yet asymptotically equal rewards (`fair_reward = { beta = 150.0, ratio = 0.4 }`,
    /// ALGORITHMS.md section 5); `None` (the default) is off, and it cannot be combined
    /// with `reputation`. When set, every client trains from and downloads its own model;
    /// the round aggregates with `aggregator` into the global model as usual, and the
    /// policy decides who receives that newest global model: every participant while
    /// contributions are being estimated (exploration), then `floor(ratio x participants)`
    /// participants drawn by `softmax(beta psi)` (exploitation); the others keep their
    /// model. No client may enroll once the first round has opened (the policy's state is
    /// sized by the clients of round 1), and at most [`MAX_FAIR_REWARD_CLIENTS`] may
    /// enroll. See `fair_reward` (the server module) for the exact semantics.
    #[serde(default)]
    pub fair_reward: Option<FairRewardSettings>,
    /// Vertical federated learning (`vertical = { objective = "classification", ... }`,
    /// ALGORITHMS.md section 3); `None` (the default) is a horizontal federation. When set,
    /// `model`, `validation`, `reputation` and `fair_reward` must be unset,
    /// `clients_per_round` must be 0, `min_clients` is the number of parties and `rounds`
    /// the number of synchronous rounds; see [`VerticalSettings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<VerticalSettings>,
    /// FACT penalties and prizes against free riding (`fact = { offset = 1.0 }`,
    /// ALGORITHMS.md section 6); `None` (the default) is off. Horizontal federations only:
    /// every client must report its cost per data point when it enrolls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact: Option<FactSettings>,
    /// A federated linear bandit with Truth-FedBan incentives (`bandit = { dim = 5,
    /// horizon = 2000 }`, ALGORITHMS.md section 7); `None` (the default) is not one. When
    /// set, `model`, `validation`, `reputation`, `fair_reward`, `vertical` and `fact` must be
    /// unset, `rounds` and `clients_per_round` 0, and `min_clients` is the number of clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<BanditSettings>,
}

/// Settings of the fair yet asymptotically equal reward policy (Lin et al. 2023,
/// ALGORITHMS.md section 5); omitted fields take the paper's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairRewardSettings {
    /// Softmax inverse temperature `beta` of the selection probabilities, finite and
    /// >= 0 (150).
    #[serde(default = "default_fair_beta")]
    pub beta: f64,
    /// Fraction of the round's participants that receive the newest global model during
    /// exploitation, in `[0, 1]` (0.4).
    #[serde(default = "default_fair_ratio")]
    pub ratio: f64,
    /// Exploration stops once the stationarity test's p-value exceeds this, in `(0, 1)`
    /// (0.9).
    #[serde(default = "default_fair_significance")]
    pub significance: f64,
    /// Rounds the stationarity test looks at; must exceed the number of clients (checked
    /// against `min_clients` here and against every enrollment). Unset: `2 n + 1` for
    /// the `n` clients of round 1.
    #[serde(default)]
    pub window: Option<usize>,
    /// Seed of the per-round coalition sampling and recipient draws; unset: the
    /// federation's `seed`.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_fair_beta() -> f64 {
    FairRewardConfig::for_clients(1).beta
}

fn default_fair_ratio() -> f64 {
    FairRewardConfig::for_clients(1).ratio
}

fn default_fair_significance() -> f64 {
    FairRewardConfig::for_clients(1).significance
}

impl Default for FairRewardSettings {
    /// The paper's defaults, window `2 n + 1`, the federation's seed.
    fn default() -> Self {
        Self {
            beta: default_fair_beta(),
            ratio: default_fair_ratio(),
            significance: default_fair_significance(),
            window: None,
            seed: None,
        }
    }
}

impl FairRewardSettings {
    /// The core algorithm's configuration for a federation of `n` clients.
    pub fn to_core(self, n: usize) -> FairRewardConfig {
        FairRewardConfig {
            beta: self.beta,
            ratio: self.ratio,
            window: self
                .window
                .unwrap_or_else(|| FairRewardConfig::for_clients(n).window),
            significance: self.significance,
        }
    }

    /// Checks the ranges for a federation that needs `min_clients` clients, naming the
    /// field as `fair_reward.beta` etc.
    pub fn validate(&self, min_clients: usize) -> Result<(), ConfigError> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(ConfigError::new(
                "fair_reward.beta",
                format!("must be a finite number >= 0, got {}", self.beta),
            ));
        }
        if !(self.ratio.is_finite() && (0.0..=1.0).contains(&self.ratio)) {
            return Err(ConfigError::new(
                "fair_reward.ratio",
                format!("must be in [0, 1], got {}", self.ratio),
            ));
        }
        if !(self.significance > 0.0 && self.significance < 1.0) {
            return Err(ConfigError::new(
                "fair_reward.significance",
                format!("must be in (0, 1), got {}", self.significance),
            ));
        }
        if let Some(window) = self.window {
            if window <= min_clients {
                return Err(ConfigError::new(
                    "fair_reward.window",
                    format!(
                        "must exceed the number of clients (the stationarity test needs more \
                         rounds than clients), but min_clients is {min_clients} and window is {window}"
                    ),
                ));
            }
            check_range("fair_reward.window", window, 0, MAX_ROUNDS as usize)?;
        }
        if min_clients > MAX_FAIR_REWARD_CLIENTS {
            return Err(ConfigError::new(
                "min_clients",
                format!(
                    "is {min_clients}, but a fair_reward federation takes at most \
                     {MAX_FAIR_REWARD_CLIENTS} clients"
                ),
            ));
        }
        Ok(())
    }
}

/// RFFL settings of a federation (ALGORITHMS.md section 4); omitted fields take the
/// paper's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RfflSettings {
    /// Clipping norm `Gamma` the server applies to every update (finite, > 0).
    pub gamma: f32,
    /// Moving-average weight of the old reputation, in `[0, 1)` (0.95).
    #[serde(default = "default_rffl_alpha")]
    pub alpha: f64,
    /// Removal threshold coefficient `c` in `beta = c / |R|`, in `[0, 1)` (1/3).
    #[serde(default = "default_rffl_threshold_coefficient")]
    pub threshold_coefficient: f64,
    /// Rounds before removals start (10).
    #[serde(default = "default_rffl_warm_up_rounds")]
    pub warm_up_rounds: u64,
    /// What a client's own model is built on each round (true, ALGORITHMS.md 4): its model
    /// after local training, i.e. it keeps its own clipped update, plus the sparsified
    /// reward. False follows the reference code instead: the model reverts to its state
    /// before local training and receives only the reward, so clients with full rewards
    /// end near the shared aggregate instead of drifting towards their local optimum.
    #[serde(default = "default_true")]
    pub keep_own_update: bool,
}

fn default_true() -> bool {
    true
}

fn default_rffl_alpha() -> f64 {
    RfflConfig::with_gamma(1.0).alpha
}

fn default_rffl_threshold_coefficient() -> f64 {
    RfflConfig::with_gamma(1.0).threshold_coefficient
}

fn default_rffl_warm_up_rounds() -> u64 {
    RfflConfig::with_gamma(1.0).warm_up_rounds
}

impl RfflSettings {
    /// The paper's defaults with clipping norm `gamma`.
    pub fn with_gamma(gamma: f32) -> Self {
        let c = RfflConfig::with_gamma(gamma);
        RfflSettings {
            gamma,
            alpha: c.alpha,
            threshold_coefficient: c.threshold_coefficient,
            warm_up_rounds: c.warm_up_rounds,
            keep_own_update: true,
        }
    }

    /// The core algorithm's configuration.
    pub fn to_core(self) -> RfflConfig {
        RfflConfig {
            alpha: self.alpha,
            threshold_coefficient: self.threshold_coefficient,
            warm_up_rounds: self.warm_up_rounds,
            gamma: self.gamma,
        }
    }

    /// Checks the ranges, naming the field as `reputation.gamma` etc.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(ConfigError::new(
                "reputation.gamma",
                format!("must be a finite number > 0, got {}", self.gamma),
            ));
        }
        for (field, value) in [
            ("reputation.alpha", self.alpha),
            (
                "reputation.threshold_coefficient",
                self.threshold_coefficient,
            ),
        ] {
            if !(value.is_finite() && (0.0..1.0).contains(&value)) {
                return Err(ConfigError::new(
                    field,
                    format!("must be in [0, 1), got {value}"),
                ));
            }
        }
        check_range(
            "reputation.warm_up_rounds",
            self.warm_up_rounds,
            0,
            MAX_ROUNDS,
        )
    }
}

fn default_round_timeout_ms() -> u64 {
    DEFAULT_ROUND_TIMEOUT_MS
}

/// Local training hyper-parameters the server asks clients to use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingParams {
    /// Passes over the local data per round (1 to 1000).
    pub local_epochs: u32,
    /// Mini-batch size (at least 1).
    pub batch_size: u32,
    /// SGD step size (finite, > 0).
    pub learning_rate: f32,
    /// Seed the clients mix into their own RNG.
    pub seed: u64,
}

impl Default for TrainingParams {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            seed: 0,
        }
    }
}

/// How each round's contributions are valued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValuationConfig {
    /// Which estimator to use.
    pub method: ValuationMethod,
    /// Largest round valued exactly when `method = "auto"` (1 to 20 players).
    pub exact_max_players: usize,
    /// Utility evaluations the permutation estimator may spend per round (>= 2).
    pub budget: u64,
    /// Seed of the Monte Carlo estimator.
    pub seed: u64,
    /// Utility of a coalition model on the validation set.
    pub metric: UtilityMetric,
    /// TMC-Shapley truncation: a permutation stops once |v(prefix) - v(N)| <= tolerance
    /// |v(N)| (0 disables truncation).
    pub tolerance: f64,
    /// GTG-Shapley between-round truncation: a round with |v(N) - v(empty)| <= this is
    /// valued all zero without sampling.
    pub round_tolerance: f64,
    /// GTG-Shapley within-round truncation: once |v(N) - v(prefix)| < this, the rest of a
    /// permutation's marginals are zero.
    pub within_tolerance: f64,
    /// Beta(alpha, beta)-Shapley's first shape parameter.
    pub beta_alpha: f64,
    /// Beta(alpha, beta)-Shapley's second shape parameter.
    pub beta_beta: f64,
    /// Threads that evaluate utilities in parallel (0: every core).
    pub threads: usize,
    /// How many committed rounds may wait for their valuation while training goes on;
    /// the round loop holds the next round back beyond that (0: value every round before
    /// the next one opens).
    pub max_lag_rounds: u64,
}

impl Default for ValuationConfig {
    fn default() -> Self {
        Self {
            method: ValuationMethod::Auto,
            exact_max_players: 12,
            budget: 2000,
            seed: 0,
            metric: UtilityMetric::Accuracy,
            tolerance: 0.01,
            round_tolerance: 0.001,
            within_tolerance: 0.001,
            beta_alpha: 16.0,
            beta_beta: 1.0,
            threads: 0,
            max_lag_rounds: 1,
        }
    }
}

/// The Shapley estimator of a federation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValuationMethod {
    /// Exact up to `exact_max_players`, permutation sampling beyond.
    #[default]
    Auto,
    /// Exact Shapley values (Gray-code enumeration of every coalition).
    Exact,
    /// Monte Carlo permutation sampling within `budget` evaluations.
    Permutation,
    /// Permutation sampling walking each permutation and its reverse.
    PermutationAntithetic,
    /// Truncated Monte Carlo Shapley (`tolerance`).
    Tmc,
    /// GTG-Shapley (`round_tolerance`, `within_tolerance`).
    Gtg,
    /// SVARM.
    Svarm,
    /// Stratified SVARM.
    StratifiedSvarm,
    /// Stratified SVARM+ (without replacement; exact once `budget` covers 2^n).
    StratifiedSvarmPlus,
    /// Leave-one-out values (n + 1 evaluations; not Shapley values).
    LeaveOneOut,
    /// Banzhaf values by maximum sample reuse (not Shapley values).
    Banzhaf,
    /// Beta(`beta_alpha`, `beta_beta`)-Shapley values.
    BetaShapley,
    /// No valuation (no validation set needed).
    None,
}

impl ValuationMethod {
    /// Every method with its configuration spelling, for parsing and error messages.
    pub const ALL: [(ValuationMethod, &'static str); 13] = [
        (ValuationMethod::Auto, "auto"),
        (ValuationMethod::Exact, "exact"),
        (ValuationMethod::Permutation, "permutation"),
        (
            ValuationMethod::PermutationAntithetic,
            "permutation_antithetic",
        ),
        (ValuationMethod::Tmc, "tmc"),
        (ValuationMethod::Gtg, "gtg"),
        (ValuationMethod::Svarm, "svarm"),
        (ValuationMethod::StratifiedSvarm, "stratified_svarm"),
        (
            ValuationMethod::StratifiedSvarmPlus,
            "stratified_svarm_plus",
        ),
        (ValuationMethod::LeaveOneOut, "leave_one_out"),
        (ValuationMethod::Banzhaf, "banzhaf"),
        (ValuationMethod::BetaShapley, "beta_shapley"),
        (ValuationMethod::None, "none"),
    ];

    /// The configuration spelling (`"auto"`, `"exact"`, `"stratified_svarm"`, ...).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("none", |(_, name)| *name)
    }

    /// Whether the method samples (and so needs a budget of at least 2 evaluations).
    pub fn samples(self) -> bool {
        !matches!(
            self,
            ValuationMethod::Exact | ValuationMethod::LeaveOneOut | ValuationMethod::None
        )
    }
}

/// The utility that scores a coalition model on the validation set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UtilityMetric {
    /// Fraction of validation rows classified correctly.
    #[default]
    Accuracy,
    /// Negative mean cross-entropy (higher is better).
    NegLogLoss,
}

impl UtilityMetric {
    /// Every metric with its configuration spelling, for parsing and error messages.
    pub const ALL: [(UtilityMetric, &'static str); 2] = [
        (UtilityMetric::Accuracy, "accuracy"),
        (UtilityMetric::NegLogLoss, "neg_log_loss"),
    ];

    /// The configuration spelling (`"accuracy"`, `"neg_log_loss"`).
    pub fn as_str(self) -> &'static str {
        match self {
            UtilityMetric::Accuracy => "accuracy",
            UtilityMetric::NegLogLoss => "neg_log_loss",
        }
    }
}

/// The server's labelled validation set, carried inline (row-major features).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationData {
    /// Features per row; must equal the model's.
    pub num_features: usize,
    /// Row-major features, `labels.len() * num_features` finite values.
    pub features: Vec<f32>,
    /// Class label of each row, each below the model's class count.
    pub labels: Vec<u32>,
}

impl ValidationData {
    /// Builds the core data set (checked again by `Dataset::new`).
    pub fn to_dataset(&self, num_classes: usize) -> Result<Dataset, ConfigError> {
        let rows = self.labels.len();
        let features = Array2::from_shape_vec((rows, self.num_features), self.features.clone())
            .map_err(|_| {
                ConfigError::new(
                    "validation.features",
                    format!(
                        "expected {} rows x {} features, got {} values",
                        rows,
                        self.num_features,
                        self.features.len()
                    ),
                )
            })?;
        Dataset::new(features, self.labels.clone(), num_classes)
            .map_err(|e| ConfigError::new("validation", e.to_string()))
    }

    /// Copies a core data set (e.g. one loaded from CSV) into the inline form.
    pub fn from_dataset(data: &Dataset) -> Self {
        Self {
            num_features: data.features.ncols(),
            features: data.features.iter().copied().collect(),
            labels: data.labels.clone(),
        }
    }
}

/// Fails with a [`ConfigError`] on `field` unless `lo <= value <= hi`.
fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::new(
            field,
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(())
}

impl FederationConfig {
    /// Whether every client trains from and downloads its own model rather than the
    /// global one: true under a reward policy (`reputation` or `fair_reward`).
    pub fn personal_models(&self) -> bool {
        self.reputation.is_some() || self.fair_reward.is_some()
    }

    /// The reward policy's name for messages (`"RFFL reputations"`, `"fair yet
    /// asymptotically equal rewards"`); `None` without one.
    pub fn reward_policy(&self) -> Option<&'static str> {
        if self.reputation.is_some() {
            Some("RFFL reputations")
        } else if self.fair_reward.is_some() {
            Some("fair yet asymptotically equal rewards")
        } else {
            None
        }
    }

    /// The model of a horizontal federation; an error naming `model` when it is unset
    /// (a vertical federation, or a configuration that was not validated).
    pub fn horizontal_model(&self) -> Result<&ModelSpec, ConfigError> {
        self.model.as_ref().ok_or_else(|| {
            ConfigError::new(
                "model",
                "unset: only horizontal federations train a shared model",
            )
        })
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id(&self.id)?;
        if self.enrollment_secret.is_empty() {
            return Err(ConfigError::new(
                "enrollment_secret",
                "must not be empty: clients present it to enroll",
            ));
        }
        if self.enrollment_secret.len() > MAX_SECRET_LEN {
            return Err(ConfigError::new(
                "enrollment_secret",
                format!(
                    "is {} bytes long, at most {MAX_SECRET_LEN} are accepted",
                    self.enrollment_secret.len()
                ),
            ));
        }
        if let Some(b) = &self.bandit {
            return self.validate_bandit(b);
        }
        check_range("rounds", self.rounds, 1, MAX_ROUNDS)?;
        // Both counts travel as uint32 on the wire.
        let wire_max = u32::MAX as usize;
        check_range("min_clients", self.min_clients, 1, wire_max)?;
        check_range("clients_per_round", self.clients_per_round, 0, wire_max)?;
        check_range(
            "round_timeout_ms",
            self.round_timeout_ms,
            MIN_ROUND_TIMEOUT_MS,
            MAX_ROUND_TIMEOUT_MS,
        )?;
        self.validate_valuation()?;
        if let Some(v) = &self.vertical {
            if self.fact.is_some() {
                return Err(ConfigError::new(
                    "fact",
                    "must be unset in a vertical federation: FACT prices the data points \
                     of horizontal clients",
                ));
            }
            return self.validate_vertical(v);
        }
        if let Some(f) = &self.fact {
            f.validate()?;
        }
        let model = self.model.as_ref().ok_or_else(|| {
            ConfigError::new(
                "model",
                "missing: a horizontal federation needs `model = { kind = ... }` \
                 (or set `vertical` for a vertical federation)",
            )
        })?;
        model
            .validate()
            .map_err(|e| ConfigError::new("model", e.to_string()))?;
        self.validate_training()?;
        self.validate_aggregator()?;
        if let Some(r) = &self.reputation {
            r.validate()?;
        }
        if let Some(f) = &self.fair_reward {
            if self.reputation.is_some() {
                return Err(ConfigError::new(
                    "fair_reward",
                    "cannot be combined with `reputation`: both are reward policies that \
                     decide which model each client gets; set `reputation` (RFFL) or \
                     `fair_reward`, not both",
                ));
            }
            f.validate(self.min_clients)?;
        }
        match &self.validation {
            Some(v) => validate_validation(v, model),
            None if self.valuation.method != ValuationMethod::None => Err(ConfigError::new(
                "validation",
                "a validation set is required to value contributions; \
                 set valuation.method = \"none\" to run without",
            )),
            None => Ok(()),
        }
    }

    /// The rules of a vertical federation: the horizontal-only fields are unset, every
    /// party takes part in every round, and the [`VerticalSettings`] are valid for
    /// `rounds` rounds and `min_clients` parties.
    fn validate_vertical(&self, v: &VerticalSettings) -> Result<(), ConfigError> {
        let unused = |field: &str, what: &str| {
            ConfigError::new(
                field,
                format!("must be unset in a vertical federation ({what}); remove it"),
            )
        };
        if self.model.is_some() {
            return Err(unused(
                "model",
                "the parties build their embedding models from `vertical`",
            ));
        }
        if self.validation.is_some() {
            return Err(unused(
                "validation",
                "the server holds the labels in `vertical.labels`/`vertical.targets` and \
                 evaluates on `vertical.test_ids`",
            ));
        }
        if self.reputation.is_some() {
            return Err(unused(
                "reputation",
                "RFFL reputations apply to horizontal federations only",
            ));
        }
        if self.fair_reward.is_some() {
            return Err(unused(
                "fair_reward",
                "the fair reward policy applies to horizontal federations only",
            ));
        }
        if self.clients_per_round != 0 {
            return Err(ConfigError::new(
                "clients_per_round",
                format!(
                    "must be 0 in a vertical federation (every party embeds every batch), got {}",
                    self.clients_per_round
                ),
            ));
        }
        v.validate(self.rounds, self.min_clients)
    }

    /// The rules of a bandit federation: every learning-only field is unset, `rounds` and
    /// `clients_per_round` are 0 (the run lasts `bandit.horizon` steps and every client
    /// reports in every communication round), and the [`BanditSettings`] are valid.
    fn validate_bandit(&self, b: &BanditSettings) -> Result<(), ConfigError> {
        let set = [
            ("model", self.model.is_some()),
            ("validation", self.validation.is_some()),
            ("reputation", self.reputation.is_some()),
            ("fair_reward", self.fair_reward.is_some()),
            ("vertical", self.vertical.is_some()),
            ("fact", self.fact.is_some()),
            ("aggregator", self.aggregator != AggregatorSpec::default()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, is_set)| *is_set) {
            return Err(ConfigError::new(
                *field,
                "must be unset in a bandit federation (clients learn a linear bandit from \
                 their own contexts; there is no shared model); remove it",
            ));
        }
        for (field, value) in [
            ("rounds", self.rounds),
            ("clients_per_round", self.clients_per_round as u64),
        ] {
            if value != 0 {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "must be 0 in a bandit federation (the run lasts `bandit.horizon` \
                         steps and every client reports in every round), got {value}"
                    ),
                ));
            }
        }
        check_range("min_clients", self.min_clients, 1, MAX_BANDIT_CLIENTS)?;
        check_range(
            "round_timeout_ms",
            self.round_timeout_ms,
            MIN_ROUND_TIMEOUT_MS,
            MAX_ROUND_TIMEOUT_MS,
        )?;
        b.validate()?;
        b.check_round_cost(self.min_clients)
    }

    fn validate_training(&self) -> Result<(), ConfigError> {
        let t = &self.training;
        check_range("training.local_epochs", t.local_epochs, 1, MAX_LOCAL_EPOCHS)?;
        check_range("training.batch_size", t.batch_size, 1, u32::MAX)?;
        if !t.learning_rate.is_finite() || t.learning_rate <= 0.0 {
            return Err(ConfigError::new(
                "training.learning_rate",
                format!("must be a finite number > 0, got {}", t.learning_rate),
            ));
        }
        Ok(())
    }

    /// Checks the aggregator's parameters: counts fit the wire's `uint32`, Multi-Krum
    /// selects at least one update, the clipping norm is finite and > 0, and a fixed round
    /// size (`clients_per_round > 0`) is enough for the aggregator. The field named is the
    /// parameter that sets the requirement (`aggregator.trim`, `aggregator.byzantine`, ...).
    fn validate_aggregator(&self) -> Result<(), ConfigError> {
        let spec = self.aggregator;
        let (field, count) = match spec {
            AggregatorSpec::FedAvg | AggregatorSpec::Median => return Ok(()),
            AggregatorSpec::NormClip { max_norm } => {
                if !(max_norm.is_finite() && max_norm > 0.0) {
                    return Err(ConfigError::new(
                        "aggregator.max_norm",
                        format!("must be a finite number > 0, got {max_norm}"),
                    ));
                }
                return Ok(());
            }
            AggregatorSpec::TrimmedMean { trim } => ("aggregator.trim", trim),
            AggregatorSpec::Krum { byzantine } => ("aggregator.byzantine", byzantine),
            AggregatorSpec::MultiKrum {
                byzantine,
                selected,
            } => {
                check_range("aggregator.byzantine", byzantine, 0, u32::MAX as usize)?;
                check_range("aggregator.selected", selected, 1, u32::MAX as usize)?;
                // The count that raises the requirement above Krum's own.
                let field = if selected.saturating_add(byzantine) > 2 * byzantine + 3 {
                    "aggregator.selected"
                } else {
                    "aggregator.byzantine"
                };
                (field, byzantine)
            }
        };
        check_range(field, count, 0, u32::MAX as usize)?;
        let needed = spec.min_updates();
        if self.clients_per_round > 0 && self.clients_per_round < needed {
            return Err(ConfigError::new(
                field,
                format!(
                    "{spec} needs at least {needed} updates per round, but clients_per_round is {}",
                    self.clients_per_round
                ),
            ));
        }
        Ok(())
    }

    fn validate_valuation(&self) -> Result<(), ConfigError> {
        let v = &self.valuation;
        check_range(
            "valuation.exact_max_players",
            v.exact_max_players,
            1,
            MAX_EXACT_PLAYERS,
        )?;
        if v.method.samples() && v.budget < 2 {
            return Err(ConfigError::new(
                "valuation.budget",
                format!(
                    "must be at least 2 utility evaluations for method \"{}\", got {}",
                    v.method.as_str(),
                    v.budget
                ),
            ));
        }
        for (field, value) in [
            ("valuation.tolerance", v.tolerance),
            ("valuation.round_tolerance", v.round_tolerance),
            ("valuation.within_tolerance", v.within_tolerance),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ConfigError::new(
                    field,
                    format!("must be a finite number >= 0, got {value}"),
                ));
            }
        }
        for (field, value) in [
            ("valuation.beta_alpha", v.beta_alpha),
            ("valuation.beta_beta", v.beta_beta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::new(
                    field,
                    format!("must be a finite number > 0, got {value}"),
                ));
            }
        }
        check_range("valuation.threads", v.threads, 0, MAX_VALUATION_THREADS)?;
        check_range("valuation.max_lag_rounds", v.max_lag_rounds, 0, MAX_ROUNDS)?;
        Ok(())
    }
}

/// Checks a federation id: `[A-Za-z0-9_-]`, 1 to 64 characters.
pub fn validate_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ConfigError::new(
            "id",
            format!(
                "must be 1 to {MAX_ID_LEN} characters long, got {} ({id:?})",
                id.len()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ConfigError::new(
            "id",
            format!("{id:?} contains {c:?}; only letters, digits, '_' and '-' are accepted"),
        ));
    }
    Ok(())
}

fn validate_validation(v: &ValidationData, model: &ModelSpec) -> Result<(), ConfigError> {
    let (num_features, num_classes) = (model.num_features(), model.num_classes());
    if v.num_features != num_features {
        return Err(ConfigError::new(
            "validation.num_features",
            format!(
                "is {} but the model takes {num_features} features",
                v.num_features
            ),
        ));
    }
    if v.labels.is_empty() {
        return Err(ConfigError::new(
            "validation.labels",
            "the validation set has no rows; at least one is needed",
        ));
    }
    let expected = v.labels.len().checked_mul(v.num_features);
    if expected != Some(v.features.len()) {
        return Err(ConfigError::new(
            "validation.features",
            format!(
                "holds {} values but {} rows x {} features need {}",
                v.features.len(),
                v.labels.len(),
                v.num_features,
                v.labels.len().saturating_mul(v.num_features)
            ),
        ));
    }
    if v.features.len() > MAX_VALIDATION_VALUES {
        return Err(ConfigError::new(
            "validation.features",
            format!(
                "holds {} values, at most {MAX_VALIDATION_VALUES} are accepted",
                v.features.len()
            ),
        ));
    }
    if let Some((i, x)) = v.features.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(ConfigError::new(
            format!("validation.features[{i}]"),
            format!("is {x}; only finite values are accepted"),
        ));
    }
    if let Some((i, l)) = v
        .labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(ConfigError::new(
            format!("validation.labels[{i}]"),
            format!("is {l} but the model has {num_classes} classes (labels 0..{num_classes})"),
        ));
    }
    Ok(())
}

/// Storage backend of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// redb, the durable default (a single file `<data_dir>/fedval.redb`).
    #[default]
    Redb,
    /// sled (needs the `sled` cargo feature).
    Sled,
    /// In memory only: everything is lost on exit (tests, simulations).
    Memory,
}

/// Settings file of the `fedval-server` binary (TOML, or JSON for a `.json` file).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFileConfig {
    /// Address to listen on, e.g. `127.0.0.1:50051`.
    pub listen: Option<String>,
    /// Data directory of the durable store (relative paths are relative to the file).
    pub data_dir: Option<PathBuf>,
    /// Plain admin token (stored only as a hash in memory).
    pub admin_token: Option<String>,
    /// Storage backend.
    pub store: Option<StoreKind>,
    /// Federations to create at start-up if they do not exist yet.
    #[serde(default)]
    pub federations: Vec<FederationFileEntry>,
}

/// A federation in the settings file: a [`FederationConfig`] plus an optional
/// `validation_csv` path that fills `validation` from a CSV file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct FederationFileEntry {
    /// The configuration (with `validation` possibly still empty).
    pub config: FederationConfig,
    /// CSV file (`feature,...,label` per line, optionally `.gz`) holding the validation set.
    pub validation_csv: Option<PathBuf>,
}

impl TryFrom<toml::Table> for FederationFileEntry {
    type Error = String;

    /// Splits off `validation_csv`, then parses the rest strictly (unknown fields rejected).
    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let name = match table.get("id") {
            Some(toml::Value::String(id)) => format!("federation {id:?}"),
            _ => "federation entry".to_string(),
        };
        let validation_csv = match table.remove("validation_csv") {
            None => None,
            Some(toml::Value::String(p)) => Some(PathBuf::from(p)),
            Some(other) => {
                return Err(format!(
                    "{name}: `validation_csv` must be a path string, got {}",
                    other.type_str()
                ));
            }
        };
        let config = FederationConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("{name}: {}", e.message()))?;
        Ok(Self {
            config,
            validation_csv,
        })
    }
}

/// Errors reading the server settings file or the files it points to.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON or does not match the expected fields.
    #[error("cannot parse config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with the offending field or line).
        message: String,
    },
    /// A `validation_csv` file could not be loaded.
    #[error("federation {federation:?}: cannot load validation_csv: {source}")]
    Csv {
        /// Id of the federation.
        federation: String,
        /// The loader's error (carries the path and line).
        source: fedval_core::data::DataError,
    },
    /// A federation is listed twice, or gives both `validation` and `validation_csv`.
    #[error("federation {federation:?}: {reason}")]
    Conflict {
        /// Id of the federation.
        federation: String,
        /// What conflicts.
        reason: String,
    },
    /// A federation's configuration is invalid.
    #[error("federation {federation:?}: {source}")]
    Invalid {
        /// Id of the federation.
        federation: String,
        /// The offending field.
        source: ConfigError,
    },
}

/// Reads a settings file: JSON if it ends in `.json`, TOML otherwise.
///
/// Relative `data_dir` and `validation_csv` paths are made relative to the file's directory,
/// so the server can be started from anywhere.
pub fn load_server_file(path: &Path) -> Result<ServerFileConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_err = |message: String| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut cfg: ServerFileConfig = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    } else {
        toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    };
    let base = path.parent().unwrap_or(Path::new(""));
    cfg.data_dir = cfg.data_dir.map(|d| base.join(d));
    for entry in &mut cfg.federations {
        entry.validation_csv = entry.validation_csv.take().map(|p| base.join(p));
    }
    Ok(cfg)
}

impl ServerFileConfig {
    /// The federations of the file, with `validation_csv` files loaded, each validated;
    /// fails on duplicate ids.
    pub fn resolve_federations(&self) -> Result<Vec<FederationConfig>, ConfigFileError> {
        let mut out: Vec<FederationConfig> = Vec::with_capacity(self.federations.len());
        for entry in &self.federations {
            let config = entry.resolve()?;
            if out.iter().any(|c| c.id == config.id) {
                return Err(ConfigFileError::Conflict {
                    federation: config.id,
                    reason: "listed twice in the config file; federation ids must be unique"
                        .to_string(),
                });
            }
            out.push(config);
        }
        Ok(out)
    }
}

impl FederationFileEntry {
    /// The configuration with `validation_csv` loaded into `validation`, validated.
    pub fn resolve(&self) -> Result<FederationConfig, ConfigFileError> {
        let mut config = self.config.clone();
        if let Some(path) = &self.validation_csv {
            if config.validation.is_some() {
                return Err(ConfigFileError::Conflict {
                    federation: config.id,
                    reason: "gives both `validation` and `validation_csv`; keep one".to_string(),
                });
            }
            let data =
                fedval_core::data::load_csv(path).map_err(|source| ConfigFileError::Csv {
                    federation: config.id.clone(),
                    source,
                })?;
            config.validation = Some(ValidationData::from_dataset(&data));
        }
        config
            .validate()
            .map_err(|source| ConfigFileError::Invalid {
                federation: config.id.clone(),
                source,
            })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        listen = "127.0.0.1:50051"
        data_dir = "state"
        admin_token = "admin-secret"
        store = "redb"

        [[federations]]
        id = "iris-demo"
        enrollment_secret = "s3cret"
        rounds = 10
        min_clients = 3
        clients_per_round = 2
        round_timeout_ms = 5000
        seed = 7
        model = { kind = "logistic_regression", num_features = 2, num_classes = 3 }

        [federations.training]
        local_epochs = 2
        batch_size = 16
        learning_rate = 0.05
        seed = 3

        [federations.valuation]
        method = "permutation"
        budget = 500
        metric = "neg_log_loss"

        [federations.aggregator]
        kind = "trimmed_mean"
        trim = 0

        [federations.validation]
        num_features = 2
        features = [0.5, 1.0, -1.0, 2.0]
        labels = [0, 2]
    "#;

    /// A valid configuration every invalid case below starts from.
    fn valid() -> FederationConfig {
        FederationConfig {
            id: "fed-1".into(),
            enrollment_secret: "secret".into(),
            model: Some(ModelSpec::LogisticRegression {
                num_features: 2,
                num_classes: 3,
            }),
            rounds: 5,
            min_clients: 2,
            clients_per_round: 0,
            round_timeout_ms: DEFAULT_ROUND_TIMEOUT_MS,
            training: TrainingParams::default(),
            valuation: ValuationConfig::default(),
            aggregator: AggregatorSpec::default(),
            validation: Some(ValidationData {
                num_features: 2,
                features: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                labels: vec![0, 1, 2],
            }),
            seed: 0,
            reputation: None,
            fair_reward: None,
            vertical: None,
            fact: None,
            bandit: None,
        }
    }

    /// A valid vertical federation: 10 samples, 3 classes, 2 parties, 2 held out.
    fn vertical() -> FederationConfig {
        FederationConfig {
            model: None,
            validation: None,
            vertical: Some(VerticalSettings {
                test_ids: vec![0, 9],
                ..VerticalSettings::classification(3, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
            }),
            ..valid()
        }
    }

    #[test]
    fn vertical_toml_parses_with_defaults() {
        let cfg: FederationConfig = toml::from_str(
            r#"
            id = "v"
            enrollment_secret = "s"
            rounds = 50
            min_clients = 3
            vertical = { objective = "classification", num_classes = 2, labels = [0, 1, 1, 0], test_ids = [3], learning_rate = 0.05 }
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.model, None);
        let v = cfg.vertical.as_ref().expect("vertical");
        assert_eq!(v.batch_size, 32);
        assert_eq!(v.learning_rate, 0.05);
        assert_eq!(v.training, VerticalTraining::Sync);
        assert_eq!((v.completion_rank, v.completion_lambda), (3, 0.1));
        assert_eq!(v.train_ids(), vec![0, 1, 2]);
        assert_eq!(v.output_dim(), 2);
        assert_eq!(cfg.validate(), Ok(()));
        // TOML written back parses to the same configuration.
        let text = toml::to_string(&cfg).expect("serialises");
        assert_eq!(toml::from_str::<FederationConfig>(&text), Ok(cfg));
    }

    #[test]
    fn each_invalid_vertical_field_is_named() {
        type Edit = fn(&mut FederationConfig, &mut VerticalSettings);
        let cases: Vec<(&str, &str, Edit)> = vec![
            ("vertical.snapshot_every", "party steps", |c, v| {
                c.rounds = 10_000;
                v.training = VerticalTraining::Async;
                v.snapshot_every = u32::MAX;
            }),
            ("min_clients", "between 1 and 64", |c, _| c.min_clients = 65),
            ("vertical.num_classes", "between 2 and", |_, v| {
                v.num_classes = 1
            }),
            ("vertical.labels[4]", "is 7", |_, v| v.labels[4] = 7),
            ("vertical.labels", "1 to 1000000", |_, v| v.labels.clear()),
            ("vertical.targets", "must be empty", |_, v| {
                v.targets = vec![1.0]
            }),
            ("vertical.targets[1]", "finite", |_, v| {
                v.objective = VerticalObjective::Regression;
                v.num_classes = 0;
                v.labels.clear();
                v.targets = vec![0.0, f32::NAN];
            }),
            ("vertical.num_classes", "classification only", |_, v| {
                v.objective = VerticalObjective::Regression;
                v.labels.clear();
                v.targets = vec![0.0];
            }),
            ("vertical.test_ids[1]", "0..10", |_, v| v.test_ids[1] = 10),
            ("vertical.test_ids[1]", "distinct", |_, v| v.test_ids[1] = 0),
            ("vertical.test_ids", "left for training", |_, v| {
                v.test_ids = (0..10).collect()
            }),
            ("vertical.batch_size", "between 1", |_, v| v.batch_size = 0),
            ("vertical.batch_size", "between 1", |_, v| {
                v.batch_size = 70_000
            }),
            ("vertical.learning_rate", "> 0", |_, v| {
                v.learning_rate = 0.0
            }),
            ("vertical.learning_rate", "> 0", |_, v| {
                v.learning_rate = f32::INFINITY
            }),
            ("vertical.l2", ">= 0", |_, v| v.l2 = -1.0),
            ("vertical.hidden", "4096", |_, v| v.hidden = 5000),
            ("vertical.snapshot_every", "at least 1", |_, v| {
                v.snapshot_every = 0
            }),
            ("vertical.completion_rank", "between 1", |_, v| {
                v.completion_rank = 0
            }),
            ("vertical.completion_lambda", "> 0", |_, v| {
                v.completion_lambda = f64::NAN
            }),
            ("rounds", "embedding values", |c, v| {
                c.rounds = 100_000;
                v.labels = vec![0; 100_000];
            }),
            ("model", "must be unset", |c, _| c.model = valid().model),
            ("validation", "must be unset", |c, _| {
                c.validation = valid().validation
            }),
            ("reputation", "must be unset", |c, _| {
                c.reputation = Some(RfflSettings::with_gamma(0.5))
            }),
            ("fair_reward", "must be unset", |c, _| {
                c.fair_reward = Some(FairRewardSettings::default())
            }),
            ("clients_per_round", "must be 0", |c, _| {
                c.clients_per_round = 1
            }),
        ];
        for (field, reason, edit) in cases {
            let mut cfg = vertical();
            let mut v = cfg.vertical.take().expect("vertical");
            edit(&mut cfg, &mut v);
            cfg.vertical = Some(v);
            let err = cfg.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains(reason), "{field}: {err}");
        }
        assert_eq!(vertical().validate(), Ok(()));
        let mut horizontal = valid();
        horizontal.model = None;
        let err = horizontal.validate().expect_err("needs a model");
        assert_eq!(err.field, "model");
    }

    /// A case of [`assert_each_refused`]: the field named and the edit that breaks it.
    type Refusal<'a, T> = (&'a str, fn(&mut T));

    /// Asserts that each `(field, edit)` of `cases`, applied to a copy of `base` and made a
    /// configuration by `config_of`, is refused naming `field`.
    #[track_caller]
    fn assert_each_refused<T: Clone + std::fmt::Debug>(
        base: &T,
        cases: &[Refusal<'_, T>],
        config_of: impl Fn(T) -> FederationConfig,
    ) {
        for (field, edit) in cases {
            let mut edited = base.clone();
            edit(&mut edited);
            assert_eq!(
                config_of(edited.clone()).validate().map_err(|e| e.field),
                Err(field.to_string()),
                "{edited:?}"
            );
        }
    }

    fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    #[test]
    fn full_toml_example_parses_with_resolved_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_temp(dir.path(), "server.toml", EXAMPLE);
        let cfg = load_server_file(&path).expect("parses");
        assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:50051"));
        assert_eq!(cfg.data_dir, Some(dir.path().join("state")));
        assert_eq!(cfg.admin_token.as_deref(), Some("admin-secret"));
        assert_eq!(cfg.store, Some(StoreKind::Redb));
        let feds = cfg.resolve_federations().expect("valid");
        assert_eq!(
            feds,
            vec![FederationConfig {
                id: "iris-demo".into(),
                enrollment_secret: "s3cret".into(),
                model: Some(ModelSpec::LogisticRegression {
                    num_features: 2,
                    num_classes: 3
                }),
                rounds: 10,
                min_clients: 3,
                clients_per_round: 2,
                round_timeout_ms: 5000,
                training: TrainingParams {
                    local_epochs: 2,
                    batch_size: 16,
                    learning_rate: 0.05,
                    seed: 3
                },
                valuation: ValuationConfig {
                    method: ValuationMethod::Permutation,
                    exact_max_players: 12,
                    budget: 500,
                    seed: 0,
                    metric: UtilityMetric::NegLogLoss,
                    ..ValuationConfig::default()
                },
                aggregator: AggregatorSpec::TrimmedMean { trim: 0 },
                validation: Some(ValidationData {
                    num_features: 2,
                    features: vec![0.5, 1.0, -1.0, 2.0],
                    labels: vec![0, 2]
                }),
                seed: 7,
                reputation: None,
                fair_reward: None,
                vertical: None,
                fact: None,
                bandit: None,
            }]
        );
    }

    #[test]
    fn omitted_fields_take_documented_defaults() {
        let cfg: FederationConfig = toml::from_str(
            r#"
            id = "a"
            enrollment_secret = "s"
            rounds = 1
            min_clients = 1
            model = { kind = "mlp", num_features = 4, hidden = 8, num_classes = 2 }
            valuation = { method = "none" }
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.clients_per_round, 0);
        assert_eq!(cfg.round_timeout_ms, 30_000);
        assert_eq!(cfg.training, TrainingParams::default());
        assert_eq!(cfg.valuation.exact_max_players, 12);
        assert_eq!(cfg.valuation.budget, 2000);
        assert_eq!(cfg.valuation.metric, UtilityMetric::Accuracy);
        assert_eq!(cfg.validation, None);
        assert_eq!(cfg.aggregator, AggregatorSpec::FedAvg);
        assert_eq!(cfg.seed, 0);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn reputation_parses_with_defaults_and_is_validated() {
        let text = r#"
            id = "r"
            enrollment_secret = "s"
            rounds = 3
            min_clients = 2
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
            valuation = { method = "none" }
            reputation = { gamma = 0.5 }
        "#;
        let cfg: FederationConfig = toml::from_str(text).expect("parses");
        assert_eq!(cfg.reputation, Some(RfflSettings::with_gamma(0.5)));
        assert!(RfflSettings::with_gamma(0.5).keep_own_update);
        assert_eq!(cfg.validate(), Ok(()));
        let reference: FederationConfig = toml::from_str(
            &text.replace("gamma = 0.5 }", "gamma = 0.5, keep_own_update = false }"),
        )
        .expect("parses");
        assert_eq!(reference.reputation.map(|r| r.keep_own_update), Some(false));
        let with = |r: RfflSettings| {
            FederationConfig {
                reputation: Some(r),
                ..cfg.clone()
            }
            .validate()
            .map_err(|e| e.field)
        };
        let base = RfflSettings::with_gamma(0.5);
        let bad = [
            ("reputation.gamma", RfflSettings { gamma: 0.0, ..base }),
            (
                "reputation.gamma",
                RfflSettings {
                    gamma: f32::NAN,
                    ..base
                },
            ),
            ("reputation.alpha", RfflSettings { alpha: 1.0, ..base }),
            (
                "reputation.threshold_coefficient",
                RfflSettings {
                    threshold_coefficient: -0.1,
                    ..base
                },
            ),
            (
                "reputation.warm_up_rounds",
                RfflSettings {
                    warm_up_rounds: MAX_ROUNDS + 1,
                    ..base
                },
            ),
        ];
        for (field, r) in bad {
            assert_eq!(with(r), Err(field.to_string()), "{r:?}");
        }
    }

    #[test]
    fn fact_parses_with_defaults_and_each_invalid_field_is_named() {
        let base = r#"
            id = "f"
            enrollment_secret = "s"
            rounds = 3
            min_clients = 3
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
            valuation = { method = "none" }
        "#;
        let parse = |extra: &str| toml::from_str::<FederationConfig>(&format!("{base}\n{extra}"));
        assert_eq!(parse("").expect("parses").fact, None);
        let cfg = parse("fact = {}").expect("parses");
        assert_eq!(cfg.fact, Some(FactSettings::default()));
        assert_eq!(cfg.validate(), Ok(()));
        let custom = parse(
            r#"fact = { offset = 2.0, alpha = 1.2, prize_factor = 2.0, remainder = "join_last_group", seed = 7 }"#,
        )
        .expect("parses");
        let f = custom.fact.expect("set");
        assert_eq!(
            (f.offset, f.alpha, f.prize_factor, f.seed),
            (2.0, 1.2, 2.0, Some(7))
        );
        assert_eq!(
            f.remainder,
            fedval_core::incentive::fact::RemainderPolicy::JoinLastGroup
        );
        // m* = sqrt(offset / (2 c)): offset 2, cost 0.25 -> 2.
        assert!((f.required_points(0.25) - 2.0).abs() < 1e-12);
        let err = parse("fact = { ofset = 1.0 }").expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `ofset`"), "{err}");
        type Edit = fn(&mut FactSettings);
        let bad: [(&str, Edit); 5] = [
            ("fact.offset", |f| f.offset = 0.0),
            ("fact.offset", |f| f.offset = f64::NAN),
            ("fact.alpha", |f| f.alpha = 2.0),
            ("fact.alpha", |f| f.alpha = 1.0),
            ("fact.prize_factor", |f| f.prize_factor = -1.0),
        ];
        assert_each_refused(&FactSettings::default(), &bad, |f| FederationConfig {
            fact: Some(f),
            ..cfg.clone()
        });
    }

    #[test]
    fn bandit_parses_with_defaults_and_learning_fields_are_refused() {
        let base = r#"
            id = "b"
            enrollment_secret = "s"
            min_clients = 4
        "#;
        let parse = |extra: &str| toml::from_str::<FederationConfig>(&format!("{base}\n{extra}"));
        let cfg = parse("bandit = { dim = 5, horizon = 2000 }").expect("parses");
        assert_eq!(cfg.bandit, Some(BanditSettings::new(5, 2000)));
        assert_eq!(cfg.rounds, 0);
        assert_eq!(cfg.validate(), Ok(()));
        let b = parse(
            r#"bandit = { dim = 3, horizon = 10, lambda = 0.5, alpha = 0.0, threshold = 5.0, beta = 1.0, essential_cap = 0.0, mechanism = "baseline", baseline_value_weight = 2.0, seed = 3 }"#,
        )
        .expect("parses")
        .bandit
        .expect("set");
        assert_eq!(b.mechanism, BanditMechanism::Baseline);
        assert_eq!(
            (b.lambda, b.alpha, b.threshold, b.beta),
            (0.5, 0.0, 5.0, 1.0)
        );
        assert_eq!(b.seed, Some(3));
        let err = parse(r#"bandit = { dim = 3, horizon = 10, mechanism = "vcg" }"#)
            .expect_err("unknown mechanism");
        assert!(err.to_string().contains("vcg"), "{err}");

        type Edit = fn(&mut FederationConfig);
        let bad: [(&str, Edit); 14] = [
            ("bandit.dim", |c| {
                c.bandit = Some(BanditSettings::new(0, 10))
            }),
            ("bandit.dim", |c| {
                c.bandit = Some(BanditSettings::new(257, 10))
            }),
            ("bandit.horizon", |c| {
                c.bandit = Some(BanditSettings::new(3, 0))
            }),
            ("bandit.lambda", |c| {
                c.bandit = c.bandit.map(|b| BanditSettings { lambda: 0.0, ..b })
            }),
            ("bandit.threshold", |c| {
                c.bandit = c.bandit.map(|b| BanditSettings {
                    threshold: f64::NAN,
                    ..b
                })
            }),
            ("bandit.alpha", |c| {
                c.bandit = c.bandit.map(|b| BanditSettings { alpha: -1.0, ..b })
            }),
            ("bandit.beta", |c| {
                c.bandit = c.bandit.map(|b| BanditSettings { beta: 0.0, ..b })
            }),
            ("bandit.beta", |c| {
                c.bandit = c.bandit.map(|b| BanditSettings { beta: 1.5, ..b })
            }),
            ("rounds", |c| c.rounds = 3),
            ("clients_per_round", |c| c.clients_per_round = 2),
            ("min_clients", |c| c.min_clients = 0),
            ("min_clients", |c| c.min_clients = MAX_BANDIT_CLIENTS + 1),
            ("model", |c| {
                c.model = Some(ModelSpec::LogisticRegression {
                    num_features: 2,
                    num_classes: 2,
                })
            }),
            ("fact", |c| c.fact = Some(FactSettings::default())),
        ];
        assert_each_refused(&cfg, &bad, |c| c);
    }

    #[test]
    fn fair_reward_parses_with_defaults_and_is_validated() {
        let base = r#"
            id = "f"
            enrollment_secret = "s"
            rounds = 3
            min_clients = 3
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
            valuation = { method = "none" }
        "#;
        let parse = |extra: &str| toml::from_str::<FederationConfig>(&format!("{base}\n{extra}"));
        let off = parse("").expect("parses");
        assert_eq!(off.fair_reward, None);
        assert!(!off.personal_models());
        let cfg = parse("fair_reward = {}").expect("parses");
        assert_eq!(cfg.fair_reward, Some(FairRewardSettings::default()));
        assert!(cfg.personal_models());
        assert_eq!(cfg.validate(), Ok(()));
        let full = parse(
            "fair_reward = { beta = 20.0, ratio = 0.25, significance = 0.7, window = 9, seed = 4 }",
        )
        .expect("parses");
        let settings = full.fair_reward.expect("set");
        assert_eq!(
            settings,
            FairRewardSettings {
                beta: 20.0,
                ratio: 0.25,
                significance: 0.7,
                window: Some(9),
                seed: Some(4),
            }
        );
        // The default window is 2 n + 1 for the n clients of round 1.
        assert_eq!(FairRewardSettings::default().to_core(4).window, 9);
        assert_eq!(settings.to_core(4).window, 9);
        assert_eq!(settings.to_core(40).window, 9);
        let err = parse("fair_reward = { betta = 1.0 }").expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `betta`"), "{err}");

        let field = |f: FairRewardSettings, min_clients: usize| {
            FederationConfig {
                fair_reward: Some(f),
                min_clients,
                ..cfg.clone()
            }
            .validate()
            .map_err(|e| e.field)
        };
        let d = FairRewardSettings::default();
        type Edit = fn(&mut FairRewardSettings);
        let with = |edit: Edit| {
            let mut f = d;
            edit(&mut f);
            f
        };
        let bad: [(&str, Edit); 8] = [
            ("fair_reward.beta", |f| f.beta = -1.0),
            ("fair_reward.beta", |f| f.beta = f64::INFINITY),
            ("fair_reward.ratio", |f| f.ratio = 1.5),
            ("fair_reward.ratio", |f| f.ratio = f64::NAN),
            ("fair_reward.significance", |f| f.significance = 0.0),
            ("fair_reward.significance", |f| f.significance = 1.0),
            ("fair_reward.window", |f| f.window = Some(3)),
            ("fair_reward.window", |f| f.window = Some(usize::MAX)),
        ];
        for (name, edit) in bad {
            let f = with(edit);
            assert_eq!(field(f, 3), Err(name.to_string()), "{f:?}");
        }
        let edges: [Edit; 2] = [
            |f| {
                f.beta = 0.0;
                f.ratio = 0.0;
            },
            |f| {
                f.ratio = 1.0;
                f.window = Some(4);
            },
        ];
        for f in edges.map(with) {
            assert_eq!(field(f, 3), Ok(()), "{f:?}");
        }
        assert_eq!(field(d, MAX_FAIR_REWARD_CLIENTS), Ok(()));
        assert_eq!(
            field(d, MAX_FAIR_REWARD_CLIENTS + 1),
            Err("min_clients".to_string())
        );
        // One reward policy at a time; the message names both fields.
        let both = FederationConfig {
            reputation: Some(RfflSettings::with_gamma(0.5)),
            ..cfg.clone()
        };
        let err = both.validate().expect_err("exclusive");
        assert_eq!(err.field, "fair_reward");
        assert!(
            err.to_string().contains("`fair_reward`") && err.to_string().contains("`reputation`"),
            "{err}"
        );
        assert_eq!(
            both.reward_policy(),
            Some("RFFL reputations"),
            "named by the first set"
        );
        assert_eq!(
            cfg.reward_policy(),
            Some("fair yet asymptotically equal rewards")
        );
    }

    #[test]
    fn json_config_round_trips() {
        let cfg = valid();
        let json = serde_json::to_string(&cfg).expect("serializes");
        let back: FederationConfig = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, cfg);
    }

    #[test]
    fn each_invalid_field_is_named() {
        type Edit = fn(&mut FederationConfig);
        let cases: Vec<(&str, Edit)> = vec![
            ("id", |c| c.id = String::new()),
            ("id", |c| c.id = "has space".into()),
            ("id", |c| c.id = "x".repeat(65)),
            ("enrollment_secret", |c| c.enrollment_secret.clear()),
            ("enrollment_secret", |c| {
                c.enrollment_secret = "s".repeat(257)
            }),
            ("model", |c| {
                c.model = Some(ModelSpec::LogisticRegression {
                    num_features: 0,
                    num_classes: 3,
                })
            }),
            ("rounds", |c| c.rounds = 0),
            ("rounds", |c| c.rounds = MAX_ROUNDS + 1),
            ("min_clients", |c| c.min_clients = 0),
            ("round_timeout_ms", |c| c.round_timeout_ms = 99),
            ("round_timeout_ms", |c| {
                c.round_timeout_ms = MAX_ROUND_TIMEOUT_MS + 1
            }),
            ("training.local_epochs", |c| c.training.local_epochs = 0),
            ("training.local_epochs", |c| c.training.local_epochs = 1001),
            ("training.batch_size", |c| c.training.batch_size = 0),
            ("training.learning_rate", |c| {
                c.training.learning_rate = f32::NAN
            }),
            ("training.learning_rate", |c| {
                c.training.learning_rate = f32::INFINITY
            }),
            ("training.learning_rate", |c| c.training.learning_rate = 0.0),
            ("valuation.exact_max_players", |c| {
                c.valuation.exact_max_players = 0
            }),
            ("valuation.exact_max_players", |c| {
                c.valuation.exact_max_players = 21
            }),
            ("valuation.budget", |c| c.valuation.budget = 1),
            ("valuation.budget", |c| {
                c.valuation.method = ValuationMethod::Permutation;
                c.valuation.budget = 0;
            }),
            ("aggregator.max_norm", |c| {
                c.aggregator = AggregatorSpec::NormClip { max_norm: 0.0 }
            }),
            ("aggregator.max_norm", |c| {
                c.aggregator = AggregatorSpec::NormClip { max_norm: f64::NAN }
            }),
            ("aggregator.selected", |c| {
                c.aggregator = AggregatorSpec::MultiKrum {
                    byzantine: 0,
                    selected: 0,
                }
            }),
            ("aggregator.trim", |c| {
                c.aggregator = AggregatorSpec::TrimmedMean {
                    trim: u32::MAX as usize + 1,
                }
            }),
            ("aggregator.trim", |c| {
                c.clients_per_round = 4;
                c.aggregator = AggregatorSpec::TrimmedMean { trim: 2 };
            }),
            ("aggregator.byzantine", |c| {
                c.clients_per_round = 4;
                c.aggregator = AggregatorSpec::Krum { byzantine: 1 };
            }),
            ("aggregator.selected", |c| {
                c.clients_per_round = 9;
                c.aggregator = AggregatorSpec::MultiKrum {
                    byzantine: 1,
                    selected: 9,
                };
            }),
            ("validation", |c| c.validation = None),
            ("validation.num_features", |c| {
                if let Some(v) = &mut c.validation {
                    v.num_features = 3;
                }
            }),
            ("validation.features", |c| {
                if let Some(v) = &mut c.validation {
                    v.features.pop();
                }
            }),
            ("validation.labels", |c| {
                c.validation = Some(ValidationData {
                    num_features: 2,
                    features: vec![],
                    labels: vec![],
                })
            }),
            ("validation.features[4]", |c| {
                if let Some(v) = &mut c.validation {
                    v.features[4] = f32::NEG_INFINITY;
                }
            }),
            ("validation.labels[1]", |c| {
                if let Some(v) = &mut c.validation {
                    v.labels[1] = 3;
                }
            }),
            ("validation.features", |c| {
                c.validation = Some(ValidationData {
                    num_features: 2,
                    features: vec![0.0; MAX_VALIDATION_VALUES + 2],
                    labels: vec![0; MAX_VALIDATION_VALUES / 2 + 1],
                })
            }),
        ];
        for (field, edit) in cases {
            let mut cfg = valid();
            edit(&mut cfg);
            let err = cfg.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }

    #[test]
    fn valid_edge_cases_pass() {
        type Edit = fn(&mut FederationConfig);
        let cases: Vec<Edit> = vec![
            |_| {},
            |c| c.id = "A-z_09".into(),
            |c| c.id = "x".repeat(64),
            |c| c.rounds = MAX_ROUNDS,
            |c| c.round_timeout_ms = MIN_ROUND_TIMEOUT_MS,
            |c| {
                c.valuation.method = ValuationMethod::Exact;
                c.valuation.budget = 0;
            },
            |c| {
                c.valuation.method = ValuationMethod::None;
                c.validation = None;
            },
            |c| {
                c.clients_per_round = 5;
                c.aggregator = AggregatorSpec::Krum { byzantine: 1 };
            },
            |c| {
                c.clients_per_round = 10;
                c.aggregator = AggregatorSpec::MultiKrum {
                    byzantine: 1,
                    selected: 9,
                };
            },
            |c| c.aggregator = AggregatorSpec::TrimmedMean { trim: 3 },
            |c| c.aggregator = AggregatorSpec::NormClip { max_norm: 0.5 },
            |c| c.aggregator = AggregatorSpec::Median,
        ];
        for edit in cases {
            let mut cfg = valid();
            edit(&mut cfg);
            assert_eq!(cfg.validate(), Ok(()), "{cfg:?}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let base = r#"
            id = "a"
            enrollment_secret = "s"
            rounds = 1
            min_clients = 1
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
        "#;
        let top = format!("{base}\nround = 3\n");
        let err = toml::from_str::<FederationConfig>(&top).expect_err("unknown top-level field");
        assert!(err.to_string().contains("unknown field `round`"), "{err}");
        let nested = format!("{base}\n[training]\nlearning_rat = 0.1\n");
        let err = toml::from_str::<FederationConfig>(&nested).expect_err("unknown nested field");
        assert!(
            err.to_string().contains("unknown field `learning_rat`"),
            "{err}"
        );
        let file = format!("[[federations]]\n{base}\nround = 3\n");
        let err = toml::from_str::<ServerFileConfig>(&file).expect_err("unknown field in file");
        assert!(err.to_string().contains("unknown field `round`"), "{err}");
        assert!(err.to_string().contains("federation \"a\""), "{err}");
        let err = toml::from_str::<ServerFileConfig>("listn = \"x\"").expect_err("top level");
        assert!(err.to_string().contains("unknown field `listn`"), "{err}");
    }

    #[test]
    fn bad_enum_values_list_accepted_ones() {
        let text = r#"
            id = "a"
            enrollment_secret = "s"
            rounds = 1
            min_clients = 1
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
            valuation = { method = "shapley" }
        "#;
        let err = toml::from_str::<FederationConfig>(text).expect_err("bad method");
        let msg = err.to_string();
        assert!(
            msg.contains("shapley") && msg.contains("permutation"),
            "{msg}"
        );
    }

    #[test]
    fn validation_csv_is_loaded_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_temp(dir.path(), "val.csv", "1.0,2.0,0\n3.0,4.0,1\n-1.5,0.25,1\n");
        let text = r#"
            [[federations]]
            id = "csv"
            enrollment_secret = "s"
            rounds = 2
            min_clients = 1
            validation_csv = "val.csv"
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
        "#;
        let path = write_temp(dir.path(), "server.toml", text);
        let cfg = load_server_file(&path).expect("parses");
        let feds = cfg.resolve_federations().expect("valid");
        assert_eq!(
            feds[0].validation,
            Some(ValidationData {
                num_features: 2,
                features: vec![1.0, 2.0, 3.0, 4.0, -1.5, 0.25],
                labels: vec![0, 1, 1],
            })
        );
    }

    #[test]
    fn file_level_errors_name_the_federation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = r#"
            [[federations]]
            id = "dup"
            enrollment_secret = "s"
            rounds = 2
            min_clients = 1
            valuation = { method = "none" }
            model = { kind = "logistic_regression", num_features = 2, num_classes = 2 }
        "#;
        let path = write_temp(dir.path(), "twice.toml", &format!("{entry}{entry}"));
        let err = load_server_file(&path)
            .expect("parses")
            .resolve_federations()
            .expect_err("duplicate");
        assert!(
            matches!(&err, ConfigFileError::Conflict { federation, .. } if federation == "dup")
        );

        let missing = entry.replace("rounds = 2", "rounds = 2\nvalidation_csv = \"nope.csv\"");
        let path = write_temp(dir.path(), "missing.toml", &missing);
        let err = load_server_file(&path)
            .expect("parses")
            .resolve_federations()
            .expect_err("missing csv");
        assert!(matches!(err, ConfigFileError::Csv { .. }), "{err}");

        let invalid = entry.replace("rounds = 2", "rounds = 0");
        let path = write_temp(dir.path(), "invalid.toml", &invalid);
        let err = load_server_file(&path)
            .expect("parses")
            .resolve_federations()
            .expect_err("invalid");
        assert!(
            matches!(&err, ConfigFileError::Invalid { source, .. } if source.field == "rounds"),
            "{err}"
        );
    }

    #[test]
    fn validation_data_converts_to_and_from_datasets() {
        let v = valid().validation.expect("has validation");
        let ds = v.to_dataset(3).expect("valid");
        assert_eq!(ds.features.dim(), (3, 2));
        assert_eq!(ds.features[[2, 1]], 5.0);
        assert_eq!(ds.num_classes, 3);
        assert_eq!(ValidationData::from_dataset(&ds), v);
        let err = v.to_dataset(2).expect_err("label 2 out of range");
        assert_eq!(err.field, "validation");
        let short = ValidationData {
            features: vec![1.0],
            ..v
        };
        assert_eq!(
            short.to_dataset(3).expect_err("bad shape").field,
            "validation.features"
        );
    }
}
