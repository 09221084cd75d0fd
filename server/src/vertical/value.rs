//! VerFedSV of a finished run (ALGORITHMS.md section 3), computed from what the store
//! holds, valued with the FINAL server bias held fixed (exact Shapley for up to 10
//! parties, antithetic permutation sampling beyond).
//!
//! Synchronous runs: per party the batch embeddings it sent in every round (zeros for a
//! round it missed), completed by low-rank matrix completion ([`complete_synchronous`]),
//! then valued by [`verfedsv`]. The completion's fit on the observed entries is recorded
//! (`verfedsv_completion_rel_error`: `||observed - completed||_F / ||observed||_F` over
//! the observed entries, the max over parties, and per party with `/<client_id>`), since
//! the balance holds for the completed embeddings, not for the ones sent.
//!
//! Asynchronous runs: the snapshots of the embedding table (snapshot 0 is the empty,
//! all-zero table), valued exactly between consecutive snapshots
//! ([`verfedsv_from_snapshots`]); the values of snapshot interval `r` go to round `r`.
//!
//! Synchronous: round `t`'s embeddings were computed before round `t`'s update, so the game between
//! the embeddings of rounds `t` and `t + 1` values round `t`'s update: its values go to
//! round `t`'s record. The last round's update is never observed (no later embeddings),
//! so its values are zero. The values sum to `L(1) - L(T)` of the completed embeddings
//! (exact Shapley: to the bit; the last round's metrics carry both figures).

use std::collections::HashMap;
use std::time::Instant;

use fedval_core::valuation::verfedsv::{
    VerFedSvError, VerFedSvSettings, VerFedSvValues, complete_synchronous, verfedsv,
    verfedsv_from_snapshots,
};
use ndarray::Array2;

use super::VerticalSpec;
use crate::config::FederationConfig;
use crate::round_value::valuation_threads;
use crate::store::{ClientValue, RoundRecord, ValuationStatus};

/// Method name recorded in every valued round.
pub const METHOD: &str = "verfedsv";

/// The rounds' batches (`[t]`, sample ids) and the parties' sent embeddings (`[m][t]`),
/// the inputs of [`complete_synchronous`].
pub type SentHistory = (Vec<Vec<usize>>, Vec<Vec<Array2<f32>>>);

/// Per party (in `parties` order) and per round (`1..=rounds.len()`), the `[batch x C]`
/// embeddings it sent; `stored(t)` lists round `t`'s stored embeddings by client id.
/// A party without embeddings in a round (a straggler) contributes zeros, as in training.
pub fn sent_embeddings(
    spec: &VerticalSpec,
    seed: u64,
    parties: &[String],
    rounds: u64,
    mut stored: impl FnMut(u64) -> Result<Vec<(String, Vec<f32>)>, String>,
) -> Result<SentHistory, String> {
    let c = spec.output_dim;
    let mut batches = Vec::new();
    let mut sent: Vec<Vec<Array2<f32>>> = vec![Vec::new(); parties.len()];
    for t in 1..=rounds {
        let batch = spec.batch(seed, t);
        let mut by_client: HashMap<String, Vec<f32>> = stored(t)?.into_iter().collect();
        for (party, history) in parties.iter().zip(sent.iter_mut()) {
            let block = match by_client.remove(party) {
                Some(values) => Array2::from_shape_vec((batch.len(), c), values).map_err(|_| {
                    format!("the stored embeddings of {party} in round {t} do not fit its batch")
                })?,
                None => Array2::zeros((batch.len(), c)),
            };
            history.push(block);
        }
        batches.push(batch.into_iter().map(|i| i as usize).collect());
    }
    Ok((batches, sent))
}

/// A valuation's outcome: the values and extra metrics for the last round's record.
#[derive(Clone, Debug)]
pub struct Valued {
    /// The VerFedSV values.
    pub values: VerFedSvValues,
    /// `(name, value)` metrics recorded with the balance figures.
    pub metrics: Vec<(String, f64)>,
}

/// The estimator settings of `config`'s valuation.
fn settings(config: &FederationConfig) -> VerFedSvSettings {
    VerFedSvSettings {
        seed: config.valuation.seed,
        threads: valuation_threads(&config.valuation).max(1),
        ..VerFedSvSettings::default()
    }
}

/// VerFedSV of a synchronous run: completes every party's embedding matrix and values
/// the rounds with `bias` (the final bias) fixed; the metrics carry the completion's
/// relative error on the observed entries (module docs; `parties` names them).
pub fn value_run(
    config: &FederationConfig,
    spec: &VerticalSpec,
    parties: &[String],
    batches: &[Vec<usize>],
    sent: &[Vec<Array2<f32>>],
    bias: &[f32],
) -> Result<Valued, VerFedSvError> {
    let rank_lambda = config
        .vertical
        .as_ref()
        .map(|v| v.completion(config.seed))
        .unwrap_or_default();
    let histories = complete_synchronous(
        spec.objective.num_samples(),
        spec.output_dim,
        batches,
        sent,
        &rank_lambda,
    )?;
    let errors = completion_errors(batches, sent, &histories);
    let mut metrics = vec![(
        "verfedsv_completion_rel_error".to_string(),
        errors.iter().copied().fold(0.0, f64::max),
    )];
    for (party, error) in parties.iter().zip(&errors) {
        metrics.push((format!("verfedsv_completion_rel_error/{party}"), *error));
    }
    let values = verfedsv(&histories, &spec.objective, bias, &settings(config))?;
    Ok(Valued { values, metrics })
}

