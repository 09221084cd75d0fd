//! The pass state machine of one vertical federation (the vertical counterpart of
//! `round_loop`): it waits for every party, opens round `committed + 1` with its
//! seeded batch (reloading embeddings stored before a restart), collects embeddings until
//! every party sent them or the deadline passed, closes and commits the round, runs the
//! evaluation pass after the last round, then values the run and finishes the
//! federation. Handlers never open or close passes.
//!
//! A failing step (a storage error) is logged, shown as the federation's `loop_error`
//! and retried with the round loop's capped back-off; a commit that reached the disk
//! although it reported failure is adopted, never committed twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use tokio::sync::watch;
use tokio::time::Instant;

use super::round::{close_batch, evaluate_ids};
use super::value::{
    METHOD, record_values, sent_embeddings, set_metric, snapshot_tables, value_run, value_snapshots,
};
use super::{GradientReply, OpenPass};
use crate::error::{ServiceError, ServiceResult};
use crate::federation::{Event, Federation, GlobalModel, now_ms};
use crate::round_loop::{Step, ended_event};
use crate::store::{FederationStatus, RoundRecord, StoreError};

/// What the federation needs now.
enum Plan {
    Exit,
    WaitForParties,
    /// Asynchronous training runs in the exchange handlers: wait for the last snapshot.
    WaitForSteps,
    Collect,
    Value,
}

