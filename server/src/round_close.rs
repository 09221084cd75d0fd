//! Closing a horizontal round: aggregate (FedAvg), score, and value the participants.
//!
//! A plain function of the round's inputs, run on the blocking pool by the round loop.
//! Valuation follows ALGORITHMS.md 2.3: v(S) is the validation score of the global
//! model plus the sample-weighted mean of S's updates; v(empty) is the previous
//! global model. Exact Shapley (Gray-code order) up to `exact_max_players`
//! participants, permutation Monte Carlo with a budget and a seed beyond.

use std::time::Instant;

use fedval_core::aggregate::{apply_update, fedavg};
use fedval_core::data::Dataset;
use fedval_core::valuation::exact::exact_shapley;
use fedval_core::valuation::permutation::PermutationSampling;
use fedval_core::valuation::round_game::{RoundGame, Utility};
use fedval_core::valuation::{Coalition, Game, Valuation};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{FederationConfig, UtilityMetric, ValuationMethod};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::AcceptedUpdate;
use crate::store::ClientValue;

/// Exact Shapley is never attempted beyond this many participants (2^n evaluations).
const HARD_EXACT_LIMIT: usize = 20;

/// What closing a round produced.
#[derive(Debug)]
pub struct RoundOutcome {
    /// The new global parameters.
    pub params: Vec<f32>,
    /// Validation metrics of the new model and sample-weighted client metrics.
    pub metrics: Vec<(String, f64)>,
    /// Per-participant values of this round (empty when not valued).
    pub values: Vec<ClientValue>,
    /// "exact", "permutation" or "none".
    pub method: String,
    /// Utility evaluations the estimator spent.
    pub evaluations: u64,
    /// v(N) and v(empty).
    pub utility_full: f64,
    pub utility_empty: f64,
    /// Wall time of the valuation.
    pub valuation_ms: u64,
}

/// Aggregates and values `updates`, trained from `global`, for round `round`.
pub fn close_round(
    config: &FederationConfig,
    validation: Option<&Dataset>,
    global: &[f32],
    updates: &[AcceptedUpdate],
    round: u64,
) -> ServiceResult<RoundOutcome> {
    let weighted: Vec<(&[f32], f64)> = updates
        .iter()
        .map(|u| (u.delta.as_slice(), u.record.num_samples as f64))
        .collect();
    // Every update was checked against the model on upload, but restored ones come from
    // disk: check again rather than let `apply_update` panic on a length mismatch.
    if let Some(u) = updates.iter().find(|u| u.delta.len() != global.len()) {
        return Err(ServiceError::Internal(format!(
            "round {round}: the update of {} has {} values but the model has {}",
            u.record.client_id,
            u.delta.len(),
            global.len()
        )));
    }
    let mean =
        fedavg(&weighted).map_err(|e| ServiceError::Internal(format!("aggregation: {e}")))?;
    let params = apply_update(global, &mean);
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ServiceError::Internal(format!(
            "round {round}: the aggregated model is not finite at index {index}"
        )));
    }

    let mut metrics = client_metrics(updates);
    if let Some(data) = validation {
        let m = config
            .model
            .evaluate(&params, data)
            .map_err(|e| ServiceError::Internal(format!("validation: {e}")))?;
        metrics.push(("val_loss".into(), m.loss));
        metrics.push(("val_accuracy".into(), m.accuracy));
    }

    let started = Instant::now();
    let mut outcome = RoundOutcome {
        params,
        metrics,
        values: Vec::new(),
        method: "none".into(),
        evaluations: 0,
        utility_full: f64::NAN,
        utility_empty: f64::NAN,
        valuation_ms: 0,
    };
    let Some(data) = validation else {
        return Ok(outcome);
    };
    let v = &config.valuation;
    let n = updates.len();
    let exact = match v.method {
        ValuationMethod::None => return Ok(outcome),
        ValuationMethod::Exact => n <= HARD_EXACT_LIMIT,
        ValuationMethod::Auto => n <= v.exact_max_players.min(HARD_EXACT_LIMIT),
        ValuationMethod::Permutation => false,
    };
    let utility = match v.metric {
        UtilityMetric::Accuracy => Utility::Accuracy,
        UtilityMetric::NegLogLoss => Utility::NegLogLoss,
    };
    let deltas: Vec<&[f32]> = updates.iter().map(|u| u.delta.as_slice()).collect();
    let weights: Vec<f64> = updates
        .iter()
        .map(|u| u.record.num_samples as f64)
        .collect();
    let mut game = RoundGame::new(&config.model, global, deltas, weights, data, utility)
        .map_err(|e| ServiceError::Internal(format!("valuation game: {e}")))?;
    outcome.utility_full = game.value(&Coalition::full(n));
    outcome.utility_empty = game.value(&Coalition::empty(n));
    let result: Result<Valuation, _> = if exact {
        exact_shapley(&mut game)
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(v.seed ^ round.wrapping_mul(0xA076_1D64_78BD_642F));
        PermutationSampling {
            budget: v.budget,
            antithetic: false,
        }
        .estimate(&mut game, &mut rng)
    };
    outcome.valuation_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(val) => {
            outcome.method = if exact { "exact" } else { "permutation" }.into();
            outcome.evaluations = val.evaluations;
            let errs = val.std_errors.unwrap_or_else(|| vec![0.0; n]);
            outcome.values = updates
                .iter()
                .zip(val.values.iter().zip(errs))
                .map(|(u, (&value, std_error))| ClientValue {
                    client_id: u.record.client_id.clone(),
                    value,
                    std_error,
                })
                .collect();
        }
        Err(e) => {
            // The round's model is still committed; only its valuation is missing.
            tracing::warn!(round, error = %e, "round not valued");
            outcome.method = format!("none ({e})");
        }
    }
    Ok(outcome)
}

/// Sample-weighted means of the metrics clients reported, prefixed `client_`.
fn client_metrics(updates: &[AcceptedUpdate]) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64, f64)> = Vec::new();
    for u in updates {
        let w = u.record.num_samples as f64;
        for (name, value) in &u.record.metrics {
            match sums.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => {
                    entry.1 += w * value;
                    entry.2 += w;
                }
                None => sums.push((name.clone(), w * value, w)),
            }
        }
    }
    sums.into_iter()
        .filter(|(_, _, w)| *w > 0.0)
        .map(|(name, s, w)| (format!("client_{name}"), s / w))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::federation::tests::config;
    use crate::store::UpdateRecord;

    fn update(client: &str, delta: Vec<f32>) -> AcceptedUpdate {
        AcceptedUpdate {
            record: UpdateRecord {
                client_id: client.into(),
                round: 1,
                model_version: 0,
                num_samples: 1,
                metrics: Vec::new(),
                sha256: String::new(),
                received_at_ms: 0,
            },
            delta: Arc::new(delta),
        }
    }

    #[test]
    fn an_update_of_the_wrong_length_is_an_error_not_a_panic() {
        let global = vec![0.0f32; 9];
        let updates = [update("a", vec![1.0; 9]), update("b", vec![1.0; 8])];
        let err = close_round(&config(1), None, &global, &updates, 1).expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            "internal error: round 1: the update of b has 8 values but the model has 9"
        );
    }

    #[test]
    fn a_non_finite_aggregate_is_refused() {
        let global = vec![f32::MAX; 9];
        let updates = [update("a", vec![f32::MAX; 9])];
        let err = close_round(&config(1), None, &global, &updates, 1).expect_err("overflow");
        assert!(err.to_string().contains("not finite at index 0"), "{err}");
    }
}
