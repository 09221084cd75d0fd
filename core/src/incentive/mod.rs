//! Truthful incentive mechanisms: make contributing the rational choice and lying pointless.
//!
//! Both mechanisms are pure functions of reported values and an explicit seed, so the server
//! can persist every input that produced a payment, penalty or prize, and the simulator can
//! replay them:
//!
//! - [`fact`]: FACT (Bornstein et al., NeurIPS 2024): required contributions `m*` from reported
//!   per-point costs, the free-riding penalty, and the "sandwich" competition in random groups
//!   of three that rewards truthful cost reports.
//! - [`truthfedban`]: Truth-FedBan (Wei et al., ICLR 2024): truthful participant selection and
//!   critical-value payments for federated contextual bandits.
//! - [`environment`]: the contexts and rewards a bandit client acts on.

pub mod environment;
pub mod fact;
pub mod truthfedban;

/// Errors from the incentive mechanisms; each carries the offending input.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum IncentiveError {
    /// A mechanism parameter is out of range (or not finite).
    #[error("invalid {name}: {value} ({reason})")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The allowed range.
        reason: &'static str,
    },
    /// A mechanism needs more agents than were given.
    #[error("{mechanism} needs at least {needed} agents, got {got}")]
    TooFewAgents {
        /// Which mechanism or step.
        mechanism: &'static str,
        /// Minimum number of agents.
        needed: usize,
        /// Agents given.
        got: usize,
    },
    /// A per-agent slice has the wrong number of entries.
    #[error("{what} has {got} entries but there are {expected} agents")]
    AgentCount {
        /// Which argument.
        what: &'static str,
        /// Number of agents.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// An agent index is outside `0..agents`.
    #[error("agent {agent} is out of range for {agents} agents")]
    AgentOutOfRange {
        /// The rejected index.
        agent: usize,
        /// Number of agents.
        agents: usize,
    },
    /// A per-agent value (cost, contribution, ...) is negative, zero where it must be positive,
    /// or not finite.
    #[error("agent {agent}: invalid {what} {value} ({reason})")]
    InvalidAgentValue {
        /// Agent index.
        agent: usize,
        /// Which value.
        what: &'static str,
        /// The rejected value.
        value: f64,
        /// The allowed range.
        reason: &'static str,
    },
    /// A vector or matrix has the wrong length for the bandit dimension.
    #[error("{what} has {got} entries, expected {expected}")]
    Dimension {
        /// Which argument.
        what: &'static str,
        /// Entries expected (`d` or `d * d`).
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// A matrix that must be symmetric positive definite failed its Cholesky factorisation.
    #[error("{what} is not positive definite: pivot {pivot} is {value}")]
    NotPositiveDefinite {
        /// Which matrix.
        what: &'static str,
        /// Index of the failing pivot.
        pivot: usize,
        /// The non-positive (or non-finite) pivot value.
        value: f64,
    },
    /// FACT's penalty needs `c_i > offset / (2 M^2)`: the agent's reported cost is so small that
    /// the federation's data total cannot support a positive penalty weight.
    #[error(
        "agent {agent}: cost {cost} must exceed offset / (2 M^2) = {threshold} (total data M = {total})"
    )]
    CostBelowThreshold {
        /// Agent index.
        agent: usize,
        /// The agent's (reported) cost per data point.
        cost: f64,
        /// `offset / (2 M^2)`.
        threshold: f64,
        /// The total data `M`.
        total: f64,
    },
}

/// Checks a per-agent argument, the validation both mechanisms share: `values` (called
/// `what`) has one entry per agent and each entry (a `value_name`) is finite and `>= 0`.
pub(crate) fn check_agent_values(
    what: &'static str,
    value_name: &'static str,
    values: &[f64],
    agents: usize,
) -> Result<(), IncentiveError> {
    if values.len() != agents {
        return Err(IncentiveError::AgentCount {
            what,
            expected: agents,
            got: values.len(),
        });
    }
    match values
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        Some((agent, &value)) => Err(IncentiveError::InvalidAgentValue {
            agent,
            what: value_name,
            value,
            reason: "must be finite and >= 0",
        }),
        None => Ok(()),
    }
}
