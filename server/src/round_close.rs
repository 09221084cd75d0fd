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
//! An RFFL federation (`reputation` set) is closed by [`close_rffl_round`] instead: the
//! configured aggregator is not used. Each update is clipped to `gamma` by the server, the
//! reputations are updated ([`RfflState::step`]), each participant's own model becomes
//! `own + its clipped update + the aggregate sparsified by its reward fraction q` (or
//! `own + the sparsified aggregate` with `keep_own_update = false`, the reference code's
//! rule), and the
//! global model (scored on the validation set, the base of the valuation) becomes
//! `previous global + aggregate`.
//!
//! A plain function of the round's inputs, run on the blocking pool by the round loop.
//! Valuing the participants is a separate step (`round_value`), run after the commit by
//! the federation's valuation worker, so a slow valuation never holds a round open.

use std::sync::Arc;

use fedval_core::aggregate::{AggregatorSpec, Update, apply_update};
use fedval_core::data::Dataset;
use fedval_core::reputation::{RfflState, clip, sparsified_reward};

use crate::config::{FederationConfig, RfflSettings};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::AcceptedUpdate;
use crate::store::ClientReputation;

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
    push_validation(config, validation, &params, &mut metrics)?;
    Ok(Aggregated { params, metrics })
}

/// Appends `val_loss` and `val_accuracy` of `params` when there is a validation set.
fn push_validation(
    config: &FederationConfig,
    validation: Option<&Dataset>,
    params: &[f32],
    metrics: &mut Vec<(String, f64)>,
) -> ServiceResult<()> {
    if let Some(data) = validation {
        let m = config
            .horizontal_model()
            .map_err(|e| ServiceError::Internal(format!("validation: {e}")))?
            .evaluate(params, data)
            .map_err(|e| ServiceError::Internal(format!("validation: {e}")))?;
        metrics.push(("val_loss".into(), m.loss));
        metrics.push(("val_accuracy".into(), m.accuracy));
    }
    Ok(())
}

/// The inputs of an RFFL round that the federation holds per client.
#[derive(Debug)]
pub struct RfflInputs {
    /// Every enrolled client in enrollment order, with its own model of this round.
    pub clients: Vec<(String, Arc<Vec<f32>>)>,
    /// The state after the previous round (`None` before the first round: it is then
    /// created from `data_sizes`).
    pub state: Option<RfflState>,
    /// The clients' declared sample counts, in enrollment order.
    pub data_sizes: Vec<u64>,
}

/// What closing an RFFL round produced.
#[derive(Debug)]
pub struct RfflClosed {
    /// Global parameters, metrics, like [`close_round`].
    pub aggregated: Aggregated,
    /// The new own model of every participant (others keep theirs).
    pub personal: Vec<(String, Vec<f32>)>,
    /// The state after this round.
    pub state: RfflState,
    /// Every client's reputation after the round, in enrollment order.
    pub reputations: Vec<ClientReputation>,
    /// The round's removal threshold (`None` during the warm-up).
    pub threshold: Option<f64>,
    /// The participants' updates clipped to `gamma` (what the round aggregated).
    pub clipped: Vec<AcceptedUpdate>,
}

