//! Valuing a committed round's participants (ALGORITHMS.md 2.3 and the estimators of
//! section 2).
//!
//! A plain function of the round's inputs, run on the blocking pool by the federation's
//! valuation worker after the round is committed. v(S) is the validation score of the
//! round's starting model plus the sample-weighted mean of S's updates; v(empty) is the
//! starting model, v(N) the new global model. The federation's configuration picks the
//! estimator; `auto` is exact up to `exact_max_players` participants and permutation
//! sampling beyond. Utility evaluations of a batch run on `threads` threads.

use std::time::Instant;

use fedval_core::data::Dataset;
use fedval_core::valuation::registry::EstimatorSpec;
use fedval_core::valuation::round_game::{RoundGame, Utility};
use fedval_core::valuation::{
    Coalition, Game, MAX_EXACT_PLAYERS, StopReason, Valuation, ValuationError,
    exact_shapley_batched,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{FederationConfig, UtilityMetric, ValuationConfig, ValuationMethod};
use crate::federation::AcceptedUpdate;
use crate::store::{ClientValue, RoundRecord, ValuationStatus};

/// Exact Shapley is never attempted beyond this many participants (2^n evaluations).
const HARD_EXACT_LIMIT: usize = 20;

/// The estimator `config` asks for in a round with `n` participants (`None`: no valuation).
pub fn choose_estimator(config: &ValuationConfig, n: usize) -> Option<EstimatorSpec> {
    Some(match config.method {
        ValuationMethod::None => return None,
        ValuationMethod::Auto if n <= config.exact_max_players.min(HARD_EXACT_LIMIT) => {
            EstimatorSpec::Exact
        }
        ValuationMethod::Auto => EstimatorSpec::Permutation { antithetic: false },
        ValuationMethod::Exact if n <= HARD_EXACT_LIMIT.min(MAX_EXACT_PLAYERS) => {
            EstimatorSpec::Exact
        }
        // Beyond exact reach an "exact" request degrades to sampling, and says so in
        // the recorded method.
        ValuationMethod::Exact | ValuationMethod::Permutation => {
            EstimatorSpec::Permutation { antithetic: false }
        }
        ValuationMethod::PermutationAntithetic => EstimatorSpec::Permutation { antithetic: true },
        ValuationMethod::Tmc => EstimatorSpec::Tmc {
            tolerance: config.tolerance,
        },
        ValuationMethod::Gtg => EstimatorSpec::Gtg {
            round_tolerance: config.round_tolerance,
            within_tolerance: config.within_tolerance,
        },
        ValuationMethod::Svarm => EstimatorSpec::Svarm,
        ValuationMethod::StratifiedSvarm => EstimatorSpec::StratifiedSvarm,
        ValuationMethod::StratifiedSvarmPlus => EstimatorSpec::StratifiedSvarmPlus,
        ValuationMethod::LeaveOneOut => EstimatorSpec::LeaveOneOut,
        ValuationMethod::Banzhaf => EstimatorSpec::Banzhaf,
        ValuationMethod::BetaShapley => EstimatorSpec::BetaShapley {
            alpha: config.beta_alpha,
            beta: config.beta_beta,
        },
    })
}

/// Threads a federation's valuation uses (`0` in the configuration: every core).
pub fn valuation_threads(config: &ValuationConfig) -> usize {
    match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    }
}

/// Whether rounds of this federation are valued at all.
pub fn values_rounds(config: &FederationConfig) -> bool {
    config.valuation.method != ValuationMethod::None && config.validation.is_some()
}

/// Values `updates` (trained from `global` in round `round`) and writes the outcome into
/// `record`: values, method, evaluations, utilities, time, status and stop reason. An
/// estimator failure is recorded as `Failed`, never lost.
pub fn value_round(
    config: &FederationConfig,
    validation: Option<&Dataset>,
    global: &[f32],
    updates: &[AcceptedUpdate],
    record: &mut RoundRecord,
) {
    let started = Instant::now();
    let n = updates.len();
    let (Some(data), Some(spec), Some(model)) = (
        validation,
        choose_estimator(&config.valuation, n),
        config.model.as_ref(),
    ) else {
        record.valuation_status = ValuationStatus::Skipped;
        record.valuation_method = "none".into();
        return;
    };
    let v = &config.valuation;
    let utility = match v.metric {
        UtilityMetric::Accuracy => Utility::Accuracy,
        UtilityMetric::NegLogLoss => Utility::NegLogLoss,
    };
    let deltas: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
    let weights: Vec<f64> = updates
        .iter()
        .map(|u| u.record.num_samples as f64)
        .collect();
    let threads = valuation_threads(v);
    record.valuation_method = spec.name();
    let result = RoundGame::new(model, global, deltas, weights, data, utility).and_then(|game| {
        let mut game = game.with_threads(threads);
        let full = game.value(&Coalition::full(n));
        let empty = game.value(&Coalition::empty(n));
        let valuation = match spec {
            // Building each coalition from scratch but in parallel beats the sequential
            // Gray-code sweep once one evaluation costs more than one vector addition.
            EstimatorSpec::Exact if threads > 1 => exact_shapley_batched(&mut game),
            _ => {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    v.seed ^ record.round.wrapping_mul(0xA076_1D64_78BD_642F),
                );
                spec.estimate(v.budget, &mut game, &mut rng)
            }
        }?;
        Ok::<(f64, f64, Valuation), ValuationError>((full, empty, valuation))
    });
    record.valuation_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok((full, empty, valuation)) => {
            record.utility_full = full;
            record.utility_empty = empty;
            record.evaluations = valuation.evaluations;
            record.valuation_stop = stop_name(valuation.stop).into();
            let errs = valuation.std_errors.unwrap_or_else(|| vec![0.0; n]);
            record.values = updates
                .iter()
                .zip(valuation.values.iter().zip(errs))
                .map(|(u, (&value, std_error))| ClientValue {
                    client_id: u.record.client_id.clone(),
                    value,
                    std_error,
                })
                .collect();
            record.valuation_status = ValuationStatus::Done;
        }
        Err(e) => {
            tracing::warn!(round = record.round, error = %e, "round not valued");
            record.valuation_status = ValuationStatus::Failed(e.to_string());
        }
    }
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Exact => "exact",
        StopReason::BudgetExhausted => "budget_exhausted",
        StopReason::Converged => "converged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_exact_up_to_the_limit_and_sampling_beyond() {
        let mut config = ValuationConfig::default();
        assert_eq!(choose_estimator(&config, 12), Some(EstimatorSpec::Exact));
        assert_eq!(
            choose_estimator(&config, 13),
            Some(EstimatorSpec::Permutation { antithetic: false })
        );
        config.method = ValuationMethod::Exact;
        assert_eq!(choose_estimator(&config, 20), Some(EstimatorSpec::Exact));
        assert_eq!(
            choose_estimator(&config, 21),
            Some(EstimatorSpec::Permutation { antithetic: false })
        );
        config.method = ValuationMethod::None;
        assert_eq!(choose_estimator(&config, 3), None);
    }

    #[test]
    fn every_configured_method_maps_to_an_estimator() {
        for (method, name) in ValuationMethod::ALL {
            let config = ValuationConfig {
                method,
                ..ValuationConfig::default()
            };
            let chosen = choose_estimator(&config, 30);
            assert_eq!(chosen.is_none(), method == ValuationMethod::None, "{name}");
        }
    }
}
