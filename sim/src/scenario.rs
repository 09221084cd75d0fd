//! What a simulation runs: the data, the clients and their behaviours, the federation.
//!
//! [`SimConfig`] is one serde struct (so it can be read from a file and is echoed into
//! the report); its `Default` is the demo: 10 clients on digits with Dirichlet label
//! skew, one client with shuffled labels and one with very little data, 20 rounds.

use serde::{Deserialize, Serialize};

/// How a simulated client behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Trains on its own data as asked.
    Honest,
    /// Trains on its data with the labels shuffled among its samples (useless updates).
    Noisy,
    /// Holds very little data (`SimConfig::tiny_samples` rows).
    Tiny,
}

impl Behaviour {
    /// The name used in tables and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::Noisy => "noisy",
            Behaviour::Tiny => "tiny",
        }
    }
}

/// How the training rows are split among clients.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Partition {
    /// Uniformly at random, equal sizes.
    Iid,
    /// Label skew: per-class shares drawn from Dir(alpha).
    Dirichlet { alpha: f64 },
    /// Size skew: client sizes drawn from Dir(alpha).
    Quantity { alpha: f64 },
}

/// The built-in model the federation trains.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelChoice {
    /// Multinomial logistic regression.
    Logreg,
    /// One hidden layer of `hidden` ReLU units.
    Mlp { hidden: usize },
}

/// Everything a simulation run depends on; the same config and seed give the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Shipped data set: digits, breast_cancer, wine or iris.
    pub dataset: String,
    /// Number of clients.
    pub clients: usize,
    /// Federated rounds.
    pub rounds: u64,
    /// How training rows are split among clients.
    pub partition: Partition,
    /// Clients with shuffled labels.
    pub noisy: usize,
    /// Clients with very little data.
    pub tiny: usize,
    /// Rows a tiny client keeps.
    pub tiny_samples: usize,
    /// The model.
    pub model: ModelChoice,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: u32,
    /// SGD learning rate.
    pub learning_rate: f32,
    /// Fraction of rows held out as the test set (reported, never trained on).
    pub test_fraction: f64,
    /// Fraction of rows the server keeps as its validation set (valuation utility).
    pub validation_fraction: f64,
    /// Valuation method: auto, exact, permutation or none.
    pub valuation: String,
    /// Utility evaluations per round for the permutation estimator.
    pub valuation_budget: u64,
    /// Utility metric: accuracy or neg_log_loss.
    pub utility: String,
    /// Milliseconds a round stays open.
    pub round_timeout_ms: u64,
    /// Master seed: data split, partition, behaviours, model init, training, valuation.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            dataset: "digits".into(),
            clients: 10,
            rounds: 20,
            partition: Partition::Dirichlet { alpha: 0.5 },
            noisy: 1,
            tiny: 1,
            tiny_samples: 10,
            model: ModelChoice::Logreg,
            local_epochs: 2,
            batch_size: 16,
            learning_rate: 0.3,
            test_fraction: 0.2,
            validation_fraction: 0.1,
            valuation: "auto".into(),
            valuation_budget: 2000,
            utility: "neg_log_loss".into(),
            round_timeout_ms: 30_000,
            seed: 42,
        }
    }
}

impl SimConfig {
    /// The behaviour of client `index`: the first `noisy` clients are noisy, the next
    /// `tiny` are tiny, the rest honest.
    pub fn behaviour(&self, index: usize) -> Behaviour {
        if index < self.noisy {
            Behaviour::Noisy
        } else if index < self.noisy + self.tiny {
            Behaviour::Tiny
        } else {
            Behaviour::Honest
        }
    }
}
