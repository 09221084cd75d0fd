//! Closing a horizontal round: aggregate the updates with the federation's aggregator and
//! score the new global model on the validation set.
//!
//! A round with too few updates for the configured aggregator (Krum with `byzantine = f`
//! needs more than `2f + 2`, a trimmed mean more than `2 trim`, ...) is aggregated with
//! FedAvg instead: dropping the round would stall training and picking a "robust" result
//! from too few updates is meaningless. The fallback is logged (warn) and recorded in the
//! round's metrics as `aggregator_fallback = 1`; a selecting aggregator records how many
//! updates it kept as `aggregator_selected`.
//!
//! A plain function of the round's inputs, run on the blocking pool by the round loop.
//! Valuing the participants is a separate step (`round_value`), run after the commit by
//! the federation's valuation worker, so a slow valuation never holds a round open.

use fedval_core::aggregate::{AggregatorSpec, Update, apply_update};
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
    let weighted: Vec<Update<'_>> = updates
        .iter()
        .map(|u| Update {
            delta: u.delta.as_slice(),
            weight: u.record.num_samples as f64,
        })
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
    let (spec, fell_back) = match config.aggregator.validate(weighted.len()) {
        Ok(()) => (config.aggregator, false),
        Err(e) => {
            tracing::warn!(
                federation = %config.id,
                round,
                error = %e,
                "too few updates for the configured aggregator; this round uses fedavg"
            );
            (AggregatorSpec::FedAvg, true)
        }
    };
    let aggregate = spec
        .aggregate(&weighted)
        .map_err(|e| ServiceError::Internal(format!("aggregation ({spec}): {e}")))?;
    let params = apply_update(global, &aggregate.delta);
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ServiceError::Internal(format!(
            "round {round}: the aggregated model is not finite at index {index}"
        )));
    }
    let mut metrics = client_metrics(updates);
    if fell_back {
        metrics.push(("aggregator_fallback".into(), 1.0));
    }
    if let Some(selected) = &aggregate.selected {
        metrics.push(("aggregator_selected".into(), selected.len() as f64));
    }
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

    /// `config(1)` with `aggregator`.
    fn with(aggregator: AggregatorSpec) -> FederationConfig {
        FederationConfig {
            aggregator,
            ..config(1)
        }
    }

    /// Four honest one-sample updates near 1 and one far adversary, on a 9-parameter model.
    fn honest_and_one_far() -> Vec<AcceptedUpdate> {
        let mut updates: Vec<AcceptedUpdate> = [1.0f32, 2.0, 1.5, 0.5]
            .iter()
            .enumerate()
            .map(|(i, &x)| update(&format!("h{i}"), vec![x; 9]))
            .collect();
        updates.push(update("bad", vec![1000.0; 9]));
        updates
    }

    #[test]
    fn the_configured_aggregator_is_used() {
        let global = vec![0.0f32; 9];
        let updates = honest_and_one_far();
        let close = |spec| close_round(&with(spec), None, &global, &updates, 1).expect("closes");
        // Median of 1, 2, 1.5, 0.5, 1000 is 1.5.
        let median = close(AggregatorSpec::Median);
        assert_eq!(median.params, vec![1.5; 9]);
        assert!(median.metrics.is_empty(), "{:?}", median.metrics);
        // Trimmed mean (trim 1) keeps 1, 1.5, 2.
        let trimmed = close(AggregatorSpec::TrimmedMean { trim: 1 });
        assert_eq!(trimmed.params, vec![1.5; 9]);
        // Krum (f = 1, n = 5 > 4): scores over the 2 nearest, squared distances times 9:
        // 1 -> {0.25, 0.25} (1.5, 0.5), the lowest; 1.5 -> {0.25, 0.25} too but index 2 > 0.
        let krum = close(AggregatorSpec::Krum { byzantine: 1 });
        assert_eq!(krum.params, vec![1.0; 9]);
        assert_eq!(krum.metrics, vec![("aggregator_selected".to_string(), 1.0)]);
        // FedAvg is dragged by the adversary: (1 + 2 + 1.5 + 0.5 + 1000) / 5 = 201.
        assert_eq!(close(AggregatorSpec::FedAvg).params, vec![201.0; 9]);
    }

    #[test]
    fn too_few_updates_fall_back_to_fedavg() {
        let global = vec![0.0f32; 9];
        let updates = &honest_and_one_far()[..4];
        // Krum with f = 1 needs 5 updates; the round has 4, so FedAvg: (1+2+1.5+0.5)/4 = 1.25.
        let closed = close_round(
            &with(AggregatorSpec::Krum { byzantine: 1 }),
            None,
            &global,
            updates,
            1,
        )
        .expect("falls back rather than failing");
        assert_eq!(closed.params, vec![1.25; 9]);
        assert_eq!(
            closed.metrics,
            vec![("aggregator_fallback".to_string(), 1.0)]
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