/// Per party, `||observed - completed||_F / ||observed||_F` over the entries it sent
/// (`sent[m][t]` row `k` is sample `batches[t][k]`; `completed[m][t]` is `N x C`). A
/// party that sent only zeros gets the absolute error instead (0 when it is fitted).
pub fn completion_errors(
    batches: &[Vec<usize>],
    sent: &[Vec<Array2<f32>>],
    completed: &[Vec<Array2<f32>>],
) -> Vec<f64> {
    sent.iter()
        .zip(completed)
        .map(|(sent_m, completed_m)| {
            let (mut err, mut norm) = (0.0f64, 0.0f64);
            for ((batch, block), full) in batches.iter().zip(sent_m).zip(completed_m) {
                for (k, &i) in batch.iter().enumerate() {
                    for (c, &observed) in block.row(k).iter().enumerate() {
                        let fitted = full.get((i, c)).copied().unwrap_or(0.0);
                        err += (f64::from(observed) - f64::from(fitted)).powi(2);
                        norm += f64::from(observed).powi(2);
                    }
                }
            }
            if norm > 0.0 {
                (err / norm).sqrt()
            } else {
                err.sqrt()
            }
        })
        .collect()
}

/// The snapshots of an asynchronous run with `rounds` snapshot rounds: snapshot 0 (all
/// zeros) then `stored(r)` for `r = 1..=rounds`, each split into `parties` `N x C`
/// blocks. Fails on a missing snapshot or one of the wrong size.
pub fn snapshot_tables(
    spec: &VerticalSpec,
    parties: usize,
    rounds: u64,
    mut stored: impl FnMut(u64) -> Result<Option<Vec<f32>>, String>,
) -> Result<Vec<Vec<Array2<f32>>>, String> {
    let (n, c) = (spec.objective.num_samples(), spec.output_dim);
    let mut snapshots = vec![vec![Array2::zeros((n, c)); parties]];
    for r in 1..=rounds {
        let table = stored(r)?.ok_or_else(|| format!("snapshot {r} is missing"))?;
        if table.len() != parties * n * c {
            return Err(format!(
                "snapshot {r} holds {} values, expected {parties} parties x {n} samples x {c} outputs",
                table.len()
            ));
        }
        snapshots.push(
            table
                .chunks(n * c)
                .map(|block| {
                    Array2::from_shape_vec((n, c), block.to_vec())
                        .map_err(|e| format!("snapshot {r}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(snapshots)
}

/// VerFedSV of an asynchronous run from its snapshots (see [`snapshot_tables`]) with
/// `bias` (the final bias) fixed.
pub fn value_snapshots(
    config: &FederationConfig,
    spec: &VerticalSpec,
    snapshots: &[Vec<Array2<f32>>],
    bias: &[f32],
) -> Result<Valued, VerFedSvError> {
    let values = verfedsv_from_snapshots(snapshots, &spec.objective, bias, &settings(config))?;
    Ok(Valued {
        values,
        metrics: Vec::new(),
    })
}

/// Writes the outcome into the round records (ascending, rounds `1..=T`): per-round
/// values, method, utilities and status; the last record's metrics gain the balance
/// figures `verfedsv_value_sum`, `verfedsv_loss_decrease` and `verfedsv_balance_error`
/// and the outcome's own metrics. A failure is recorded in every round as `Failed`,
/// never lost.
pub fn record_values(
    records: &mut [RoundRecord],
    parties: &[String],
    outcome: Result<Valued, String>,
    started: Instant,
) {
    let elapsed = started.elapsed().as_millis() as u64;
    let Valued { values, metrics } = match outcome {
        Ok(valued) => valued,
        Err(reason) => {
            tracing::warn!(error = %reason, "vertical federation not valued");
            for r in records.iter_mut() {
                r.valuation_method = METHOD.into();
                r.valuation_status = ValuationStatus::Failed(reason.clone());
            }
            return;
        }
    };
    let stop = match values.method {
        fedval_core::valuation::Method::Exact => "exact",
        _ => "budget_exhausted",
    };
    let per_round_evaluations = values
        .evaluations
        .checked_div(values.per_round.len() as u64)
        .unwrap_or(0);
    for (k, r) in records.iter_mut().enumerate() {
        let round_values = values.per_round.get(k);
        r.values = parties
            .iter()
            .enumerate()
            .map(|(m, p)| ClientValue {
                client_id: p.clone(),
                value: round_values.and_then(|v| v.get(m)).copied().unwrap_or(0.0),
                std_error: 0.0,
            })
            .collect();
        r.valuation_method = METHOD.into();
        r.evaluations = if round_values.is_some() {
            per_round_evaluations
        } else {
            0
        };
        r.utility_full = match (values.round_losses.get(k), values.round_losses.get(k + 1)) {
            (Some(before), Some(after)) => before - after,
            _ => 0.0,
        };
        r.utility_empty = 0.0;
        r.valuation_ms = elapsed;
        r.valuation_status = ValuationStatus::Done;
        r.valuation_stop = stop.into();
    }
    if let Some(last) = records.last_mut() {
        for (name, value) in [
            ("verfedsv_value_sum", values.value_sum),
            ("verfedsv_loss_decrease", values.loss_decrease),
            ("verfedsv_balance_error", values.balance_error()),
        ] {
            set_metric(&mut last.metrics, name, value);
        }
        for (name, value) in &metrics {
            set_metric(&mut last.metrics, name, *value);
        }
    }
}

/// Sets metric `name` to `value`, replacing an earlier value (a re-run after a restart).
pub fn set_metric(metrics: &mut Vec<(String, f64)>, name: &str, value: f64) {
    match metrics.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => metrics.push((name.to_string(), value)),
    }
}
