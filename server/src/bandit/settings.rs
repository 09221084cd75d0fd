//! The settings of a bandit federation (`bandit = { dim = 5, horizon = 2000 }`).

use fedval_core::incentive::environment;
use fedval_core::incentive::truthfedban::{Mechanism, MechanismConfig};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Largest context dimension: a Gram update is `d x d` doubles in one message (core's
/// limit, which the client SDK enforces too, as the wire's `u32`).
pub const MAX_BANDIT_DIM: u32 = environment::MAX_BANDIT_DIM as u32;
/// Longest run, in steps.
pub const MAX_BANDIT_HORIZON: u64 = 10_000_000;
/// Most clients of a bandit federation (payments cost `O(n^2)` log-dets per round).
pub const MAX_BANDIT_CLIENTS: usize = 100;
/// Budget of one communication round's selection and critical-value payments, as
/// `dim^3 * clients^2`: configurations above it are refused.
///
/// A round runs the greedy over `n` clients (`K` steps of `n` candidates, one `d x d`
/// factorisation each) and a greedy rerun without each of the `K` selected clients, resumed
/// where it picked that client. The worst case (`beta = 1`: every client selected and
/// essential, every rerun to exhaustion) measured on one core of the development machine
/// (core test `truthfedban_selection_cost_measurement`): `n = 100, d = 73` (3.9e9) 6.0 s,
/// `n = 30, d = 164` (4.0e9) 1.9 s, `n = 10, d = 256` (1.7e9) 0.33 s, `n = 10, d = 170`
/// 0.10 s. The cost grows like `n^3 d^3` in that worst case, so the budget binds at the most
/// clients: 4e9 keeps a round under about 10 s for every allowed `n`.
pub const MAX_ROUND_WORK: u64 = 4_000_000_000;

/// Which payment rule a bandit federation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BanditMechanism {
    /// Critical-value payments (truthful).
    #[default]
    TruthFedban,
    /// Reported cost minus the value of the data received (Inc-FedUCB-style; not truthful).
    Baseline,
}

impl BanditMechanism {
    /// The wire and ledger name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TruthFedban => "truth_fedban",
            Self::Baseline => "baseline",
        }
    }

    /// Parses the wire name (empty = the default).
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name {
            "" | "truth_fedban" => Ok(Self::TruthFedban),
            "baseline" => Ok(Self::Baseline),
            other => Err(ConfigError::new(
                "bandit.mechanism",
                format!("unknown mechanism `{other}`: use \"truth_fedban\" or \"baseline\""),
            )),
        }
    }

    /// The core payment rule.
    pub fn to_core(self) -> Mechanism {
        match self {
            Self::TruthFedban => Mechanism::TruthFedBan,
            Self::Baseline => Mechanism::Baseline,
        }
    }
}

/// Settings of a federated linear bandit with Truth-FedBan incentives (ALGORITHMS.md
/// section 7); omitted fields take the defaults in brackets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanditSettings {
    /// Context dimension `d` (1 to [`MAX_BANDIT_DIM`]).
    pub dim: u32,
    /// Total steps `T` over all clients (1 to [`MAX_BANDIT_HORIZON`]).
    pub horizon: u64,
    /// Ridge `lambda` of every Gram matrix, > 0 (1).
    #[serde(default = "one")]
    pub lambda: f64,
    /// LinUCB exploration weight, >= 0 (1).
    #[serde(default = "one")]
    pub alpha: f64,
    /// Trigger threshold `D_c`, > 0 (20).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Target ratio `beta` in `(0, 1]` (0.5).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Payment to an essential client, >= 0 (5).
    #[serde(default = "default_essential_cap")]
    pub essential_cap: f64,
    /// Payment rule (`"truth_fedban"`).
    #[serde(default)]
    pub mechanism: BanditMechanism,
    /// Baseline only: weight of the log-det value of received data, >= 0 (1).
    #[serde(default = "one")]
    pub baseline_value_weight: f64,
    /// Seed of the active-client schedule; unset: the federation's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn one() -> f64 {
    1.0
}

fn default_threshold() -> f64 {
    20.0
}

fn default_beta() -> f64 {
    0.5
}

fn default_essential_cap() -> f64 {
    5.0
}

