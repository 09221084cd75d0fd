//! The horizontal round state machine of one federation.
//!
//! The loop owns the round (as in Flower's Strategy): it waits for enough clients,
//! opens round r (select, distribute), collects updates until every selected client
//! has uploaded or the deadline passes (stragglers are recorded, not waited for),
//! closes the round, values and aggregates it off the async runtime (`round_close`),
//! and commits the result atomically. Handlers never open or close rounds.
//!
//! After a restart the loop reopens round `committed + 1` and reloads every update the
//! store already holds for it, so nothing acknowledged before the crash is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{ServiceError, ServiceResult};
use crate::federation::{AcceptedUpdate, Event, Federation, GlobalModel, OpenRound, now_ms};
use crate::round_close::close_round;
use crate::store::{FederationStatus, RoundRecord};

/// Runs `fed`'s rounds until it finishes, is stopped, or `shutdown` turns true.
pub(crate) async fn run(fed: Arc<Federation>, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = drive(&fed, &mut shutdown).await {
        tracing::error!(federation = %fed.id(), error = %e, "round loop failed; the federation is paused until the server restarts");
    }
}

enum Step {
    Continue,
    Exit,
}

async fn drive(fed: &Arc<Federation>, shutdown: &mut watch::Receiver<bool>) -> ServiceResult<()> {
    let mut changes = fed.subscribe_changes();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match open_or_finish(fed).await? {
            Some(Step::Exit) => return Ok(()),
            Some(Step::Continue) => {}
            None => {
                // Not enough clients yet: wait for an enrollment.
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                continue;
            }
        }
        if let Step::Exit = collect(fed, &mut changes, shutdown).await {
            return Ok(());
        }
        close_and_commit(fed).await?;
    }
}

/// Finishes the federation, or makes sure a round is open. `None`: waiting for clients.
async fn open_or_finish(fed: &Arc<Federation>) -> ServiceResult<Option<Step>> {
    let config = fed.config();
    let mut st = fed.state.lock().await;
    if matches!(
        st.record.status,
        FederationStatus::Finished | FederationStatus::Stopped
    ) {
        let ended = Event::Ended {
            status: st.record.status,
            committed_rounds: st.record.committed_rounds,
        };
        drop(st);
        fed.emit(ended);
        return Ok(Some(Step::Exit));
    }
    if st.record.committed_rounds >= config.rounds {
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Finished;
        fed.store().put_federation(&rec)?;
        st.record = rec;
        let committed = st.record.committed_rounds;
        drop(st);
        tracing::info!(federation = %fed.id(), rounds = committed, "federation finished");
        fed.notify();
        fed.emit(Event::Ended {
            status: FederationStatus::Finished,
            committed_rounds: committed,
        });
        return Ok(Some(Step::Exit));
    }
    if st.round.is_some() {
        return Ok(Some(Step::Continue));
    }
    if st.clients.len() < config.min_clients {
        return Ok(None);
    }
    let number = st.record.committed_rounds + 1;
    let mut selected = fed.select(&st.clients, number);
    // Updates acknowledged before a restart belong to this round.
    let mut received = BTreeMap::new();
    for (record, delta) in fed.store().list_updates(fed.id(), number)? {
        selected.insert(record.client_id.clone());
        received.insert(
            record.client_id.clone(),
            AcceptedUpdate {
                record,
                delta: Arc::new(delta),
            },
        );
    }
    let timeout = Duration::from_millis(config.round_timeout_ms);
    let restored = received.len();
    st.round = Some(OpenRound {
        number,
        selected: selected.clone(),
        received,
        deadline: Instant::now() + timeout,
        deadline_wall_ms: now_ms() + config.round_timeout_ms,
        closed: false,
    });
    if st.record.status == FederationStatus::Waiting {
        let mut rec = st.record.clone();
        rec.status = FederationStatus::Running;
        fed.store().put_federation(&rec)?;
        st.record = rec;
    }
    drop(st);
    tracing::info!(federation = %fed.id(), round = number, selected = selected.len(), restored, "round opened");
    fed.emit(Event::RoundStarted {
        round: number,
        selected: selected.into_iter().collect(),
    });
    fed.notify();
    Ok(Some(Step::Continue))
}

/// Waits until every selected client uploaded, the deadline passed, or the federation stopped.
async fn collect(
    fed: &Arc<Federation>,
    changes: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Step {
    loop {
        let deadline = {
            let st = fed.state.lock().await;
            match &st.round {
                Some(r) if !r.closed && r.received.len() < r.selected.len() => r.deadline,
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

/// Closes the open round, aggregates and values it, and commits it atomically.
async fn close_and_commit(fed: &Arc<Federation>) -> ServiceResult<()> {
    let (number, selected, updates, model) = {
        let mut st = fed.state.lock().await;
        let model = st.model.clone();
        let Some(r) = st.round.as_mut() else {
            return Ok(());
        };
        r.closed = true;
        let updates: Vec<AcceptedUpdate> = r.received.values().cloned().collect();
        (r.number, r.selected.clone(), updates, model)
    };
    fed.notify();
    if updates.is_empty() {
        tracing::warn!(federation = %fed.id(), round = number, "no update arrived before the deadline; reopening the round");
        let mut st = fed.state.lock().await;
        st.round = None;
        return Ok(());
    }
    let fed2 = fed.clone();
    let updates2 = updates.clone();
    let global = model.params.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        close_round(
            fed2.config(),
            fed2.validation().map(|v| v.as_ref()),
            &global,
            &updates2,
            number,
        )
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("round {number} closing task failed: {e}")))??;

    let participants: Vec<String> = updates.iter().map(|u| u.record.client_id.clone()).collect();
    let stragglers: Vec<String> = selected
        .iter()
        .filter(|c| !participants.contains(c))
        .cloned()
        .collect();
    let record = RoundRecord {
        round: number,
        model_version: model.version + 1,
        participants,
        stragglers,
        metrics: outcome.metrics,
        values: outcome.values,
        valuation_method: outcome.method,
        evaluations: outcome.evaluations,
        utility_full: outcome.utility_full,
        utility_empty: outcome.utility_empty,
        valuation_ms: outcome.valuation_ms,
    };
    let new_model = GlobalModel::new(model.version + 1, outcome.params);
    let mut st = fed.state.lock().await;
    let mut fed_rec = st.record.clone();
    fed_rec.committed_rounds = number;
    fed_rec.model_version = new_model.version;
    let store = fed.store().clone();
    let (id, rec2, params, fed_rec2) = (
        fed.id().to_string(),
        record.clone(),
        new_model.params.clone(),
        fed_rec.clone(),
    );
    tokio::task::spawn_blocking(move || store.commit_round(&id, &rec2, &params, &fed_rec2))
        .await
        .map_err(|e| ServiceError::Internal(format!("commit task failed: {e}")))??;
    st.record = fed_rec;
    st.model = Arc::new(new_model);
    st.round = None;
    drop(st);
    tracing::info!(
        federation = %fed.id(),
        round = number,
        method = %record.valuation_method,
        evaluations = record.evaluations,
        "round committed"
    );
    fed.emit(Event::RoundCommitted(Box::new(record)));
    fed.notify();
    Ok(())
}
