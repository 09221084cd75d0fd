//! Closing a horizontal round: aggregate the updates with FedAvg and score the new
//! global model on the validation set.
//!
//! A plain function of the round's inputs, run on the blocking pool by the round loop.
//! Valuing the participants is a separate step (`round_value`), run after the commit by
//! the federation's valuation worker, so a slow valuation never holds a round open.

use fedval_core::aggregate::{apply_update, fedavg};
use fedval_core::data::Dataset;

use crate::config::FederationConfig;
use crate::error::{ServiceError, ServiceResult};
use crate::federation::AcceptedUpdate;

/// What aggregating a round produced.
#[derive(Debug)]
pub struct Aggregated {
    /// The new global parameters.
    pub params: Vec<f32>,
    /// Validation metrics of the new model and sample-weighted client metrics.
    pub metrics: Vec<(String, f64)>,
}

/// Aggregates `updates`, trained from `global`, into round `round`'s new model.
pub fn close_round(
    config: &FederationConfig,
    validation: Option<&Dataset>,
    global: &[f32],
    updates: &[AcceptedUpdate],
    round: u64,
) -> ServiceResult<Aggregated> {
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
    Ok(Aggregated { params, metrics })
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
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::federation::tests::config;
    use crate::store::UpdateRecord;

    pub(crate) fn update(client: &str, delta: Vec<f32>) -> AcceptedUpdate {
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
