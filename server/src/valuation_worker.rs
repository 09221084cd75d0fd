//! Values committed rounds, oldest first, behind the round loop.
//!
//! Training never waits for a valuation longer than `valuation.max_lag_rounds` rounds
//! (the round loop holds the next round back beyond that), and a federation is
//! `finished` only once every round is valued. Each round's record is completed and
//! rewritten durably (`Store::update_round`); until then it reads `pending`. After a
//! restart, the rounds still pending are valued again from the stored updates and
//! models. A failing store write is retried with back-off; an estimator failure is
//! recorded in the round (`failed: <reason>`), never retried forever.

use std::sync::Arc;

use tokio::sync::watch;

use crate::error::{ServiceError, ServiceResult};
use crate::federation::{AcceptedUpdate, Event, Federation, ValuationJob};
use crate::round_loop::retry_delay;
use crate::round_value::value_round;

/// Values `fed`'s pending rounds until `shutdown` turns true.
pub(crate) async fn run(fed: Arc<Federation>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = fed.subscribe_changes();
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = {
            let st = fed.state.lock().await;
            st.pending_valuation
                .iter()
                .next()
                .map(|(&round, job)| (round, job.clone()))
        };
        let Some((round, job)) = next else {
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        match value_one(&fed, round, job).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                tracing::error!(federation = %fed.id(), round, error = %e, ?delay, "recording a valuation failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Values round `round` (from `job`, or from the store when the inputs are not in
/// memory), records it durably, and takes it off the pending list.
async fn value_one(
    fed: &Arc<Federation>,
    round: u64,
    job: Option<ValuationJob>,
) -> ServiceResult<()> {
    let job = match job {
        Some(job) => job,
        None => {
            let fed2 = fed.clone();
            tokio::task::spawn_blocking(move || load_job(&fed2, round))
                .await
                .map_err(|e| ServiceError::Internal(format!("loading round {round}: {e}")))??
        }
    };
    let fed2 = fed.clone();
    let record = tokio::task::spawn_blocking(move || {
        let mut record = job.record;
        value_round(
            fed2.config(),
            fed2.validation().map(|v| v.as_ref()),
            &job.global,
            &job.updates,
            &mut record,
        );
        record
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("valuing round {round}: {e}")))?;
    let store = fed.store().clone();
    let (id, record2) = (fed.id().to_string(), record.clone());
    tokio::task::spawn_blocking(move || store.update_round(&id, &record2))
        .await
        .map_err(|e| ServiceError::Internal(format!("recording round {round}: {e}")))??;
    fed.state.lock().await.pending_valuation.remove(&round);
    tracing::info!(
        federation = %fed.id(),
        round,
        method = %record.valuation_method,
        evaluations = record.evaluations,
        ms = record.valuation_ms,
        status = %record.valuation_status.describe(),
        "round valued"
    );
    fed.emit(Event::RoundValued(Box::new(record)));
    fed.notify();
    Ok(())
}

/// Rebuilds a pending round's inputs from the store: its record, its accepted updates
/// and the model it started from.
fn load_job(fed: &Federation, round: u64) -> ServiceResult<ValuationJob> {
    let store = fed.store();
    let record = store
        .list_rounds(fed.id())?
        .into_iter()
        .find(|r| r.round == round)
        .ok_or_else(|| {
            ServiceError::Internal(format!("round {round} is pending but not stored"))
        })?;
    let start_version = record.model_version.saturating_sub(1);
    let global = store.get_model(fed.id(), start_version)?.ok_or_else(|| {
        ServiceError::Internal(format!(
            "model version {start_version} of round {round} is not stored"
        ))
    })?;
    let updates = store
        .list_updates(fed.id(), round)?
        .into_iter()
        .filter(|(u, _)| record.participants.contains(&u.client_id))
        .map(|(record, delta)| AcceptedUpdate {
            record,
            delta: Arc::new(delta),
        })
        .collect();
    Ok(ValuationJob {
        record,
        global: Arc::new(global),
        updates,
    })
}