impl BanditSettings {
    /// Settings of dimension `dim` and horizon `horizon` with every other field at its
    /// default.
    pub fn new(dim: u32, horizon: u64) -> Self {
        Self {
            dim,
            horizon,
            lambda: one(),
            alpha: one(),
            threshold: default_threshold(),
            beta: default_beta(),
            essential_cap: default_essential_cap(),
            mechanism: BanditMechanism::default(),
            baseline_value_weight: one(),
            seed: None,
        }
    }

    /// The core mechanism's settings.
    pub fn mechanism_config(&self) -> MechanismConfig {
        MechanismConfig {
            beta: self.beta,
            essential_cap: self.essential_cap,
            baseline_value_weight: self.baseline_value_weight,
        }
    }

    /// Checks the ranges, naming the field as `bandit.dim` etc.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_BANDIT_DIM).contains(&self.dim) {
            return Err(ConfigError::new(
                "bandit.dim",
                format!("must be between 1 and {MAX_BANDIT_DIM}, got {}", self.dim),
            ));
        }
        if !(1..=MAX_BANDIT_HORIZON).contains(&self.horizon) {
            return Err(ConfigError::new(
                "bandit.horizon",
                format!(
                    "must be between 1 and {MAX_BANDIT_HORIZON} steps, got {}",
                    self.horizon
                ),
            ));
        }
        let positive = [
            ("bandit.lambda", self.lambda),
            ("bandit.threshold", self.threshold),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::new(
                    field,
                    format!("must be a finite number > 0, got {value}"),
                ));
            }
        }
        let non_negative = [
            ("bandit.alpha", self.alpha),
            ("bandit.essential_cap", self.essential_cap),
            ("bandit.baseline_value_weight", self.baseline_value_weight),
        ];
        for (field, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ConfigError::new(
                    field,
                    format!("must be a finite number >= 0, got {value}"),
                ));
            }
        }
        if !(self.beta.is_finite() && self.beta > 0.0 && self.beta <= 1.0) {
            return Err(ConfigError::new(
                "bandit.beta",
                format!("must be in (0, 1], got {}", self.beta),
            ));
        }
        Ok(())
    }

    /// Checks that a round of `clients` clients stays within [`MAX_ROUND_WORK`]
    /// (`dim^3 * clients^2`), naming `bandit.dim` and saying what to reduce. Call after
    /// [`Self::validate`] (which bounds `dim`).
    pub fn check_round_cost(&self, clients: usize) -> Result<(), ConfigError> {
        let work = |dim: u64, n: u64| dim.pow(3).saturating_mul(n.saturating_mul(n));
        let (dim, n) = (u64::from(self.dim), clients as u64);
        if work(dim, n) <= MAX_ROUND_WORK {
            return Ok(());
        }
        let max_dim = (1..=u64::from(MAX_BANDIT_DIM))
            .rev()
            .find(|&d| work(d, n) <= MAX_ROUND_WORK)
            .unwrap_or(0);
        let max_clients = (1..=n)
            .rev()
            .find(|&c| work(dim, c) <= MAX_ROUND_WORK)
            .unwrap_or(0);
        Err(ConfigError::new(
            "bandit.dim",
            format!(
                "a communication round's selection and payments cost about dim^3 x \
                 min_clients^2 = {dim}^3 x {n}^2 = {:.2e}, over the budget of \
                 {MAX_ROUND_WORK:.0e} (about 10 s per round on one core): reduce bandit.dim \
                 to at most {max_dim} for {n} clients, or min_clients to at most \
                 {max_clients} for dimension {dim}",
                work(dim, n) as f64
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_cost_budget_keeps_the_shipped_sizes_and_names_what_to_reduce() {
        // The digits scenario (d 170, 10 clients), the largest-dimension e2e test (d 256, up
        // to 4 clients) and the measured boundary at the most clients (d 73, 100 clients).
        for (dim, clients) in [(170, 10), (256, 4), (256, 15), (73, 100), (1, 100)] {
            assert_eq!(
                BanditSettings::new(dim, 10).check_round_cost(clients),
                Ok(()),
                "d {dim} n {clients}"
            );
        }
        let err = BanditSettings::new(256, 10)
            .check_round_cost(100)
            .expect_err("over budget");
        assert_eq!(err.field, "bandit.dim");
        assert!(
            err.to_string()
                .contains("bandit.dim to at most 73 for 100 clients")
                && err
                    .to_string()
                    .contains("min_clients to at most 15 for dimension 256"),
            "{err}"
        );
        assert!(BanditSettings::new(74, 10).check_round_cost(100).is_err());
        assert!(BanditSettings::new(256, 10).check_round_cost(16).is_err());
    }
}