/// Closes round `round` of an RFFL federation (see the module docs).
pub fn close_rffl_round(
    config: &FederationConfig,
    settings: &RfflSettings,
    validation: Option<&Dataset>,
    global: &[f32],
    inputs: RfflInputs,
    updates: &[AcceptedUpdate],
    round: u64,
) -> ServiceResult<RfflClosed> {
    let internal = |e: fedval_core::reputation::ReputationError| {
        ServiceError::Internal(format!("round {round}: reputation step: {e}"))
    };
    let mut state = match inputs.state {
        Some(s) => s,
        None => RfflState::new(&inputs.data_sizes).map_err(internal)?,
    };
    let n = inputs.clients.len();
    if state.num_clients() != n {
        return Err(ServiceError::Internal(format!(
            "round {round}: the reputation state has {} clients but {n} are enrolled",
            state.num_clients()
        )));
    }
    let mut slots: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut participating = vec![false; n];
    let mut clipped = Vec::with_capacity(updates.len());
    for u in updates {
        let index = inputs
            .clients
            .iter()
            .position(|(id, _)| *id == u.record.client_id)
            .ok_or_else(|| {
                ServiceError::Internal(format!(
                    "round {round}: update from unknown client {}",
                    u.record.client_id
                ))
            })?;
        if u.delta.len() != global.len() {
            return Err(ServiceError::Internal(format!(
                "round {round}: the update of {} has {} values but the model has {}",
                u.record.client_id,
                u.delta.len(),
                global.len()
            )));
        }
        let mut d = u.delta.to_vec();
        clip(&mut d, settings.gamma);
        clipped.push(AcceptedUpdate {
            record: u.record.clone(),
            delta: Arc::new(d.clone()),
        });
        if let (Some(slot), Some(p)) = (slots.get_mut(index), participating.get_mut(index)) {
            *slot = d;
            *p = true;
        }
    }
    let views: Vec<&[f32]> = slots.iter().map(Vec::as_slice).collect();
    let outcome = state
        .step(&settings.to_core(), &views, &participating)
        .map_err(internal)?;
    let layers = config
        .horizontal_model()
        .map_err(|e| ServiceError::Internal(format!("round {round}: {e}")))?
        .layers();
    let keep_own = settings.keep_own_update;
    let mut personal = Vec::with_capacity(updates.len());
    for (i, (client_id, own)) in inputs.clients.iter().enumerate() {
        let (Some(true), Some(d)) = (participating.get(i).copied(), slots.get(i)) else {
            continue;
        };
        let q = outcome.q.get(i).copied().unwrap_or(0.0);
        let reward = if q > 0.0 {
            sparsified_reward(&outcome.aggregate, q, &layers).map_err(internal)?
        } else {
            vec![0.0; own.len()]
        };
        let params: Vec<f32> = own
            .iter()
            .zip(d)
            .zip(&reward)
            .map(|((w, x), r)| if keep_own { w + x + r } else { w + r })
            .collect();
        if let Some(index) = params.iter().position(|p| !p.is_finite()) {
            return Err(ServiceError::Internal(format!(
                "round {round}: the model of {client_id} is not finite at index {index}"
            )));
        }
        personal.push((client_id.clone(), params));
    }
    let params = apply_update(global, &outcome.aggregate);
    if let Some(index) = params.iter().position(|p| !p.is_finite()) {
        return Err(ServiceError::Internal(format!(
            "round {round}: the aggregated model is not finite at index {index}"
        )));
    }
    let reputations = inputs
        .clients
        .iter()
        .enumerate()
        .map(|(i, (client_id, _))| ClientReputation {
            client_id: client_id.clone(),
            reputation: outcome.reputations_after.get(i).copied().unwrap_or(0.0),
            phi: outcome.phi.get(i).copied().unwrap_or(0.0),
            removed: state.is_removed(i),
        })
        .collect();
    let mut metrics = client_metrics(updates);
    metrics.push(("rffl_removed_now".into(), outcome.removed_now.len() as f64));
    push_validation(config, validation, &params, &mut metrics)?;
    Ok(RfflClosed {
        aggregated: Aggregated { params, metrics },
        personal,
        state,
        reputations,
        threshold: outcome.threshold,
        clipped,
    })
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

    #[test]
    fn rffl_round_rewards_each_participant_with_its_own_model() {
        let settings = RfflSettings::with_gamma(100.0);
        let cfg = FederationConfig {
            reputation: Some(settings),
            ..config(1)
        };
        let zero = Arc::new(vec![0.0f32; 9]);
        let inputs = RfflInputs {
            clients: vec![
                ("a".into(), zero.clone()),
                ("b".into(), zero.clone()),
                ("idle".into(), zero.clone()),
            ],
            state: None,
            data_sizes: vec![1, 1, 1],
        };
        let updates = [update("a", vec![1.0; 9]), update("b", vec![3.0; 9])];
        let closed =
            close_rffl_round(&cfg, &settings, None, &zero, inputs, &updates, 1).expect("closes");
        // Round 0 weighs the participants by data size: u = (1 + 3) / 2 = 2.
        assert_eq!(closed.aggregated.params, vec![2.0; 9]);
        // Both agree with u (phi = 1), so q = 1: every entry is tied with the k-th
        // largest magnitude and the whole of u is the reward: own = 0 + d + 2.
        assert_eq!(
            closed.personal,
            vec![
                ("a".to_string(), vec![3.0; 9]),
                ("b".to_string(), vec![5.0; 9])
            ]
        );
        let reps: Vec<(f64, f64, bool)> = closed
            .reputations
            .iter()
            .map(|r| (r.reputation, r.phi, r.removed))
            .collect();
        // The idle client keeps reputation 0 before normalisation.
        assert_eq!(
            reps,
            vec![(0.5, 1.0, false), (0.5, 1.0, false), (0.0, 0.0, false)]
        );
        assert_eq!(closed.threshold, None);
        assert_eq!(closed.state.round, 1);
        // Far below gamma = 100: nothing is clipped.
        assert_eq!(closed.clipped[1].delta.as_slice(), &[3.0; 9]);
    }

    #[test]
    fn rffl_without_own_update_gives_the_reward_alone() {
        let settings = RfflSettings {
            keep_own_update: false,
            ..RfflSettings::with_gamma(100.0)
        };
        let cfg = FederationConfig {
            reputation: Some(settings),
            ..config(1)
        };
        let own = Arc::new(vec![10.0f32; 9]);
        let inputs = RfflInputs {
            clients: vec![("a".into(), own.clone()), ("b".into(), own.clone())],
            state: None,
            data_sizes: vec![1, 1],
        };
        let zero = vec![0.0f32; 9];
        let updates = [update("a", vec![1.0; 9]), update("b", vec![3.0; 9])];
        let closed =
            close_rffl_round(&cfg, &settings, None, &zero, inputs, &updates, 1).expect("closes");
        // u = 2 and q = 1 for both: each model is its state before training plus u.
        assert_eq!(
            closed.personal,
            vec![
                ("a".to_string(), vec![12.0; 9]),
                ("b".to_string(), vec![12.0; 9])
            ]
        );
    }
}