/// One step of a vertical federation: restore after a restart, then open, close or value
/// the current pass, or wait for the parties (driven by `round_loop::run`).
pub(crate) async fn step(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> ServiceResult<Step> {
    restore(fed).await?;
    match plan(fed).await? {
        Plan::Exit => Ok(Step::Exit),
        Plan::WaitForParties | Plan::WaitForSteps => {
            tokio::select! {
                _ = changes.changed() => Ok(Step::Continue),
                _ = shutdown.changed() => Ok(Step::Exit),
            }
        }
        Plan::Collect => {
            if let Step::Exit = collect(fed, changes, shutdown).await {
                return Ok(Step::Exit);
            }
            close(fed).await?;
            Ok(Step::Continue)
        }
        Plan::Value => {
            value_and_finish(fed).await?;
            Ok(Step::Continue)
        }
    }
}

/// Loads what a restart needs besides the stored record: whether the evaluation pass
/// closed (its metrics are in the last round's record).
async fn restore(fed: &Arc<Federation>) -> ServiceResult<()> {
    let mut st = fed.state.lock().await;
    if st.vertical.restored {
        return Ok(());
    }
    let rounds = fed.config().rounds;
    if st.record.committed_rounds >= rounds {
        let last = fed.store().get_round(fed.id(), rounds)?;
        let test_loss = last
            .as_ref()
            .and_then(|r| r.metrics.iter().find(|(n, _)| n == "test_loss"))
            .map(|(_, v)| *v);
        if let (Some(loss), Some(spec)) = (test_loss, fed.vertical()) {
            st.vertical.evaluated = Some(Arc::new(GradientReply::new(
                spec.evaluation_round(rounds),
                spec.output_dim,
                loss,
                &[],
                Vec::new(),
            )));
        }
    }
    st.vertical.restored = true;
    Ok(())
}

/// Decides the next phase, opening a pass when one is due.
async fn plan(fed: &Arc<Federation>) -> ServiceResult<Plan> {
    let config = fed.config();
    let Some(spec) = fed.vertical() else {
        return Ok(Plan::Exit);
    };
    let mut st = fed.state.lock().await;
    if let Some(ended) = ended_event(&st.record) {
        drop(st);
        fed.emit(ended);
        return Ok(Plan::Exit);
    }
    if st.vertical.open.is_some() {
        return Ok(Plan::Collect);
    }
    if st.clients.len() < config.min_clients {
        return Ok(Plan::WaitForParties);
    }
    if spec.asynchronous && st.record.committed_rounds < config.rounds {
        if st.vertical.steps.is_none() {
            fed.start_async(&mut st)?;
            drop(st);
            fed.notify();
        }
        return Ok(Plan::WaitForSteps);
    }
    let (round, evaluate, ids) = if st.record.committed_rounds < config.rounds {
        let round = st.record.committed_rounds + 1;
        (round, false, Arc::new(spec.batch(config.seed, round)))
    } else if !spec.test_ids.is_empty() && st.vertical.evaluated.is_none() {
        (
            spec.evaluation_round(config.rounds),
            true,
            spec.test_ids.clone(),
        )
    } else {
        return Ok(Plan::Value);
    };
    // Embeddings acknowledged before a restart belong to this pass.
    let expected = ids.len().saturating_mul(spec.output_dim);
    let received: BTreeMap<String, Arc<Vec<f32>>> = fed
        .store()
        .list_embeddings(fed.id(), round)?
        .into_iter()
        .filter(|(client, values)| st.by_id.contains_key(client) && values.len() == expected)
        .map(|(client, values)| (client, Arc::new(values)))
        .collect();
    if st.record.status == FederationStatus::Waiting {
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Running;
        fed.store().put_federation(&rec)?;
        st.record = rec;
    }
    let restored = received.len();
    st.vertical.open = Some(OpenPass {
        round,
        evaluate,
        ids,
        received,
        deadline: Instant::now() + Duration::from_millis(config.round_timeout_ms),
        deadline_wall_ms: now_ms().saturating_add(config.round_timeout_ms),
        closed: false,
    });
    let selected = st.clients.iter().map(|c| c.client_id.clone()).collect();
    drop(st);
    tracing::info!(federation = %fed.id(), round, evaluate, restored, "vertical pass opened");
    fed.emit(Event::RoundStarted { round, selected });
    fed.notify();
    Ok(Plan::Collect)
}

/// Waits until every party sent its embeddings, the deadline passed, or the federation
/// stopped.
async fn collect(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Step {
    loop {
        let deadline = {
            let st = fed.state.lock().await;
            match &st.vertical.open {
                Some(p)
                    if !p.closed
                        && p.received.len() < st.clients.len()
                        && st.record.status == FederationStatus::Running =>
                {
                    p.deadline
                }
                _ => return Step::Continue,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Step::Continue,
            _ = changes.changed() => {}
            _ = shutdown.changed() => return Step::Exit,
        }
    }
}

/// What closing a pass reads, taken under the lock.
struct Closing {
    round: u64,
    evaluate: bool,
    ids: Arc<Vec<u32>>,
    /// Per party in enrollment order: (client id, its embeddings if they arrived).
    parties: Vec<(String, Option<Arc<Vec<f32>>>)>,
    bias: Arc<Vec<f32>>,
}

impl Closing {
    fn views(&self) -> Vec<Option<&[f32]>> {
        self.parties
            .iter()
            .map(|(_, e)| e.as_ref().map(|v| v.as_slice()))
            .collect()
    }

    fn split(&self) -> (Vec<String>, Vec<String>) {
        let (mut participants, mut stragglers) = (Vec::new(), Vec::new());
        for (client, e) in &self.parties {
            if e.is_some() {
                participants.push(client.clone());
            } else {
                stragglers.push(client.clone());
            }
        }
        (participants, stragglers)
    }
}

/// Closes the open pass (once): marks it closed, then commits it.
async fn close(fed: &Arc<Federation>) -> ServiceResult<()> {
    let closing = {
        let mut st = fed.state.lock().await;
        if st.record.status != FederationStatus::Running {
            return Ok(());
        }
        let bias = st.model.params.clone();
        let clients: Vec<String> = st.clients.iter().map(|c| c.client_id.clone()).collect();
        let Some(p) = st.vertical.open.as_mut() else {
            return Ok(());
        };
        p.closed = true;
        Closing {
            round: p.round,
            evaluate: p.evaluate,
            ids: p.ids.clone(),
            parties: clients
                .into_iter()
                .map(|c| {
                    let e = p.received.get(&c).cloned();
                    (c, e)
                })
                .collect(),
            bias,
        }
    };
    fed.notify();
    if closing.evaluate {
        close_evaluation(fed, closing).await
    } else {
        close_training(fed, closing).await
    }
}

async fn close_training(fed: &Arc<Federation>, closing: Closing) -> ServiceResult<()> {
    let Some(spec) = fed.vertical().cloned() else {
        return Ok(());
    };
    let round = closing.round;
    let config = fed.config();
    let valued = spec.valued(config);
    let (closing, closed) = tokio::task::spawn_blocking(move || {
        let closed = close_batch(
            &spec.objective,
            &closing.bias,
            &closing.ids,
            &closing.views(),
            spec.learning_rate,
            closing.round,
        );
        (closing, closed)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("round {round} closing task failed: {e}")))?;
    let closed = closed
        .map_err(|e| ServiceError::Internal(format!("closing vertical round {round}: {e}")))?;
    let (participants, stragglers) = closing.split();
    let record = RoundRecord::committed(
        round,
        round,
        participants,
        stragglers.clone(),
        vec![("loss".into(), closed.loss)],
        valued,
    );
    let gradients: Vec<f32> = closed.gradients.iter().copied().collect();
    let reply = Arc::new(GradientReply::new(
        round,
        closed.gradients.ncols(),
        closed.loss,
        &gradients,
        stragglers,
    ));
    let mut st = fed.state.lock().await;
    let mut fed_rec = st.record.clone();
    fed_rec.committed_rounds = round;
    fed_rec.model_version = round;
    let store = fed.store().clone();
    let (id, rec2, bias2, fed_rec2) = (
        fed.id().to_string(),
        record.clone(),
        closed.bias.clone(),
        fed_rec.clone(),
    );
    let committed = tokio::task::spawn_blocking(move || {
        store.commit_vertical_round(&id, &rec2, &bias2, &gradients, &fed_rec2)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("commit task failed: {e}")))?;
    match committed {
        Ok(()) => {}
        Err(StoreError::Conflict { .. }) => {
            // The commit reached the disk although it reported failure: adopt it.
            let stored = fed.store().get_federation(fed.id())?.ok_or_else(|| {
                ServiceError::Internal(format!("federation `{}` vanished from the store", fed.id()))
            })?;
            let bias = fed
                .store()
                .get_model(fed.id(), stored.model_version)?
                .ok_or_else(|| {
                    ServiceError::Internal(format!(
                        "federation `{}`: bias version {} missing from the store",
                        fed.id(),
                        stored.model_version
                    ))
                })?;
            st.model = Arc::new(GlobalModel::new(stored.model_version, bias));
            st.record = stored;
            st.vertical.open = None;
            st.vertical.last = None;
            if valued {
                st.pending_valuation.insert(round, None);
            }
            drop(st);
            fed.notify();
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    st.record = fed_rec;
    st.model = Arc::new(GlobalModel::new(round, closed.bias));
    st.vertical.open = None;
    st.vertical.last = Some(reply);
    if valued {
        st.pending_valuation.insert(round, None);
    }
    drop(st);
    tracing::info!(federation = %fed.id(), round, loss = closed.loss, "vertical round committed");
    fed.emit(Event::RoundCommitted(Box::new(record)));
    fed.notify();
    Ok(())
}

async fn close_evaluation(fed: &Arc<Federation>, closing: Closing) -> ServiceResult<()> {
    let Some(spec) = fed.vertical().cloned() else {
        return Ok(());
    };
    let round = closing.round;
    let (closing, metrics) = tokio::task::spawn_blocking(move || {
        let metrics = evaluate_ids(
            &spec.objective,
            &closing.bias,
            &closing.ids,
            &closing.views(),
        );
        (closing, metrics)
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("evaluation task failed: {e}")))?;
    let metrics =
        metrics.map_err(|e| ServiceError::Internal(format!("evaluating the test ids: {e}")))?;
    let (participants, stragglers) = closing.split();
    let rounds = fed.config().rounds;
    let mut last = fed.store().get_round(fed.id(), rounds)?.ok_or_else(|| {
        ServiceError::Internal(format!("federation `{}`: round {rounds} missing", fed.id()))
    })?;
    set_metric(&mut last.metrics, "test_loss", metrics.loss);
    if let Some(accuracy) = metrics.accuracy {
        set_metric(&mut last.metrics, "test_accuracy", accuracy);
    }
    set_metric(&mut last.metrics, "test_parties", participants.len() as f64);
    let mut st = fed.state.lock().await;
    fed.store().update_round(fed.id(), &last)?;
    st.vertical.open = None;
    st.vertical.evaluated = Some(Arc::new(GradientReply::new(
        round,
        closing.bias.len(),
        metrics.loss,
        &[],
        stragglers,
    )));
    drop(st);
    tracing::info!(federation = %fed.id(), test_loss = metrics.loss, test_accuracy = ?metrics.accuracy, "vertical evaluation recorded");
    fed.notify();
    Ok(())
}

/// Values the run (if configured) on the blocking pool and finishes the federation in
/// one batch with the valued round records.
async fn value_and_finish(fed: &Arc<Federation>) -> ServiceResult<()> {
    let Some(spec) = fed.vertical().cloned() else {
        return Ok(());
    };
    let (parties, bias, pending) = {
        let st = fed.state.lock().await;
        (
            st.clients
                .iter()
                .map(|c| c.client_id.clone())
                .collect::<Vec<_>>(),
            st.model.params.clone(),
            !st.pending_valuation.is_empty(),
        )
    };
    let mut records = fed.store().list_rounds(fed.id())?;
    if pending {
        let fed2 = fed.clone();
        let parties2 = parties.clone();
        records = tokio::task::spawn_blocking(move || {
            let started = WallInstant::now();
            let config = fed2.config();
            let outcome = if spec.asynchronous {
                snapshot_tables(&spec, parties2.len(), config.rounds, |r| {
                    fed2.store()
                        .get_vertical_snapshot(fed2.id(), r)
                        .map_err(|e| e.to_string())
                })
                .and_then(|snapshots| {
                    value_snapshots(config, &spec, &snapshots, &bias).map_err(|e| e.to_string())
                })
            } else {
                sent_embeddings(&spec, config.seed, &parties2, config.rounds, |t| {
                    fed2.store()
                        .list_embeddings(fed2.id(), t)
                        .map_err(|e| e.to_string())
                })
                .and_then(|(batches, sent)| {
                    value_run(config, &spec, &parties2, &batches, &sent, &bias)
                        .map_err(|e| e.to_string())
                })
            };
            record_values(&mut records, &parties2, outcome, started);
            records
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("valuation task failed: {e}")))?;
    }
    let mut st = fed.state.lock().await;
    let mut rec = st.record.clone();
    rec.status = FederationStatus::Finished;
    fed.store().update_rounds(fed.id(), &records, &rec)?;
    st.record = rec;
    st.pending_valuation.clear();
    let committed = st.record.committed_rounds;
    drop(st);
    if pending {
        for r in records {
            fed.emit(Event::RoundValued(Box::new(r)));
        }
    }
    // The next step sees the finished status, announces the end and exits.
    tracing::info!(federation = %fed.id(), rounds = committed, method = METHOD, "vertical federation finished");
    fed.notify();
    Ok(())
}
