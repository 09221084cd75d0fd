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
use crate::federation::MAX_NUM_SAMPLES;

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
/// `m*` that is finite and that an update can claim (at most `MAX_NUM_SAMPLES`, `2^40`:
/// a requirement nobody can meet would penalise the client every round). Otherwise an
/// `INVALID_ARGUMENT` names the value, and for a cost too small the least accepted one.
pub fn check_reported_cost(settings: &FactSettings, cost_per_point: f64) -> ServiceResult<f64> {
    let m_star = settings.required_points(cost_per_point);
    if !(cost_per_point.is_finite() && cost_per_point > 0.0 && m_star.is_finite() && m_star > 0.0) {
        return Err(ServiceError::InvalidArgument(format!(
            "cost_per_point must be a finite number > 0 in a FACT federation (your marginal \
             cost per data point; it sets the points you must train on), got {cost_per_point}"
        )));
    }
    let most = MAX_NUM_SAMPLES as f64;
    if m_star > most {
        return Err(ServiceError::InvalidArgument(format!(
            "cost_per_point {cost_per_point:e} requires m* = sqrt(offset / (2 cost)) = \
             {m_star:e} points per round, more than the {MAX_NUM_SAMPLES} samples an update \
             may claim, so no update could meet it: report a cost_per_point of at least {:e}",
            least_cost(settings)
        )));
    }
    Ok(cost_per_point)
}

/// The smallest cost whose `m*` an update can claim: `offset / (2 MAX_NUM_SAMPLES^2)`,
/// raised by the ulps rounding needs.
fn least_cost(settings: &FactSettings) -> f64 {
    let most = MAX_NUM_SAMPLES as f64;
    let mut cost = settings.offset / (2.0 * most * most);
    while settings.required_points(cost) > most {
        cost = cost.next_up();
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// offset 1: m* = sqrt(1 / (2 c)); a cost of 1e-30 asks 7.07e14 points, more than
    /// the 2^40 an update may claim. The message names the least accepted cost, which is
    /// accepted (its m* is at most 2^40), while the next smaller cost is not.
    #[test]
    fn a_cost_whose_requirement_no_update_can_claim_is_refused() {
        let settings = FactSettings::default();
        assert_eq!(settings.offset, 1.0);
        let Err(ServiceError::InvalidArgument(m)) = check_reported_cost(&settings, 1e-30) else {
            panic!("a cost of 1e-30 is refused");
        };
        let least = least_cost(&settings);
        assert!(
            m.starts_with("cost_per_point 1e-30 requires m* = sqrt(offset / (2 cost)) = 7.07")
                && m.contains("more than the 1099511627776 samples an update may claim")
                && m.ends_with(&format!("report a cost_per_point of at least {least:e}")),
            "{m}"
        );
        assert!((least - 1.0 / (2.0 * 2f64.powi(80))).abs() <= 4.0 * f64::EPSILON * least);
        assert_eq!(check_reported_cost(&settings, least).ok(), Some(least));
        assert!(settings.required_points(least) <= MAX_NUM_SAMPLES as f64);
        assert!(check_reported_cost(&settings, least / 2.0).is_err());
        // Ordinary costs pass unchanged; unusable ones keep their own message.
        assert_eq!(check_reported_cost(&settings, 2.5e-5).ok(), Some(2.5e-5));
        let Err(ServiceError::InvalidArgument(m)) = check_reported_cost(&settings, 0.0) else {
            panic!("a cost of 0 is refused");
        };
        assert!(m.ends_with("got 0"), "{m}");
    }
}
