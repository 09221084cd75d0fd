//! FACT in horizontal federations (ALGORITHMS.md section 6): truthful penalties and prizes
//! against free riding.
//!
//! Every client reports its marginal cost per data point when it enrolls; its required
//! contribution `m* = sqrt(offset / (2 cost))` travels in every `TrainTask`, and every update
//! claims the points it trained on (`UpdateHeader.num_samples`). This module holds the
//! federation's FACT settings; [`settlement`] settles every committed round into
//! penalties and prizes on the ledger.

pub mod settlement;

use fedval_core::incentive::IncentiveError;
use fedval_core::incentive::fact::{FactParams, RemainderPolicy};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::error::{ServiceError, ServiceResult};

/// FACT settings of a federation (`fact = { offset = 1.0, alpha = 1.5 }`); omitted fields
/// take the defaults of [`FactParams::default`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactSettings {
    /// Loss-surrogate numerator: `m` points have loss `offset / (2 m)` (> 0).
    #[serde(default = "default_offset")]
    pub offset: f64,
    /// Penalty strength in `(1, 2)`: an agent keeps `alpha / 2` of its federated gain.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Prize multiplier of a sandwich-competition winner (>= 0).
    #[serde(default = "default_prize_factor")]
    pub prize_factor: f64,
    /// What happens to the clients left over after grouping in threes.
    #[serde(default = "default_remainder")]
    pub remainder: RemainderPolicy,
    /// Seed of the groupings; unset: the federation's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_offset() -> f64 {
    FactParams::default().offset
}

fn default_alpha() -> f64 {
    FactParams::default().alpha
}

fn default_prize_factor() -> f64 {
    FactParams::default().prize_factor
}

fn default_remainder() -> RemainderPolicy {
    FactParams::default().remainder
}

impl Default for FactSettings {
    /// The core defaults and the federation's seed.
    fn default() -> Self {
        Self {
            offset: default_offset(),
            alpha: default_alpha(),
            prize_factor: default_prize_factor(),
            remainder: default_remainder(),
            seed: None,
        }
    }
}

impl FactSettings {
    /// The core mechanism's parameters.
    pub fn params(&self) -> FactParams {
        FactParams {
            offset: self.offset,
            alpha: self.alpha,
            prize_factor: self.prize_factor,
            remainder: self.remainder,
        }
    }

    /// Checks the ranges, naming the field as `fact.offset` etc.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params().validate().map_err(|e| {
            let field = match &e {
                IncentiveError::InvalidParameter { name, .. } => format!("fact.{name}"),
                _ => "fact".to_owned(),
            };
            ConfigError::new(field, e.to_string())
        })
    }

    /// The required contribution `m* = sqrt(offset / (2 cost))` of a reported cost.
    pub fn required_points(&self, cost_per_point: f64) -> f64 {
        fedval_core::incentive::fact::local_optimum(&self.params(), cost_per_point).unwrap_or(0.0)
    }
}

/// Parses the wire name of a remainder policy (empty = the default).
pub fn parse_remainder(name: &str) -> Result<RemainderPolicy, ConfigError> {
    match name {
        "" => Ok(default_remainder()),
        "leftovers_lose" => Ok(RemainderPolicy::LeftoversLose),
        "join_last_group" => Ok(RemainderPolicy::JoinLastGroup),
        "random_extra" => Ok(RemainderPolicy::RandomExtra),
        other => Err(ConfigError::new(
            "fact.remainder",
            format!(
                "unknown policy `{other}`: use \"leftovers_lose\", \"join_last_group\" or \
                 \"random_extra\""
            ),
        )),
    }
}

/// The wire name of a remainder policy.
pub fn remainder_name(policy: RemainderPolicy) -> &'static str {
    match policy {
        RemainderPolicy::LeftoversLose => "leftovers_lose",
        RemainderPolicy::JoinLastGroup => "join_last_group",
        RemainderPolicy::RandomExtra => "random_extra",
    }
}

/// Checks a cost reported at enrollment: finite and > 0, with a required contribution
/// `m*` that is finite (an `INVALID_ARGUMENT` naming the value otherwise).
pub fn check_reported_cost(settings: &FactSettings, cost_per_point: f64) -> ServiceResult<f64> {
    let m_star = settings.required_points(cost_per_point);
    if cost_per_point.is_finite() && cost_per_point > 0.0 && m_star.is_finite() && m_star > 0.0 {
        Ok(cost_per_point)
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "cost_per_point must be a finite number > 0 in a FACT federation (your marginal \
             cost per data point; it sets the points you must train on), got {cost_per_point}"
        )))
    }
}
